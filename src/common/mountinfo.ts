/** The mount table, parsed once here for every user (drivers, snapshotter, FUSE server): /proc/self/mountinfo. */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  /** major:minor of the mounted filesystem. */
  dev: string;
  /** The path inside that filesystem the mount shows (not "/" for a bind mount of a subdir). */
  root: string;
  mountpoint: string;
  fstype: string;
  /** Superblock options (e.g. overlay's lowerdir=..., upperdir=...), each unescaped. */
  superOptions: string[];
}

/** Undo the kernel's octal escapes of a mountinfo field (\040 for a space, \011 tab, \012 newline, \134 backslash). */
export function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Every mount visible to this process, oldest first. */
export async function readMountTable(): Promise<MountEntry[]> {
  const out: MountEntry[] = [];
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    // id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0) continue;
    out.push({
      dev: f[2]!,
      root: unescapeMountField(f[3]!),
      mountpoint: unescapeMountField(f[4]!),
      fstype: f[sep + 1] ?? '',
      superOptions: (f[sep + 3] ?? '').split(',').map(unescapeMountField),
    });
  }
  return out;
}
