/**
 * One FUSE mount served by this process: open the overlay core, mount it through the fuse-native transport, and
 * stay until the mount goes away (umount / fusermount -u) or SIGTERM/SIGINT (which unmount cleanly).
 */
import { logger } from '../common/log.js';
import { Overlay } from './core/overlay.js';
import { isMounted, unmount } from './mountinfo.js';
import type { MountConfig } from './options.js';
import { FuseNativeTransport } from './transport/fuse-native.js';

export interface ServerHandle {
  /** Resolves when the mount has ended and the server cleaned up. */
  done: Promise<void>;
}

/** Mount and serve. Resolves once the mount is usable; `done` settles when it ends. */
export async function serve(cfg: MountConfig): Promise<ServerHandle> {
  const log = logger().child({ mnt: cfg.mountpoint });
  process.umask(0); // modes from the kernel already have the caller's umask applied
  const core = await Overlay.open({ lowerdirs: cfg.lowerdirs, upperdir: cfg.upperdir, workdir: cfg.workdir });
  const transport = new FuseNativeTransport(core, {
    mountpoint: cfg.mountpoint,
    fsname: cfg.fsname,
    attrTimeout: cfg.attrTimeout,
    entryTimeout: cfg.entryTimeout,
    readonly: core.readonly,
    debug: cfg.debug,
    extraOptions: cfg.extra,
  }, log);
  await transport.mount();
  log.info({ lowerdirs: cfg.lowerdirs, upperdir: cfg.upperdir }, 'mounted');

  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  let ending = false;
  const end = async (why: string) => {
    if (ending) return;
    ending = true;
    clearInterval(timer);
    log.info({ why }, 'unmounting');
    await core.close();
    finish();
  };
  // the libfuse loop runs on its own thread: watch the mount table to learn that the mount is gone
  let seen = true; // mount() resolved: it is mounted (an unmount may come before the first poll)
  const timer = setInterval(() => {
    isMounted(cfg.mountpoint).then(
      (m) => {
        if (m) seen = true;
        else if (seen) void end('unmounted');
      },
      () => undefined,
    );
  }, 300);
  const onSignal = (sig: string) => {
    unmount(cfg.mountpoint, { lazy: true })
      .catch((err: unknown) => log.warn({ err }, 'unmount failed'))
      .finally(() => void end(sig));
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGHUP', () => onSignal('SIGHUP'));
  return { done };
}
