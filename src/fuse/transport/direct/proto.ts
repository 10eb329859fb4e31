/**
 * The kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.x): opcodes, flags and the structs we decode and
 * encode. All little-endian (x86-64/arm64 hosts); offsets are written out by hand, struct by struct.
 */
import type { NodeStat } from '../../core/node.js';

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 41;

export const enum Op {
  LOOKUP = 1,
  FORGET = 2,
  GETATTR = 3,
  SETATTR = 4,
  READLINK = 5,
  SYMLINK = 6,
  MKNOD = 8,
  MKDIR = 9,
  UNLINK = 10,
  RMDIR = 11,
  RENAME = 12,
  LINK = 13,
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  STATFS = 17,
  RELEASE = 18,
  FSYNC = 20,
  SETXATTR = 21,
  GETXATTR = 22,
  LISTXATTR = 23,
  REMOVEXATTR = 24,
  FLUSH = 25,
  INIT = 26,
  OPENDIR = 27,
  READDIR = 28,
  RELEASEDIR = 29,
  FSYNCDIR = 30,
  GETLK = 31,
  SETLK = 32,
  SETLKW = 33,
  ACCESS = 34,
  CREATE = 35,
  INTERRUPT = 36,
  BMAP = 37,
  DESTROY = 38,
  IOCTL = 39,
  POLL = 40,
  NOTIFY_REPLY = 41,
  BATCH_FORGET = 42,
  FALLOCATE = 43,
  READDIRPLUS = 44,
  RENAME2 = 45,
  LSEEK = 46,
  COPY_FILE_RANGE = 47,
  /** 7.45: COPY_FILE_RANGE with a 64-bit count in the reply (kernels that know it try it first). */
  COPY_FILE_RANGE_64 = 53,
}

/** Opcode names, for stats and logs. */
export const OP_NAMES: Record<number, string> = { 1: 'LOOKUP', 2: 'FORGET', 3: 'GETATTR', 4: 'SETATTR', 5: 'READLINK', 6: 'SYMLINK', 8: 'MKNOD', 9: 'MKDIR', 10: 'UNLINK', 11: 'RMDIR', 12: 'RENAME', 13: 'LINK', 14: 'OPEN', 15: 'READ', 16: 'WRITE', 17: 'STATFS', 18: 'RELEASE', 20: 'FSYNC', 21: 'SETXATTR', 22: 'GETXATTR', 23: 'LISTXATTR', 24: 'REMOVEXATTR', 25: 'FLUSH', 26: 'INIT', 27: 'OPENDIR', 28: 'READDIR', 29: 'RELEASEDIR', 30: 'FSYNCDIR', 31: 'GETLK', 32: 'SETLK', 33: 'SETLKW', 34: 'ACCESS', 35: 'CREATE', 36: 'INTERRUPT', 37: 'BMAP', 38: 'DESTROY', 39: 'IOCTL', 40: 'POLL', 41: 'NOTIFY_REPLY', 42: 'BATCH_FORGET', 43: 'FALLOCATE', 44: 'READDIRPLUS', 45: 'RENAME2', 46: 'LSEEK', 47: 'COPY_FILE_RANGE', 53: 'COPY_FILE_RANGE_64' };

/** Counts by opcode -> counts by name. */
export function opNames(byOp: Record<number, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(byOp).map(([k, v]) => [OP_NAMES[Number(k)] ?? k, v]));
}

/** fuse_init_in/out flags (low 32 bits). */
export const INIT = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  INIT_EXT: 1 << 30,
} as const;

/** fuse_init_in/out flags2 (bits 32-63 of the flags, with INIT_EXT). */
export const INIT2 = {
  /** FUSE_PASSTHROUGH (bit 37): opens may name a backing file (kernel 6.9+, protocol 7.40). */
  PASSTHROUGH: 1 << 5,
} as const;

export const FOPEN_DIRECT_IO = 1;
export const FOPEN_KEEP_CACHE = 2;
export const FOPEN_CACHE_DIR = 8;
/** Reads, writes and mmap of this open go to the backing file named by fuse_open_out.backing_id (7.40). */
export const FOPEN_PASSTHROUGH = 1 << 7;

/** fuse_setattr_in.valid bits. */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

export const FUSE_GETATTR_FH = 1;

export const IN_HEADER = 40; // len u32, opcode u32, unique u64, nodeid u64, uid u32, gid u32, pid u32, total_extlen u16, pad u16
export const OUT_HEADER = 16; // len u32, error i32, unique u64
export const ATTR_SIZE = 88;
export const ENTRY_OUT = 40 + ATTR_SIZE; // 128
export const ATTR_OUT = 16 + ATTR_SIZE; // 104
export const OPEN_OUT = 16;
export const DIRENT_HEAD = 24;

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export function readHeader(b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: b.readBigUInt64LE(8),
    nodeid: u64(b, 16),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32),
  };
}

