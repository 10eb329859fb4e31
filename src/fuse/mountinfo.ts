/** Mount table helpers for the server and its callers (reads /proc/self/mountinfo; never touches the mount). */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export async function isMounted(mountpoint: string): Promise<boolean> {
  const want = path.resolve(mountpoint);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l && unescape(l.split(' ')[4] ?? '') === want);
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
