/**
 * One FUSE mount served by this process: open the overlay core, mount it through a transport (direct: /dev/fuse
 * spoken here; fuse-native: libfuse 2), and stay until the mount goes away (umount / fusermount -u) or
 * SIGTERM/SIGINT (which unmount cleanly).
 */
import { appendFileSync } from 'node:fs';
import { logger } from '../common/log.js';
import { native } from '../common/native.js';
import { Overlay } from './core/overlay.js';
import { isMounted, unmount } from './mountinfo.js';
import { defaultTransport, type MountConfig } from './options.js';
import { opNames } from './transport/direct/proto.js';
import { DirectTransport } from './transport/direct/transport.js';
import { FuseNativeTransport } from './transport/fuse-native.js';

export interface ServerHandle {
  /** Resolves when the mount has ended and the server cleaned up. */
  done: Promise<void>;
}

/** With LAYERFS_FUSE_STATS=FILE the server appends {transport, requests, cpuUs} to FILE when it ends (benchmarks). */
function writeStats(transport: string, requests: number): void {
  const file = process.env.LAYERFS_FUSE_STATS;
  if (!file) return;
  const u = process.cpuUsage();
  try {
    appendFileSync(file, JSON.stringify({ transport, pid: process.pid, requests, cpuUs: u.user + u.system, userUs: u.user, sysUs: u.system }) + '\n');
  } catch {
    // best effort
  }
}

/** Mount and serve. Resolves once the mount is usable; `done` settles when it ends. */
export async function serve(cfg: MountConfig): Promise<ServerHandle> {
  const log = logger().child({ mnt: cfg.mountpoint });
  process.umask(0); // modes from the kernel already have the caller's umask applied
  const kind = cfg.transport ?? defaultTransport();
  // fuse-native's stat has a 32-bit st_ino: the core hands out numbers that fit
  const core = await Overlay.open({ lowerdirs: cfg.lowerdirs, upperdir: cfg.upperdir, workdir: cfg.workdir, inoBits: kind === 'fuse-native' ? 32 : 64 });
  const common = {
    mountpoint: cfg.mountpoint,
    fsname: cfg.fsname,
    attrTimeout: cfg.attrTimeout,
    entryTimeout: cfg.entryTimeout,
    readonly: core.readonly,
    debug: cfg.debug,
    extraOptions: cfg.extra,
  };

  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  let ending = false;
  let timer: NodeJS.Timeout | undefined;
  let requests = (): number => 0;
  const end = async (why: string) => {
    if (ending) return;
    ending = true;
    clearInterval(timer);
    log.info({ why }, 'unmounting');
    await core.close();
    writeStats(kind, requests());
    finish();
  };

  // SIGUSR2: append requests, CPU, RSS (and, direct, what the kernel holds) to LAYERFS_FUSE_STATS (tests, benchmarks).
  // cpuServeUs: CPU since the mount was ready (without the start-up's module loading), for CPU per request
  let cpuAtMount = 0;
  const cpuNow = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  const onStats = (extra: () => Record<string, unknown>) => {
    cpuAtMount = cpuNow();
    process.on('SIGUSR2', () => {
      const file = process.env.LAYERFS_FUSE_STATS;
      if (!file) return;
      const m = process.memoryUsage();
      const u = process.cpuUsage();
      try {
        appendFileSync(file, JSON.stringify({ transport: kind, pid: process.pid, requests: requests(), cpuUs: u.user + u.system, cpuServeUs: u.user + u.system - cpuAtMount, ...extra(), coreNodes: core.nodeCount, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external }) + '\n');
      } catch {
        // best effort
      }
    });
  };

  if (kind === 'direct') {
    const t = new DirectTransport(core, { ...common, passthrough: cfg.passthrough, extraOptions: cfg.extra.filter((o) => !o.startsWith('max_read') && !o.startsWith('blksize') && o !== 'auto_unmount') }, log);
    await t.mount();
    requests = () => t.stats.requests;
    // spinUs: CPU spent polling /dev/fuse after wake-ups (part of cpuUs; the work per request is cpuUs - spinUs)
    onStats(() => ({ interrupts: t.stats.interrupts, eintr: t.stats.eintr, kernelNodes: t.nodeCount(), spinUs: native.spinUs(), byOp: opNames(t.stats.byOp), passthrough: t.passthroughStats() }));
    // the read loop ends with ENODEV once the mount is gone (umount, fusermount -u, connection aborted)
    void t.ended.then((why) => end(why));
  } else {
    if (cfg.passthrough) log.info('fuse: passthrough is for the direct transport: fuse-native serves reads and writes itself');
    const t = new FuseNativeTransport(core, common, log);
    await t.mount();
    requests = () => t.requests;
    onStats(() => ({}));
    // the libfuse loop runs on its own thread: watch the mount table to learn that the mount is gone
    let seen = true; // mount() resolved: it is mounted (an unmount may come before the first poll)
    timer = setInterval(() => {
      isMounted(cfg.mountpoint).then(
        (m) => {
          if (m) seen = true;
          else if (seen) void end('unmounted');
        },
        () => undefined,
      );
    }, 300);
  }
  log.info({ lowerdirs: cfg.lowerdirs, upperdir: cfg.upperdir, transport: kind }, 'mounted');

  const onSignal = (sig: string) => {
    unmount(cfg.mountpoint, { lazy: true })
      .catch((err: unknown) => log.warn({ err }, 'unmount failed'))
      .finally(() => {
        if (kind !== 'direct') void end(sig);
      });
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGHUP', () => onSignal('SIGHUP'));
  return { done };
}