/** u64 field as a JS number (node ids, handles, offsets and sizes all stay below 2^53; a bigger value rounds as
 *  Number(bigint) would). Two 32-bit reads: no BigInt allocated, and this runs several times per request. */
export const u64 = (b: Buffer, off: number): number => b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 0x100000000;

export function writeU64(b: Buffer, v: number, off: number): void {
  b.writeUInt32LE(v % 0x100000000 >>> 0, off);
  b.writeUInt32LE(Math.floor(v / 0x100000000) >>> 0, off + 4);
}

/** NUL-terminated string at off; returns the string and the offset after the NUL. */
export function cstr(b: Buffer, off: number, end: number): [string, number] {
  let z = b.indexOf(0, off);
  if (z < 0 || z > end) z = end;
  return [b.toString('utf8', off, z), z + 1];
}

function writeI64(b: Buffer, v: number, off: number): void {
  b.writeBigInt64LE(BigInt(v), off);
}

/** fuse_attr at off. */
export function writeAttr(b: Buffer, off: number, s: NodeStat): void {
  writeU64(b, s.ino, off);
  writeU64(b, s.size, off + 8);
  writeU64(b, s.blocks, off + 16);
  // exact seconds and nanoseconds, as the backing fs has them
  writeI64(b, s.atimeSec, off + 24);
  writeI64(b, s.mtimeSec, off + 32);
  writeI64(b, s.ctimeSec, off + 40);
  b.writeUInt32LE(s.atimeNsec, off + 48);
  b.writeUInt32LE(s.mtimeNsec, off + 52);
  b.writeUInt32LE(s.ctimeNsec, off + 56);
  b.writeUInt32LE(s.mode >>> 0, off + 60);
  b.writeUInt32LE(Math.min(s.nlink, 0xffffffff) >>> 0, off + 64);
  b.writeUInt32LE(s.uid >>> 0, off + 68);
  b.writeUInt32LE(s.gid >>> 0, off + 72);
  b.writeUInt32LE(s.rdev % 0x100000000 >>> 0, off + 76); // new_encode_dev == low 32 bits of glibc's dev_t
  b.writeUInt32LE(Math.min(s.blksize, 0xffffffff) >>> 0, off + 80);
  b.writeUInt32LE(0, off + 84);
}

function validParts(sec: number): [number, number] {
  const s = Math.floor(sec);
  return [s, Math.round((sec - s) * 1e9)];
}

/** fuse_entry_out. nodeid 0 = a negative entry (cached for entryTimeout). */
export function entryOut(nodeid: number, s: NodeStat | null, entryTimeout: number, attrTimeout: number): Buffer {
  const b = Buffer.alloc(ENTRY_OUT);
  writeEntry(b, 0, nodeid, s, entryTimeout, attrTimeout);
  return b;
}

export function writeEntry(b: Buffer, off: number, nodeid: number, s: NodeStat | null, entryTimeout: number, attrTimeout: number): void {
  const [es, en] = validParts(entryTimeout);
  const [as, an] = validParts(attrTimeout);
  writeU64(b, nodeid, off);
  writeU64(b, 0, off + 8); // generation: node ids are never reused during a mount
  writeU64(b, es, off + 16);
  writeU64(b, s ? as : 0, off + 24);
  b.writeUInt32LE(en, off + 32);
  b.writeUInt32LE(s ? an : 0, off + 36);
  if (s) writeAttr(b, off + 40, s);
  else b.fill(0, off + 40, off + ENTRY_OUT);
}

export function attrOut(s: NodeStat, attrTimeout: number): Buffer {
  const b = Buffer.alloc(ATTR_OUT);
  const [as, an] = validParts(attrTimeout);
  writeU64(b, as, 0);
  b.writeUInt32LE(an, 8);
  writeAttr(b, 16, s);
  return b;
}

/** fuse_open_out: fh u64, open_flags u32, backing_id i32 (with FOPEN_PASSTHROUGH). */
export function openOut(fh: number, flags: number, backingId = 0): Buffer {
  const b = Buffer.alloc(OPEN_OUT);
  writeU64(b, fh, 0);
  b.writeUInt32LE(flags, 8);
  b.writeInt32LE(backingId, 12);
  return b;
}

/** Size of one fuse_dirent (8-aligned). */
export const direntSize = (nameLen: number): number => (DIRENT_HEAD + nameLen + 7) & ~7;

/** d_type from st_mode. */
export const dtype = (mode: number): number => (mode >>> 12) & 0xf;

export function writeDirent(b: Buffer, off: number, ino: number, nextOff: number, name: Buffer, type: number): number {
  writeU64(b, ino, off);
  writeU64(b, nextOff, off + 8);
  b.writeUInt32LE(name.length, off + 16);
  b.writeUInt32LE(type, off + 20);
  name.copy(b, off + 24);
  const size = direntSize(name.length);
  b.fill(0, off + 24 + name.length, off + size);
  return off + size;
}
