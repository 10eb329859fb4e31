import { open, readFile, rename, unlink } from 'node:fs/promises';
import os from 'node:os';
import { LayerfsError, isErrno } from '../common/errors.js';
import { logger } from '../common/log.js';
import { processAlive } from '../common/proc.js';

/**
 * An exclusive lock file that works on NFS: created with O_EXCL (atomic on NFSv3+), holding
 * `{host, pid, since}`. A lock whose holder is on this host and no longer alive is stale and is
 * broken (renamed away first, so two breakers cannot both win). A lock held by another host is
 * only broken after `staleAfterMs` (default: never), since we cannot see its processes.
 */
export interface LockHolder {
  host: string;
  pid: number;
  since: string;
  purpose: string;
}

/** `pid 123 on host h2 since <iso> (image import x.tar)`. */
export function describeHolder(holder: LockHolder | null, unknown = 'an unknown process (the lock file cannot be read)'): string {
  if (!holder) return unknown;
  return `pid ${holder.pid} on host ${holder.host} since ${holder.since} (${holder.purpose})`;
}

/** What a waiter is told (at once, then every `noticeEveryMs`). */
export interface LockWait {
  /** e.g. "the shared store's writer lock" */
  lock: string;
  holder: LockHolder | null;
  waitedMs: number;
  /** When the waiter gives up. */
  timeoutMs: number;
  /** What to call a holder that is not known (default: the lock file cannot be read). */
  unknownHolder?: string;
}

export function describeLockWait(w: LockWait): string {
  const waited = w.waitedMs >= 1000 ? `still waiting (${Math.round(w.waitedMs / 1000)} s of ${Math.round(w.timeoutMs / 1000)} s)` : 'waiting';
  return `${waited} for ${w.lock}, held by ${describeHolder(w.holder, w.unknownHolder)}`;
}

export interface AcquireOptions {
  /** How long to wait for the lock (default 0: fail at once). */
  waitMs?: number;
  /** Break a lock of another host older than this (default: never). */
  staleAfterMs?: number;
  /** Told who holds the lock when a wait starts, then every `noticeEveryMs` (default 10 s). */
  onWait?: (w: LockWait) => void;
  noticeEveryMs?: number;
  /** Names the lock in notices and errors (default: `the lock <file>`). */
  lockName?: string;
  /** What the error is about (default: the lock file). */
  what?: string;
}

export async function readLockHolder(file: string): Promise<LockHolder | null> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as LockHolder;
  } catch {
    return null;
  }
}

export class FileLock {
  private constructor(
    readonly file: string,
    private readonly token: string,
  ) {}

  static async acquire(file: string, purpose: string, opts: AcquireOptions = {}): Promise<FileLock> {
    const t0 = Date.now();
    const waitMs = opts.waitMs ?? 0;
    const deadline = t0 + waitMs;
    const lockName = opts.lockName ?? `the lock ${file}`;
    const noticeEvery = opts.noticeEveryMs ?? 10_000;
    let nextNotice = 0; // 0: not told yet
    const me: LockHolder = { host: os.hostname(), pid: process.pid, since: new Date().toISOString(), purpose };
    const token = JSON.stringify(me);
    for (;;) {
      try {
        const fh = await open(file, 'wx', 0o644);
        try {
          await fh.writeFile(token);
          await fh.sync();
        } finally {
          await fh.close();
        }
        return new FileLock(file, token);
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
      const holder = await readLockHolder(file);
      const stale =
        holder !== null &&
        ((holder.host === me.host && !processAlive(holder.pid)) ||
          (opts.staleAfterMs !== undefined && Date.now() - Date.parse(holder.since) > opts.staleAfterMs));
      if (stale) {
        logger().warn({ file, holder }, 'breaking a stale lock');
        const aside = `${file}.stale-${process.pid}-${Date.now()}`;
        try {
          await rename(file, aside);
          await unlink(aside);
        } catch {
          /* another process broke it first */
        }
        continue;
      }
      const now = Date.now();
      if (now >= deadline) {
        if (waitMs <= 0) throw new LayerfsError('ELOCKED', opts.what ?? file, `locked (held by ${describeHolder(holder)})`);
        throw new LayerfsError('ELOCKED', opts.what ?? file, `gave up after ${Math.round(waitMs / 1000)} s waiting for ${lockName}, held by ${describeHolder(holder)}`);
      }
      // tell the waiter who holds it: at once (a holder still writing its file gets a second to), then every noticeEvery
      if (opts.onWait && (holder !== null || now - t0 >= 1000) && now >= nextNotice) {
        opts.onWait({ lock: lockName, holder, waitedMs: now - t0, timeoutMs: waitMs });
        nextNotice = now + noticeEvery;
      }
      await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    }
  }

  async release(): Promise<void> {
    // only remove the lock if it is still ours
    const now = await readFile(this.file, 'utf8').catch(() => null);
    if (now === this.token) await unlink(this.file).catch(() => undefined);
  }
}
