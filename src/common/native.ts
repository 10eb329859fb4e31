import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** Syscalls Node lacks, from our small N-API addon (native/layerfs_native.c, built by scripts/build-native.sh). */
export interface Native {
  mknod(path: string | Buffer, mode: number, major: number, minor: number): void;
  lsetxattr(path: string | Buffer, name: string, value: Buffer, flags: number): void;
  /** Throws an error with code ENODATA when the attribute is absent. */
  lgetxattr(path: string, name: string): Buffer;
  llistxattr(path: string): string[];
  lremovexattr(path: string, name: string): void;
  renameat2(from: string, to: string, flags: number): void;
  /** fallocate(2) on an fd (mode: FALLOC_FL_* bits); throws the backing fs's error (EOPNOTSUPP as code ENOTSUP). */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** lseek(2): the new offset. SEEK_DATA/SEEK_HOLE past the data throw code ENXIO. */
  lseek(fd: number, offset: number, whence: number): number;
  /** copy_file_range(2) with explicit offsets (the fds' positions are unused): bytes copied, 0 at end of input. */
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number, flags: number): number;
  /** Open path, POSIX_FADV_WILLNEED of its first len bytes (the disk reads are queued, not waited for), close.
   *  false when it cannot be opened. */
  willNeed(path: string, len: number): boolean;
  /** Whether readdir reports entry types in `dir` (which must hold at least one entry). */
  dtypeSupported(dir: string): boolean;
  /** Calls cb on the JS thread whenever fd is readable (a libuv poll handle); returns the watcher for unwatch. */
  watchReadable(fd: number, cb: (status: number) => void, spinUs?: number, busy?: Int32Array): unknown;
  unwatch(watcher: unknown): void;
  /** Microseconds spent polling after wake-ups so far (the CPU the polling costs, all watchers). */
  spinUs(): number;
  /** read(2) into buf: the byte count, or -errno (-EAGAIN on a non-blocking fd with nothing to read). */
  readNonblock(fd: number, buf: Buffer): number;
  /** A FUSE READ or WRITE request (req, reqLen bytes as read from devFd) done on file fd and answered on devFd in one
   *  call: pread into out (READ; out holds the request's size) or pwrite of the request's data (WRITE), then the
   *  reply. Returns the byte count, or -errno when the pread/pwrite failed (then nothing was answered). A reply the
   *  kernel refuses with ENOENT (interrupted) or ENODEV (unmounted) is dropped; other reply errors throw. */
  fuseIo(devFd: number, req: Buffer, reqLen: number, fd: number, out: Buffer | null): number;
  /** FUSE_DEV_IOC_BACKING_OPEN: registers open file fd as a backing file of the /dev/fuse connection devFd; returns
   *  its backing id (for FOPEN_PASSTHROUGH open replies). Throws EPERM (no CAP_SYS_ADMIN, or passthrough not
   *  negotiated), ELOOP (fd's fs stacked max_stack_depth deep), ENOTTY (kernel without passthrough)... */
  backingOpen(devFd: number, fd: number): number;
  /** FUSE_DEV_IOC_BACKING_CLOSE: the id is no longer valid for new opens (opens using it keep the file). */
  backingClose(devFd: number, id: number): void;
  /** lstat(2) into out (16 doubles: dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks, then atime, mtime,
   *  ctime as seconds and nanoseconds): true, or false for ENOENT/ENOTDIR (other errors throw). */
  lstatInto(path: string, out: Float64Array): boolean;
  /** fstat(2) into out, as lstatInto. */
  fstatInto(fd: number, out: Float64Array): void;
  /** utimensat(2) with AT_SYMLINK_NOFOLLOW and exact times; a nanosecond field may be UTIME_NOW or UTIME_OMIT. */
  lutimens(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /** Mark every fd >= lo close-on-exec (before spawning a long-lived child: it inherits none of this process's
   *  files, LevelDB's included). Returns -1 (close_range did it) or the number of fds looked at. */
  cloexecFrom(lo: number): number;
  /** Close every fd >= lo but `keep` that is not close-on-exec: what a fresh process inherited by accident
   *  (Node's own fds are close-on-exec). Returns how many were closed. */
  closeInherited(lo: number, keep: number): number;
}

export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const FALLOC_FL_KEEP_SIZE = 1;
export const FALLOC_FL_PUNCH_HOLE = 2;
export const FALLOC_FL_ZERO_RANGE = 16;

function findRepoRoot(): string {
  // this file is at <repo>/src/common/native.ts or <repo>/dist/src/common/native.js
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (path.basename(dir) === 'src') return path.basename(path.dirname(dir)) === 'dist' ? path.dirname(path.dirname(dir)) : path.dirname(dir);
    dir = path.dirname(dir);
  }
  throw new Error('layerfs: cannot locate the package root to load build/layerfs_native.node');
}

const require = createRequire(import.meta.url);
export const native: Native = require(path.join(findRepoRoot(), 'build', 'layerfs_native.node')) as Native;

/** A char device 0/0: the kernel overlay whiteout. */
export function mkWhiteout(p: string): void {
  native.mknod(p, 0o020000, 0, 0);
}
