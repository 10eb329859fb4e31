/**
 * Stats with exact times. Node's fs.Stats carries times as double milliseconds since the epoch (steps of ~240 ns
 * today), so a FUSE reply or a copy-up built from it is off by up to a few hundred nanoseconds; kernel overlay shows
 * the layers' own nanoseconds. These come from our addon's lstat/fstat, one syscall as before.
 */
import { constants as fsc } from 'node:fs';
import { native } from '../../common/native.js';

const buf = new Float64Array(16);

export class ExactStat {
  readonly dev: number;
  readonly ino: number;
  readonly mode: number;
  readonly nlink: number;
  readonly uid: number;
  readonly gid: number;
  readonly rdev: number;
  readonly size: number;
  readonly blksize: number;
  readonly blocks: number;
  readonly atimeSec: number;
  readonly atimeNsec: number;
  readonly mtimeSec: number;
  readonly mtimeNsec: number;
  readonly ctimeSec: number;
  readonly ctimeNsec: number;

  constructor(b: Float64Array) {
    this.dev = b[0];
    this.ino = b[1];
    this.mode = b[2];
    this.nlink = b[3];
    this.uid = b[4];
    this.gid = b[5];
    this.rdev = b[6];
    this.size = b[7];
    this.blksize = b[8];
    this.blocks = b[9];
    this.atimeSec = b[10];
    this.atimeNsec = b[11];
    this.mtimeSec = b[12];
    this.mtimeNsec = b[13];
    this.ctimeSec = b[14];
    this.ctimeNsec = b[15];
  }

  private is(t: number): boolean {
    return (this.mode & fsc.S_IFMT) === t;
  }
  isDirectory(): boolean {
    return this.is(fsc.S_IFDIR);
  }
  isFile(): boolean {
    return this.is(fsc.S_IFREG);
  }
  isSymbolicLink(): boolean {
    return this.is(fsc.S_IFLNK);
  }
  isCharacterDevice(): boolean {
    return this.is(fsc.S_IFCHR);
  }
  isBlockDevice(): boolean {
    return this.is(fsc.S_IFBLK);
  }
  isFIFO(): boolean {
    return this.is(fsc.S_IFIFO);
  }
  isSocket(): boolean {
    return this.is(fsc.S_IFSOCK);
  }
}

/** lstat with exact times; throws (ENOENT too). */
export function lstatX(p: string): ExactStat {
  if (!native.lstatInto(p, buf)) throw Object.assign(new Error(`ENOENT: no such file or directory, lstat '${p}'`), { code: 'ENOENT', errno: -2, syscall: 'lstat', path: p });
  return new ExactStat(buf);
}

/** lstat with exact times, or null where there is no such entry (ENOENT, ENOTDIR). */
export function lstatXOrNull(p: string): ExactStat | null {
  return native.lstatInto(p, buf) ? new ExactStat(buf) : null;
}

export function fstatX(fd: number): ExactStat {
  native.fstatInto(fd, buf);
  return new ExactStat(buf);
}

/** Set a path's times exactly (no symlink followed). */
export function setTimes(p: string, st: { atimeSec: number; atimeNsec: number; mtimeSec: number; mtimeNsec: number }): void {
  native.lutimens(p, st.atimeSec, st.atimeNsec, st.mtimeSec, st.mtimeNsec);
}
