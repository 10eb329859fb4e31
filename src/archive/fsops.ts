/** Thin promise wrappers over fd-level fs calls (cheaper than FileHandle objects on hot paths). */
import fs from 'node:fs';

type Cb<T> = (err: NodeJS.ErrnoException | null, v: T) => void;
function p<T>(fn: (cb: Cb<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((e, v) => (e ? reject(e) : resolve(v))));
}

export const open = (path: fs.PathLike, flags: number, mode: number) => p<number>((cb) => fs.open(path, flags, mode, cb));
export const close = (fd: number) => p<void>((cb) => fs.close(fd, (e) => cb(e, undefined)));
export const fchown = (fd: number, uid: number, gid: number) => p<void>((cb) => fs.fchown(fd, uid, gid, (e) => cb(e, undefined)));
export const fchmod = (fd: number, mode: number) => p<void>((cb) => fs.fchmod(fd, mode, (e) => cb(e, undefined)));
export const futimes = (fd: number, at: number, mt: number) => p<void>((cb) => fs.futimes(fd, at, mt, (e) => cb(e, undefined)));
export const lchown = (path: string, uid: number, gid: number) => p<void>((cb) => fs.lchown(path, uid, gid, (e) => cb(e, undefined)));
export const chmod = (path: string, mode: number) => p<void>((cb) => fs.chmod(path, mode, (e) => cb(e, undefined)));
export const lutimes = (path: string, at: number, mt: number) => p<void>((cb) => fs.lutimes(path, at, mt, (e) => cb(e, undefined)));
export const mkdir = (path: string, mode: number) => p<void>((cb) => fs.mkdir(path, { mode }, (e) => cb(e, undefined)));
export const symlink = (target: string, path: string) => p<void>((cb) => fs.symlink(target, path, (e) => cb(e, undefined)));
export const link = (existing: string, path: string) => p<void>((cb) => fs.link(existing, path, (e) => cb(e, undefined)));
export const lstat = (path: string) => p<fs.Stats>((cb) => fs.lstat(path, cb));

export async function writeAll(fd: number, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await p<number>((cb) => fs.write(fd, buf, off, buf.length - off, null, cb));
    if (n <= 0) throw new Error('short write');
    off += n;
  }
}

/** The process umask, read without changing it (process.umask() without arguments is deprecated). */
export function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return parseInt(m[1]!, 8);
  } catch {
    /* fall through */
  }
  return 0o022;
}

/** pwrite all of buf at pos. */
export async function writeAt(fd: number, buf: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await p<number>((cb) => fs.write(fd, buf, off, buf.length - off, pos + off, cb));
    if (n <= 0) throw new Error('short write');
    off += n;
  }
}

export const ftruncate = (fd: number, len: number) => p<void>((cb) => fs.ftruncate(fd, len, (e) => cb(e, undefined)));
