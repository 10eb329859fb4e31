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

  static async acquire(file: string, purpose: string, opts: { waitMs?: number; staleAfterMs?: number } = {}): Promise<FileLock> {
    const deadline = Date.now() + (opts.waitMs ?? 0);
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
      if (Date.now() >= deadline) {
        const who = holder ? `${holder.purpose} by pid ${holder.pid} on ${holder.host} since ${holder.since}` : 'by another process';
        throw new LayerfsError('ELOCKED', file, `locked (${who})`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async release(): Promise<void> {
    // only remove the lock if it is still ours
    const now = await readFile(this.file, 'utf8').catch(() => null);
    if (now === this.token) await unlink(this.file).catch(() => undefined);
  }
}
