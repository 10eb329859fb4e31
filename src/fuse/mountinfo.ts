/** Mount table helpers for the server and its callers (reads /proc/self/mountinfo; never touches the mount). */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { readMountTable, type MountEntry } from '../common/mountinfo.js';

const run = promisify(execFile);

/** The mount table's entries of the mounts at `mountpoint`, oldest first. */
async function mountsAt(mountpoint: string): Promise<MountEntry[]> {
  const want = path.resolve(mountpoint);
  return (await readMountTable()).filter((m) => m.mountpoint === want);
}

export async function isMounted(mountpoint: string): Promise<boolean> {
  return (await mountsAt(mountpoint)).length > 0;
}

/** The device (major:minor) of the mount at `mountpoint` (the last one mounted there), from the mount table. */
export async function mountDevice(mountpoint: string): Promise<string | null> {
  return (await mountsAt(mountpoint)).at(-1)?.dev ?? null;
}

/**
 * Let the kernel read ahead `kb` KiB per request on the FUSE mount at `mountpoint` (its bdi's read_ahead_kb; the
 * kernel starts FUSE mounts at 128, and FUSE_INIT can only lower it). Each READ is a round trip, so fewer, larger
 * ones: a cold sequential read of 1 GiB sends 1024 READs instead of 8192. Best effort (false when not possible).
 */
export async function raiseReadahead(mountpoint: string, kb: number): Promise<boolean> {
  try {
    const dev = await mountDevice(mountpoint);
    if (!dev || !/^\d+:\d+$/.test(dev)) return false;
    const file = `/sys/class/bdi/${dev}/read_ahead_kb`;
    const cur = Number((await readFile(file, 'utf8')).trim());
    if (cur >= kb) return true;
    await writeFile(file, `${kb}\n`);
    return true;
  } catch {
    return false;
  }
}

/** Unmount a FUSE mount: umount(8) as root, fusermount otherwise; lazily as a last resort. */
export async function unmount(mountpoint: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const mnt = path.resolve(mountpoint);
  const tries: [string, string[]][] =
    process.getuid?.() === 0
      ? [['umount', [mnt]], ['fusermount3', ['-u', mnt]], ['fusermount', ['-u', mnt]]]
      : [['fusermount3', ['-u', mnt]], ['fusermount', ['-u', mnt]], ['umount', [mnt]]];
  let last: unknown;
  for (const [cmd, args] of tries) {
    try {
      await run(cmd, args);
      return;
    } catch (err) {
      last = err;
      if (!(await isMounted(mnt))) return;
    }
  }
  if (opts.lazy) {
    for (const [cmd, args] of [['umount', ['-l', mnt]], ['fusermount3', ['-uz', mnt]]] as [string, string[]][]) {
      try {
        await run(cmd, args);
        return;
      } catch (err) {
        last = err;
      }
    }
  }
  throw last;
}
