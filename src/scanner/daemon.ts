/**
 * `layerfs daemon`: the reader's periodic refresh, every host's lease renewal, the writer's removal passes. One per
 * root (a pid lock file under the root).
 *
 * The daemon opens the root's LevelDB only for the length of each scan, so the CLI (which opens it
 * per command) keeps working while the daemon runs: whoever comes second waits for LevelDB's LOCK
 * (`Index.open` polls for it) instead of failing.
 */
import path from 'node:path';
import { LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { Index } from '../index/index.js';
import { checkStoreBeforeFirstBuild, rebuildIndex } from './rebuild.js';
import { FileLock, type Store } from '../store/index.js';
import { Lifetime } from '../usage/index.js';
import { type ScanResult, scanChanged, scanOnce } from './scanner.js';

export interface DaemonOptions {
  /** Seconds between scans. */
  interval: number;
  /** Stop after this many scans (tests); default: run until SIGTERM/SIGINT. */
  maxScans?: number;
  /**
   * How the daemon's work gets the index: default, opened for each step and closed again. The `layerfs daemon`
   * command holds it instead and serves the CLI over a socket (src/api): it passes its own.
   */
  withIndex?: <T>(fn: (index: Index) => Promise<T>, purpose?: string) => Promise<T>;
  /** Called once this process is the root's only daemon, before the first scan (e.g. to open the index and the socket). */
  started?: () => Promise<void>;
  /** Called when the daemon stops (after the last scan). */
  stopped?: () => Promise<void>;
}

export function daemonLockFile(store: Store): string {
  return path.join(store.root, 'daemon.lock');
}

/** Open the index (waiting for another process to let go of it), rebuilding it if it is new. */
export async function withIndex<T>(store: Store, fn: (index: Index) => Promise<T>, purpose?: string): Promise<T> {
  await checkStoreBeforeFirstBuild(store);
  const index = await Index.open(store.indexDir, { holderFile: store.indexHolderFile, onWait: (w) => store.noticeLockWait(w), ...(purpose ? { purpose } : {}) });
  try {
    if (index.created) await rebuildIndex(store, index);
    return await fn(index);
  } finally {
    await index.close();
  }
}

/** Run one scan with the index opened for its length. */
export async function scanStore(store: Store, opts: { full?: boolean; purpose?: string } = {}): Promise<ScanResult> {
  return withIndex(store, (index) => scanOnce(store, index, opts), opts.purpose);
}

export async function runDaemon(store: Store, opts: DaemonOptions): Promise<void> {
  if (!(opts.interval > 0)) throw new LayerfsError('EUSAGE', '--interval', 'must be a positive number of seconds');
  const log = logger();
  const lock = await FileLock.acquire(daemonLockFile(store), 'daemon').catch((err: unknown) => {
    if (err instanceof LayerfsError && err.code === 'ELOCKED') {
      throw new LayerfsError('ELOCKED', `daemon on ${store.root}`, `already running (${err.message.replace(/^[^:]*: /, '')})`);
    }
    throw err;
  });
  let stopping = false;
  let wake: (() => void) | null = null;
  const stop = (signal: string) => {
    if (!stopping) log.info({ signal }, 'daemon stopping');
    stopping = true;
    wake?.();
  };
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  const useIndex = opts.withIndex ?? (<T>(fn: (index: Index) => Promise<T>, purpose = 'layerfs daemon') => withIndex(store, fn, purpose));
  try {
    // index upkeep: we are the only daemon on this root; temp dirs left in the root by a crash go now
    await withIndex(store, async () => store.removeStaleTemps(store.root), 'layerfs daemon: start-up');
    await opts.started?.();
    const refresh = store.role === 'reader';
    log.info({ root: store.root, shared: store.shared, role: store.role, interval: opts.interval, refresh }, refresh ? 'daemon started' : 'daemon started (writer: refresh off)');
    let scans = 0;
    while (!stopping) {
      if (refresh) {
        try {
          log.debug('scan start');
          const r = await useIndex((index) => scanOnce(store, index), 'layerfs daemon: scan');
          scans++;
          const summary = { added: r.added, removed: r.removed, updated: r.updated.images, missing: r.missing, waiting: r.waiting, io: r.io };
          if (scanChanged(r)) log.info(summary, 'scan: store changed');
          else log.debug(summary, 'scan: no change');
        } catch (err) {
          // a scan that fails (NFS hiccup, index busy for long) is retried at the next interval
          log.error({ err }, 'scan failed');
        }
      }
      try {
        // layer lifetime: renew this host's lease when due; a writer deletes the marked layers nothing uses
        await useIndex(async (index) => {
          const life = new Lifetime(store, index);
          await life.leases.renew();
          await life.collectMarked(); // logs what it removed and kept
        }, 'layerfs daemon: lease renewal, removal pass');
      } catch (err) {
        log.error({ err }, 'lease renewal or removal pass failed');
      }
      if (opts.maxScans !== undefined && scans >= opts.maxScans) break;
      if (stopping) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, opts.interval * 1000);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = null;
    }
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
    await opts.stopped?.().catch((err: unknown) => log.error({ err }, 'daemon: stopping failed'));
    await lock.release();
    log.info('daemon stopped');
  }
}
