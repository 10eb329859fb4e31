/**
 * The floor of the fuse-native transport, for scripts/bench-fuse.sh: a minimal fuse-native passthrough of one
 * directory, no overlay logic at all (each callback is one synchronous syscall on the backing path). The bench mounts
 * it over a kernel overlay mount of the same layers, so "layerfs-fuse-native / floor" is what layerfs' own code costs
 * on top of what libfuse 2.9's protocol and fuse-native's thread handoff cost.
 *
 *   node fuse-native-floor.js BACKING MNT [attr_timeout]     (foreground; SIGTERM or `umount MNT` ends it)
 *
 * The libfuse options are the fuse-native transport's own (its libfuseOptions: use_ino, entry_timeout=60,
 * attr_timeout=0 unless given, big_writes, max_write=131072, auto_cache), so the floor is measured under the same
 * kernel caching.
 */
import * as fs from 'node:fs';
import path from 'node:path';
import { fuseNativeWith, libfuseOptions } from '../src/fuse/transport/fuse-native.js';

type Cb = (...args: unknown[]) => void;

const [backing, mnt, attrArg] = process.argv.slice(2);
if (!backing || !mnt) {
  console.error('usage: fuse-native-floor BACKING MNT [attr_timeout]');
  process.exit(2);
}
const P = (p: string): string => path.join(backing, p);

/** One syscall, its result or its negative errno handed to the callback. */
function sys<T>(cb: Cb, fn: () => T, ok: (r: T) => unknown[] = () => [0]): void {
  let r: T;
  try {
    r = fn();
  } catch (err) {
    cb(-((err as NodeJS.ErrnoException).errno ? Math.abs((err as NodeJS.ErrnoException).errno!) : 5));
    return;
  }
  cb(...ok(r));
}

const st = (s: fs.Stats) => [0, { mode: s.mode, uid: s.uid, gid: s.gid, size: s.size, dev: 0, nlink: s.nlink, ino: s.ino % 2 ** 32, rdev: s.rdev, blksize: s.blksize, blocks: s.blocks, atime: Math.floor(s.atimeMs), mtime: Math.floor(s.mtimeMs), ctime: Math.floor(s.ctimeMs) }];

const ops = {
  getattr: (p: string, cb: Cb) => sys(cb, () => fs.lstatSync(P(p)), st),
  fgetattr: (_p: string, fd: number, cb: Cb) => sys(cb, () => fs.fstatSync(fd), st),
  access: (p: string, mode: number, cb: Cb) => sys(cb, () => fs.accessSync(P(p), mode)),
  readdir: (p: string, cb: Cb) => sys(cb, () => fs.readdirSync(P(p)), (names) => [0, ['.', '..', ...names]]),
  readlink: (p: string, cb: Cb) => sys(cb, () => fs.readlinkSync(P(p)), (t) => [0, t]),
  open: (p: string, flags: number, cb: Cb) => sys(cb, () => fs.openSync(P(p), flags), (fd) => [0, fd]),
  create: (p: string, mode: number, cb: Cb) => sys(cb, () => fs.openSync(P(p), fs.constants.O_CREAT | fs.constants.O_RDWR | fs.constants.O_EXCL, mode), (fd) => [0, fd]),
  read: (_p: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => sys(cb, () => fs.readSync(fd, buf, 0, len, pos), (n) => [n]),
  write: (_p: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => sys(cb, () => fs.writeSync(fd, buf, 0, len, pos), (n) => [n]),
  fsync: (_p: string, _d: number, fd: number, cb: Cb) => sys(cb, () => fs.fsyncSync(fd)),
  release: (_p: string, fd: number, cb: Cb) => sys(cb, () => fs.closeSync(fd)),
  truncate: (p: string, size: number, cb: Cb) => sys(cb, () => fs.truncateSync(P(p), size)),
  ftruncate: (_p: string, fd: number, size: number, cb: Cb) => sys(cb, () => fs.ftruncateSync(fd, size)),
  chmod: (p: string, mode: number, cb: Cb) => sys(cb, () => fs.chmodSync(P(p), mode)),
  chown: (p: string, uid: number, gid: number, cb: Cb) => sys(cb, () => fs.lchownSync(P(p), uid, gid)),
  utimens: (p: string, atime: number, mtime: number, cb: Cb) => sys(cb, () => fs.lutimesSync(P(p), atime / 1000, mtime / 1000)),
  mkdir: (p: string, mode: number, cb: Cb) => sys(cb, () => fs.mkdirSync(P(p), mode)),
  rmdir: (p: string, cb: Cb) => sys(cb, () => fs.rmdirSync(P(p))),
  unlink: (p: string, cb: Cb) => sys(cb, () => fs.unlinkSync(P(p))),
  rename: (a: string, b: string, cb: Cb) => sys(cb, () => fs.renameSync(P(a), P(b))),
  symlink: (target: string, p: string, cb: Cb) => sys(cb, () => fs.symlinkSync(target, P(p))),
  link: (a: string, b: string, cb: Cb) => sys(cb, () => fs.linkSync(P(a), P(b))),
  statfs: (_p: string, cb: Cb) =>
    sys(cb, () => fs.statfsSync(backing), (s) => [0, { bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 0, namemax: 255 }]),
};

const Floor = fuseNativeWith(libfuseOptions({ attrTimeout: attrArg === undefined ? 0 : Number(attrArg) }));
const fuse = new Floor(mnt, ops, { timeout: false, allowOther: true, defaultPermissions: true, fsname: 'floor' });
fuse.mount((err) => {
  if (err) {
    console.error(`fuse-native-floor: mount: ${err.message}`);
    process.exit(1);
  }
  console.log('ready');
  // `umount MNT` from outside ends libfuse's loop but not this process: leave once the mount is gone
  setInterval(() => {
    if (!fs.readFileSync('/proc/self/mounts', 'utf8').includes(` ${mnt} `)) process.exit(0);
  }, 200);
});
const stop = () => fuse.unmount(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
