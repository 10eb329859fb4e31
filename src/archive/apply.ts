/**
 * applyLayer: stream one layer tar (plain or gzip) into a directory in kernel overlay format.
 *
 * Safety model: the target dir belongs to us alone while we apply (the store gives us a fresh temp
 * dir). We keep an in-memory map of every path we created and its kind; every parent of every entry
 * must be a real directory in that map (or, if the dir was not empty to begin with, one that lstat
 * shows to be a directory). A parent that is a symlink is refused, so no write ever goes through a
 * link; final components are created with calls that never follow links (O_EXCL|O_NOFOLLOW, mkdir,
 * symlink, link, mknod, l*xattr, lchown, lutimes).
 *
 * Parsing: tar-stream's extractor (PAX values made lossless for binary xattrs in tarstream-pax.ts).
 * We feed it ourselves (Feed) so that we can see where each header starts: the end-of-archive
 * marker, truncation between entries, and the checks on names, types and numbers are ours.
 *
 * Speed: structural operations run in entry order; regular-file bodies up to SMALL_FILE bytes are
 * buffered and written by up to MAX_JOBS concurrent jobs while the stream moves on. Anything that
 * removes or replaces an existing path first waits for all jobs (rare in real layers).
 */
import fs from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, pipeline } from 'node:stream';
import zlib from 'node:zlib';
import { extract, type Extract, type Header } from 'tar-stream';
import { badTar, isErrno, LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { native } from '../common/native.js';
import * as f from './fsops.js';
import { streamHash, type StreamHash } from './hasher.js';
import { FileWriter } from './writer.js';
import { baseOf, joinRel, normalizeName, parentOf } from './paths.js';
import { decodeHeaderBlock, xattrBytes, XATTR_PAX_PREFIX } from './tarstream-pax.js'; // also makes tar-stream's PAX values lossless

export interface ApplyOptions {
  /** 'sha256:<hex>' of the uncompressed tar stream; mismatch -> LayerfsError 'EDIGEST' */
  expectDiffDigest?: string;
  /** 'sha256:<hex>' of the bytes as given (compressed or not); mismatch -> 'EDIGEST' */
  expectCompressedDigest?: string;
}
export interface ApplyResult {
  diffDigest: string;
  compressedDigest: string;
  /** sum of regular file sizes */
  size: number;
  compressedSize: number;
}

/** Regular files up to this size are written with synchronous calls in line (see file()). */
const SYNC_FILE = process.env.LAYERFS_APPLY_SYNC_MAX !== undefined ? Number(process.env.LAYERFS_APPLY_SYNC_MAX) : 64 << 10;
/** Up to this size, buffered and written by a background job (threadpool) while parsing goes on. */
const SMALL_FILE = 16 << 20;
const MAX_JOBS = Number(process.env.LAYERFS_APPLY_JOBS) || 64; // tuning knob for benchmarks
const MAX_JOB_BYTES = 64 << 20;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
const O_CLOEXEC = 0o2000000; // Linux; libuv sets it anyway
const CREATE_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

type Kind = 'dir' | 'file' | 'symlink' | 'other';

function checkDigestArg(d: string | undefined, which: string): void {
  if (d === undefined) return;
  if (!/^sha256:[0-9a-f]{64}$/.test(d)) {
    throw new LayerfsError('EDIGEST', which, `unsupported or malformed digest ${JSON.stringify(d)} (want sha256:<64 hex>)`);
  }
}

/** Reserved overlay xattrs must never come from a tar: they would forge opaque dirs, redirects, metacopy. */
function isReservedXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}

let umaskCache: number | undefined;

class Applier {
  private readonly known = new Map<string, Kind>();
  private readonly setgidDirs = new Set<string>();
  private readonly dirTimes = new Map<string, [number, number]>();
  private readonly pending = new Map<string, Promise<void>>();
  private inflight = 0;
  private inflightBytes = 0;
  private waiters: (() => void)[] = [];
  private jobError: unknown = null;
  private lastParentOk: string | null = null;
  private rootEmpty = true;
  private readonly isRoot = process.geteuid?.() === 0;
  private readonly euid = process.geteuid?.() ?? 0;
  private readonly egid = process.getegid?.() ?? 0;
  private readonly umask = (umaskCache ??= f.currentUmask());
  size = 0;

  private readonly writer: FileWriter | null;

  constructor(private readonly root: string) {
    this.writer = FileWriter.open(
      CREATE_FLAGS,
      (rels, p) => {
        for (const rel of rels) this.pending.set(rel, p);
        void p.then(() => {
          for (const rel of rels) if (this.pending.get(rel) === p) this.pending.delete(rel);
        });
      },
      wrapEntryError,
    );
  }

  /** Release the writer thread session (after drain() or settle()). */
  close(): void {
    this.writer?.close();
  }

  async init(): Promise<void> {
    const st = await f.lstat(this.root);
    if (!st.isDirectory()) throw new LayerfsError('EBADTAR', this.root, 'layer target is not a directory');
    this.rootEmpty = (await readdir(this.root)).length === 0;
    this.known.set('', 'dir');
    if (st.mode & 0o2000) this.setgidDirs.add('');
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : `${this.root}/${rel}`;
  }

  // ---------- bounded background jobs ----------

  private schedule(rel: string, bytes: number, job: () => Promise<void>): void {
    this.inflight++;
    this.inflightBytes += bytes;
    const p: Promise<void> = job()
      .catch((e: unknown) => {
        this.jobError ??= e;
      })
      .finally(() => {
        this.inflight--;
        this.inflightBytes -= bytes;
        if (this.pending.get(rel) === p) this.pending.delete(rel);
        const w = this.waiters;
        this.waiters = [];
        for (const r of w) r();
      });
    this.pending.set(rel, p);
  }

  private checkJobs(): void {
    if (this.jobError) throw this.jobError;
    if (this.writer?.error) throw this.writer.error;
  }

  private async room(bytes: number): Promise<void> {
    while (this.inflight >= MAX_JOBS || (this.inflight > 0 && this.inflightBytes + bytes > MAX_JOB_BYTES)) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
    this.checkJobs();
  }

  /** Wait for every background job; rethrow the first failure. */
  async drain(): Promise<void> {
    if (this.writer) await this.writer.drain();
    while (this.pending.size) await Promise.all([...this.pending.values()]);
    this.checkJobs();
  }

  /** Wait for every background job, ignoring failures (error path). */
  async settle(): Promise<void> {
    if (this.writer) await this.writer.drain();
    while (this.pending.size) await Promise.all([...this.pending.values()]);
  }

  // ---------- path bookkeeping ----------

  private kindOf(rel: string): Kind | undefined {
    const k = this.known.get(rel);
    if (k !== undefined || this.rootEmpty) return k;
    try {
      const st = fs.lstatSync(this.abs(rel));
      const kind: Kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other';
      this.known.set(rel, kind);
      if (kind === 'dir' && st.mode & 0o2000) this.setgidDirs.add(rel);
      return kind;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return undefined;
      throw e;
    }
  }

  /** Make sure every ancestor of `rel` (and `rel` itself if includeSelf) is a real directory, creating missing ones. */
  private ensureDirs(rel: string, entry: string, includeSelf: boolean): void {
    const dir = includeSelf ? rel : parentOf(rel);
    if (dir === this.lastParentOk || dir === '') return;
    const parts = dir.split('/');
    let cur = '';
    for (const part of parts) {
      cur = joinRel(cur, part);
      const k = this.kindOf(cur);
      if (k === 'dir') continue;
      if (k === undefined) {
        fs.mkdirSync(this.abs(cur), 0o755);
        this.known.set(cur, 'dir');
        continue;
      }
      if (k === 'symlink') throw badTar(entry, `parent ${JSON.stringify(cur)} is a symlink; refusing to write through it`);
      throw badTar(entry, `parent ${JSON.stringify(cur)} is not a directory`);
    }
    this.lastParentOk = dir;
  }

  /**
   * Make room for a new entry at rel. Existing dir + new dir -> 'merge'. Anything else existing is
   * removed (after waiting for background writes), as tar and containerd do.
   */
  private clear(rel: string, newIsDir: boolean): 'merge' | 'fresh' | Promise<'merge' | 'fresh'> {
    const k = this.kindOf(rel);
    if (k === undefined) return 'fresh';
    if (k === 'dir' && newIsDir) return 'merge';
    return this.replace(rel);
  }

  private async replace(rel: string): Promise<'fresh'> {
    await this.drain();
    await rm(this.abs(rel), { recursive: true, force: true });
    this.forget(rel);
    return 'fresh';
  }

  private forget(rel: string): void {
    const prefix = rel + '/';
    const drop = (m: Map<string, unknown> | Set<string>) => {
      for (const key of m.keys()) if (key === rel || key.startsWith(prefix)) m.delete(key);
    };
    drop(this.known);
    drop(this.dirTimes);
    drop(this.setgidDirs);
    this.lastParentOk = null;
    // A removed path may have existed before we started: from now on it is known to be absent.
    if (!this.rootEmpty) this.known.delete(rel);
  }

  // ---------- metadata ----------

  private needChown(rel: string, h: TarHeader): boolean {
    if (!this.isRoot) return false;
    if (h.uid !== this.euid) return true;
    return h.gid !== this.egid || this.setgidDirs.has(parentOf(rel));
  }

  private needChmod(mode: number, chowned: boolean, isFile: boolean): boolean {
    if (mode & 0o7000) return true;
    if (isFile && chowned) return false;
    return (mode & this.umask) !== 0;
  }

  private setXattrs(abs: string, h: TarHeader, entry: string): void {
    if (!h.xattrs) return;
    for (const [k, v] of h.xattrs) {
      try {
        native.lsetxattr(abs, k, v, 0);
      } catch (e) {
        // As containerd: a backing fs without xattr support, or user.* on a symlink/device, is not fatal.
        if (isErrno(e, 'EOPNOTSUPP') || isErrno(e, 'ENOTSUP') || isErrno(e, 'EPERM')) {
          logger().warn({ entry, xattr: k, err: (e as Error).message }, 'archive: xattr not applied');
          continue;
        }
        throw e;
      }
    }
  }

  private times(h: TarHeader): [number, number] {
    return [h.atime ?? h.mtime, h.mtime];
  }

  // ---------- entries ----------

  async apply(h: TarHeader, body: Body): Promise<void> {
    this.checkJobs();
    const entry = h.name;
    const rel = normalizeName(h.name, entry);
    if (h.xattrs) {
      for (const k of h.xattrs.keys()) {
        if (isReservedXattr(k)) throw badTar(entry, `refusing reserved overlay xattr ${JSON.stringify(k)} from the tar`);
      }
    }
    const base = baseOf(rel);
    if (base.startsWith(WHITEOUT_PREFIX)) return this.whiteout(rel, base, h);
    if (rel === '') {
      if (h.type !== 'dir') throw badTar(entry, `the layer root can only be a directory, not a ${h.type}`);
      return this.dir('', h, entry);
    }
    this.ensureDirs(rel, entry, false);
    switch (h.type) {
      case 'dir':
        return this.dir(rel, h, entry);
      case 'file':
        return this.file(rel, h, entry, body);
      case 'symlink':
        return this.symlink(rel, h, entry);
      case 'link':
        return this.hardlink(rel, h, entry);
      case 'char':
      case 'block':
      case 'fifo':
        return this.node(rel, h, entry);
    }
  }

  private async whiteout(rel: string, base: string, h: TarHeader): Promise<void> {
    const entry = h.name;
    const dir = parentOf(rel);
    if (base === OPAQUE_MARKER) {
      this.ensureDirs(dir, entry, true);
      native.lsetxattr(this.abs(dir), 'trusted.overlay.opaque', Buffer.from('y'), 0);
      return;
    }
    if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) {
      // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless for overlay, skipped as docker does.
      logger().debug({ entry }, 'archive: skipping aufs metadata entry');
      return;
    }
    const name = base.slice(WHITEOUT_PREFIX.length);
    if (name === '' || name === '.' || name === '..') throw badTar(entry, `bad whiteout name ${JSON.stringify(name)}`);
    const target = joinRel(dir, name);
    this.ensureDirs(target, entry, false);
    const c = this.clear(target, false);
    if (c !== 'fresh') await c;
    const abs = this.abs(target);
    native.mknod(abs, S_IFCHR, 0, 0);
    this.known.set(target, 'other');
    if (this.isRoot) fs.lchownSync(abs, h.uid, h.gid);
    const [at, mt] = this.times(h);
    fs.lutimesSync(abs, at, mt);
  }

  private async dir(rel: string, h: TarHeader, entry: string): Promise<void> {
    const abs = this.abs(rel);
    let how = rel === '' ? 'merge' : this.clear(rel, true);
    if (typeof how !== 'string') how = await how;
    if (how === 'fresh') {
      fs.mkdirSync(abs, 0o700);
      this.known.set(rel, 'dir');
    }
    if (this.isRoot) fs.lchownSync(abs, h.uid, h.gid);
    fs.chmodSync(abs, h.mode);
    if (h.mode & 0o2000) this.setgidDirs.add(rel);
    else this.setgidDirs.delete(rel);
    this.setXattrs(abs, h, entry);
    this.dirTimes.set(rel, this.times(h));
  }

  private async file(rel: string, h: TarHeader, entry: string, body: Body): Promise<void> {
    const c = this.clear(rel, false);
    if (c !== 'fresh') await c;
    this.size += h.size;
    const abs = this.abs(rel);
    const chown = this.needChown(rel, h);
    const chmod = this.needChmod(h.mode, chown, true);
    const [at, mt] = this.times(h);
    this.known.set(rel, 'file');
    const finish = async (fd: number) => {
      if (chown) await f.fchown(fd, h.uid, h.gid);
      if (chmod) await f.fchmod(fd, h.mode);
      this.setXattrs(abs, h, entry); // after chown and data: both clear security.capability
      await f.futimes(fd, at, mt);
    };
    if (h.size <= SYNC_FILE) {
      // Small file: queued for the writer thread (writer.ts), or, without one (or with xattrs, set
      // here after chown), synchronous calls on this thread. Either way no threadpool round trip per
      // call: four or five of those per file (a futex wake-up and an epoll return each) cost more
      // than the syscalls themselves.
      const data = await body.all();
      if (this.writer && !h.xattrs) {
        const w = this.writer.add(rel, entry, abs, h.mode, data, h.uid, h.gid, chown, chmod, at, mt);
        if (w) await w;
        return;
      }
      const fd = fs.openSync(abs, CREATE_FLAGS, h.mode & 0o777);
      try {
        let off = 0;
        while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
        if (chown) fs.fchownSync(fd, h.uid, h.gid);
        if (chmod) fs.fchmodSync(fd, h.mode);
        this.setXattrs(abs, h, entry); // after chown and data: both clear security.capability
        fs.futimesSync(fd, at, mt);
      } finally {
        fs.closeSync(fd);
      }
      return;
    }
    if (h.size <= SMALL_FILE) {
      await this.room(h.size);
      const data = await body.all();
      this.schedule(rel, h.size, async () => {
        const fd = await f.open(abs, CREATE_FLAGS, h.mode & 0o777);
        try {
          if (data.length) await f.writeAll(fd, data);
          await finish(fd);
        } finally {
          await f.close(fd);
        }
      });
      return;
    }
    // Large file: written in line, chunk by chunk, while small jobs continue in the background.
    const fd = await f.open(abs, CREATE_FLAGS, h.mode & 0o777);
    try {
      let pend: Buffer[] = [];
      let pendLen = 0;
      for await (const c of body.chunks()) {
        pend.push(c);
        pendLen += c.length;
        if (pendLen >= 1 << 20) {
          await f.writeAll(fd, pend.length === 1 ? pend[0]! : Buffer.concat(pend, pendLen));
          pend = [];
          pendLen = 0;
        }
      }
      if (pendLen) await f.writeAll(fd, pend.length === 1 ? pend[0]! : Buffer.concat(pend, pendLen));
      await finish(fd);
    } finally {
      await f.close(fd);
    }
  }

  private async symlink(rel: string, h: TarHeader, entry: string): Promise<void> {
    if (h.linkname === '') throw badTar(entry, 'symlink with an empty target');
    const c = this.clear(rel, false);
    if (c !== 'fresh') await c;
    const abs = this.abs(rel);
    fs.symlinkSync(h.linkname, abs); // the target is data: never resolved by us
    this.known.set(rel, 'symlink');
    if (this.isRoot) fs.lchownSync(abs, h.uid, h.gid);
    this.setXattrs(abs, h, entry);
    const [at, mt] = this.times(h);
    fs.lutimesSync(abs, at, mt);
  }

  private async hardlink(rel: string, h: TarHeader, entry: string): Promise<void> {
    const target = normalizeName(h.linkname, entry, 'hardlink target');
    if (target === '') throw badTar(entry, 'hardlink to the layer root');
    if (target === rel) throw badTar(entry, 'hardlink to itself');
    const k = this.known.get(target);
    if (k === undefined) throw badTar(entry, `hardlink target ${JSON.stringify(h.linkname)} is not an earlier entry of this layer`);
    if (k === 'dir') throw badTar(entry, `hardlink target ${JSON.stringify(h.linkname)} is a directory`);
    // The target's ancestors are real dirs (it is in our map, and removals purge the map), but check anyway.
    this.ensureDirs(target, entry, false);
    if (this.writer?.holds(target)) this.writer.flush();
    const job = this.pending.get(target);
    if (job) await job;
    this.checkJobs();
    const c = this.clear(rel, false);
    if (c !== 'fresh') await c;
    fs.linkSync(this.abs(target), this.abs(rel));
    this.known.set(rel, k);
  }

  private async node(rel: string, h: TarHeader, entry: string): Promise<void> {
    const c = this.clear(rel, false);
    if (c !== 'fresh') await c;
    const abs = this.abs(rel);
    const type = h.type === 'char' ? S_IFCHR : h.type === 'block' ? S_IFBLK : S_IFIFO;
    native.mknod(abs, type | (h.mode & 0o777), h.devmajor, h.devminor);
    this.known.set(rel, 'other');
    if (this.isRoot) fs.lchownSync(abs, h.uid, h.gid);
    if (this.needChmod(h.mode, false, false)) fs.chmodSync(abs, h.mode);
    this.setXattrs(abs, h, entry);
    const [at, mt] = this.times(h);
    fs.lutimesSync(abs, at, mt);
  }

  /** Directory times last: writing into a dir changes its mtime. */
  finishDirs(): void {
    for (const [rel, [at, mt]] of this.dirTimes) {
      if (this.known.get(rel) === 'dir') fs.lutimesSync(this.abs(rel), at, mt);
    }
  }
}

function wrapEntryError(e: unknown, entry: string): unknown {
  if (e instanceof LayerfsError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err === 'object' && typeof err.code === 'string' && err.syscall) {
    const w = new Error(`tar entry ${JSON.stringify(entry)}: ${err.message}`, { cause: e }) as NodeJS.ErrnoException;
    w.code = err.code;
    return w;
  }
  return e;
}

function isZlibError(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof c === 'string' && c.startsWith('Z_');
}

// ---------- tar-stream: headers, bodies, feeding ----------

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  /** Name as stored (after PAX/GNU long-name overrides), not yet normalised. */
  name: string;
  type: EntryType;
  mode: number; // permission + setuid/setgid/sticky bits (07777)
  uid: number;
  gid: number;
  size: number; // body size in bytes (regular files and hardlinks; 0 for the rest)
  mtime: number; // seconds, may be fractional (PAX)
  atime?: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from SCHILY.xattr.* / LIBARCHIVE.xattr.*, raw bytes. */
  xattrs: Map<string, Buffer> | null;
}

/** An entry stream of tar-stream's extractor. */
type Entry = Extract extends AsyncIterable<infer S> ? S : never;

/** What tar-stream's extractor hands out (its .d.ts omits byteOffset, the null type, the null linkname). */
interface TsHeader extends Omit<Header, 'type' | 'linkname' | 'pax'> {
  type: Header['type'] | null;
  linkname: string | null;
  /** Stream offset of the first body byte, i.e. just after this entry's own 512-byte header block. */
  byteOffset: number;
  /** PAX records for this entry (global ones merged in by tar-stream), values per tarstream-pax.ts. */
  pax: Record<string, string> | null;
}

const BLOCK = 512;
/** Extended headers (PAX, GNU long names) before one entry: tar-stream caps each at 4 MiB, we cap the run. */
const MAX_EXT_RUN = 64 << 20;
const EMPTY = Buffer.alloc(0);

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function cstr(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = Math.min(off + len, b.length);
  while (end < max && b[end] !== 0) end++;
  return b.toString('utf8', off, end);
}

/** tar-stream's framing: a body follows unless the size is 0 or the entry is a directory (as GNU tar). */
function hasBody(th: TsHeader): boolean {
  return (th.size ?? 0) > 0 && th.type !== 'directory';
}

function paxNum(v: string, key: string, name: string, frac: boolean): number {
  const re = frac ? /^-?\d+(\.\d+)?$/ : /^\d+$/;
  if (!re.test(v)) throw badTar(name, `bad PAX ${key} value ${JSON.stringify(v)}`);
  const n = Number(v);
  if (!Number.isFinite(n) || (!frac && n > Number.MAX_SAFE_INTEGER)) throw badTar(name, `PAX ${key} out of range`);
  return n;
}

function headerNum(v: number | undefined, field: string, name: string): number {
  if (v === undefined || !Number.isSafeInteger(v)) throw badTar(name, `bad ${field} field in header (corrupt tar?)`);
  if (v < 0) throw badTar(name, `negative ${field} in header`);
  return v;
}

/**
 * tar-stream header -> ours. `raw` is the entry's own 512-byte header block (for the typeflag of
 * entries tar-stream has no type for, and the format magic, which we check ourselves because
 * tar-stream runs with allowUnknownFormat to accept old v7 headers as we always did).
 */
function toHeader(th: TsHeader, raw: Buffer): TarHeader {
  const name = th.name;
  // magic: "ustar\0" (POSIX), "ustar  \0" (GNU) or nothing (v7)
  const m5 = raw[262];
  const ustarish = raw[257] === 0x75 && raw[258] === 0x73 && raw[259] === 0x74 && raw[260] === 0x61 && raw[261] === 0x72;
  const ok = ustarish ? m5 === 0 || (m5 === 0x20 && raw[263] === 0x20 && raw[264] === 0) : isZero(raw.subarray(257, 265));
  if (!ok) throw badTar(name, 'unknown tar header format');
  let type: EntryType;
  switch (th.type) {
    case 'file':
    case 'contiguous-file':
      type = 'file';
      break;
    case 'link':
      type = 'link';
      break;
    case 'symlink':
      type = 'symlink';
      break;
    case 'character-device':
      type = 'char';
      break;
    case 'block-device':
      type = 'block';
      break;
    case 'directory':
      type = 'dir';
      break;
    case 'fifo':
      type = 'fifo';
      break;
    default: {
      const flag = String.fromCharCode(raw[156]!);
      if (flag === 'S') throw badTar(name, 'GNU sparse files are not supported');
      throw badTar(name, `unsupported tar entry type ${JSON.stringify(flag)}`);
    }
  }
  if (name.includes('\0')) throw badTar(name, 'entry name contains a NUL byte');
  const linkname = th.linkname ?? '';
  if (linkname.includes('\0')) throw badTar(name, 'link target contains a NUL byte');
  const mtimeMs = th.mtime?.getTime();
  if (mtimeMs === undefined || !Number.isFinite(mtimeMs)) throw badTar(name, 'bad mtime field in header (corrupt tar?)');
  const dev = type === 'char' || type === 'block';
  const h: TarHeader = {
    name,
    type,
    mode: headerNum(th.mode, 'mode', name) & 0o7777,
    uid: headerNum(th.uid, 'uid', name),
    gid: headerNum(th.gid, 'gid', name),
    size: type === 'file' || type === 'link' ? headerNum(th.size, 'size', name) : 0,
    mtime: mtimeMs / 1000,
    linkname,
    devmajor: dev ? headerNum(th.devmajor, 'devmajor', name) : 0,
    devminor: dev ? headerNum(th.devminor, 'devminor', name) : 0,
    xattrs: null,
  };
  const pax = th.pax;
  if (pax) {
    // path, linkpath and size were applied by tar-stream; the rest is ours.
    for (const k of Object.keys(pax)) {
      const v = pax[k]!;
      switch (k) {
        case 'size':
          paxNum(v, k, name, false); // tar-stream used parseInt(); refuse what that would have glossed over
          break;
        case 'uid':
          h.uid = paxNum(v, k, name, false);
          break;
        case 'gid':
          h.gid = paxNum(v, k, name, false);
          break;
        case 'mtime':
          h.mtime = paxNum(v, k, name, true);
          break;
        case 'atime':
          h.atime = paxNum(v, k, name, true);
          break;
        default:
          if (k.startsWith(XATTR_PAX_PREFIX)) {
            (h.xattrs ??= new Map()).set(k.slice(XATTR_PAX_PREFIX.length), xattrBytes(v));
          } else if (k.startsWith('LIBARCHIVE.xattr.')) {
            let xname: string;
            try {
              xname = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
            } catch {
              throw badTar(name, `bad LIBARCHIVE.xattr key ${JSON.stringify(k)}`);
            }
            (h.xattrs ??= new Map()).set(xname, Buffer.from(v, 'base64'));
          } else if (k.startsWith('GNU.sparse.')) {
            throw badTar(name, 'GNU sparse files are not supported');
          }
      }
    }
  }
  return h;
}

/** Translate tar-stream's plain Errors into EBADTAR errors naming the entry. */
function tarStreamError(e: unknown, entry: string, where: string): unknown {
  if (e instanceof LayerfsError || !(e instanceof Error)) return e;
  if ((e as NodeJS.ErrnoException).syscall) return e; // an I/O error of the source: as is
  const m = e.message;
  let why: string;
  if (m === 'Unexpected end of data') why = `truncated tar: stream ended ${where}`;
  else if (m.startsWith('Invalid tar header. Maybe')) why = 'header checksum mismatch (corrupt tar, or not a tar?)';
  else if (m === 'Header exceeds max size') why = 'extended header (PAX or GNU long name) larger than 4 MiB';
  else if (m === 'Invalid header') why = 'bad size field in header (corrupt tar?)';
  else why = `corrupt tar: ${m}`;
  const err = badTar(entry, why);
  (err as { cause?: unknown }).cause = e;
  return err;
}

/**
 * Moves the tar byte stream into tar-stream's extractor and keeps a small window of what it wrote,
 * from `keepFrom` on: the header position after the current entry. That lets the applier look at
 * the block where the next header starts, which tar-stream does not tell: it skips zero blocks and
 * would read on past the end-of-archive marker, and it accepts a stream that simply stops between
 * entries. Backpressure comes from the extractor, except that ensure() may push a little further.
 */
class Feed {
  pos = 0; // bytes written to the extractor
  private win: Buffer[] = [];
  private winStart = 0; // stream offset of win[0][0]
  private keepFrom = 0;
  eof = false;
  err: unknown = null;
  private stopped = false;
  private want = 0;
  private wakePump: (() => void) | null = null;
  private waiters: (() => void)[] = [];
  readonly done: Promise<void>;

  constructor(
    private readonly src: AsyncIterator<Buffer>,
    private readonly ex: Extract,
  ) {
    this.done = this.pump();
    this.done.catch(() => undefined); // surfaced through ensure()/the extractor/finish()
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }

  private keep(c: Buffer): void {
    const start = this.pos;
    if (start + c.length <= this.keepFrom) return;
    if (start < this.keepFrom) c = c.subarray(this.keepFrom - start);
    if (this.win.length === 0) this.winStart = start + (start < this.keepFrom ? this.keepFrom - start : 0);
    this.win.push(c);
  }

  /** Forget window bytes before p (a header position not reached yet, or reached). */
  setKeepFrom(p: number): void {
    this.keepFrom = p;
    while (this.win.length && this.winStart + this.win[0]!.length <= p) {
      this.winStart += this.win[0]!.length;
      this.win.shift();
    }
    if (this.win.length && this.winStart < p) {
      this.win[0] = this.win[0]!.subarray(p - this.winStart);
      this.winStart = p;
    }
  }

  /** Bytes [at, at+n) as far as written so far (shorter at the end of the stream). at >= keepFrom. */
  peek(at: number, n: number): Buffer {
    const out: Buffer[] = [];
    let off = this.winStart;
    let need = n;
    for (const c of this.win) {
      if (need === 0) break;
      const end = off + c.length;
      if (end > at) {
        const s = Math.max(0, at - off);
        const piece = c.subarray(s, Math.min(c.length, s + need));
        out.push(piece);
        need -= piece.length;
      }
      off = end;
    }
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  /** Make sure bytes up to `end` are written (and in the window), unless the stream ends first. */
  ensure(end: number): Promise<void> | undefined {
    if (this.err) throw this.err;
    if (this.pos >= end || this.eof) return undefined;
    return (async () => {
      while (this.pos < end && !this.eof) {
        if (this.err) throw this.err;
        if (this.want < end) {
          this.want = end;
          this.wakePump?.();
        }
        await new Promise<void>((r) => this.waiters.push(r));
      }
      if (this.err) throw this.err;
    })();
  }

  private writable(): Promise<void> | undefined {
    if (this.stopped || this.pos < this.want || this.ex.destroyed) return undefined;
    return new Promise<void>((resolve) => {
      const go = () => {
        this.ex.off('drain', go);
        this.ex.off('close', go);
        this.wakePump = null;
        resolve();
      };
      this.ex.on('drain', go);
      this.ex.on('close', go);
      this.wakePump = go;
    });
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        const r = await this.src.next();
        if (r.done) break;
        const c = r.value;
        if (this.stopped || c.length === 0) continue;
        this.keep(c);
        this.pos += c.length;
        if (this.pos - this.keepFrom > MAX_EXT_RUN) {
          throw new LayerfsError('EBADTAR', 'layer', `more than ${MAX_EXT_RUN >> 20} MiB of extended headers before one entry`);
        }
        const ok = this.ex.write(c);
        this.notify();
        if (!ok) await this.writable();
      }
      this.eof = true;
      if (!this.stopped) this.ex.end(undefined);
    } catch (e) {
      this.err = e;
      this.ex.destroy(e as Error);
      throw e;
    } finally {
      this.notify();
    }
  }

  /** The archive is over: stop feeding the extractor, read the rest of the stream (for the digests). */
  async finish(): Promise<void> {
    this.stopped = true;
    this.win = [];
    this.wakePump?.();
    this.ex.destroy();
    await this.done;
  }
}

/** The body of the current entry, read from tar-stream's entry stream exactly once (or skipped). */
class Body {
  private used = false;
  constructor(
    private readonly st: Entry,
    private readonly present: boolean,
    private readonly entry: string,
  ) {}

  private collect(keep: boolean): Promise<Buffer> {
    this.used = true;
    if (!this.present) return Promise.resolve(EMPTY);
    const st = this.st;
    return new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      let n = 0;
      let settled = false;
      st.on('data', (d: unknown) => {
        if (!keep) return;
        const c = d as Buffer;
        parts.push(c);
        n += c.length;
      });
      st.on('end', () => {
        settled = true;
        resolve(parts.length === 1 ? parts[0]! : Buffer.concat(parts, n));
      });
      st.on('error', (e: unknown) => {
        settled = true;
        reject(tarStreamError(e, this.entry, 'inside the entry body'));
      });
      st.on('close', () => {
        if (!settled) reject(badTar(this.entry, 'truncated tar: stream ended inside the entry body'));
      });
    });
  }

  /** The whole body (call only for bodies of bounded size). */
  all(): Promise<Buffer> {
    return this.collect(true);
  }

  /** The body piece by piece, as tar-stream hands it out (no copies). */
  async *chunks(): AsyncGenerator<Buffer> {
    this.used = true;
    if (!this.present) return;
    try {
      for await (const c of this.st as AsyncIterable<Buffer>) yield c;
    } catch (e) {
      throw tarStreamError(e, this.entry, 'inside the entry body');
    }
  }

  /** Skip whatever the applier did not read. */
  finish(): Promise<unknown> | undefined {
    return this.used || !this.present ? undefined : this.collect(false);
  }
}

export async function applyLayer(
  input: NodeJS.ReadableStream | Readable,
  dir: string,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  checkDigestArg(opts.expectDiffDigest, 'expected diff digest');
  checkDigestArg(opts.expectCompressedDigest, 'expected compressed digest');
  const root = path.resolve(dir);
  const src: Readable = input instanceof Readable ? input : new Readable().wrap(input);

  const compHash = streamHash();
  let compSize = 0;
  let diffHash: StreamHash = compHash;
  let diffSize = 0;
  let gunzip: zlib.Gunzip | null = null;

  const rawIt = src[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  async function pullRaw(): Promise<Buffer | null> {
    const r = await rawIt.next();
    if (r.done) return null;
    const c = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    const w = compHash.update(c);
    if (w) await w;
    compSize += c.length;
    return c;
  }

  const applier = new Applier(root);
  // allowUnknownFormat: old v7 headers (no magic) are accepted as before; toHeader() checks the magic.
  const ex = extract({ allowUnknownFormat: true } as Parameters<typeof extract>[0]);
  try {
    await applier.init();
    // Sniff the format from the first bytes.
    const head: Buffer[] = [];
    let headLen = 0;
    while (headLen < 4) {
      const c = await pullRaw();
      if (c === null) break;
      head.push(c);
      headLen += c.length;
    }
    const first = Buffer.concat(head);
    if (first.length >= 4 && first[0] === 0x28 && first[1] === 0xb5 && first[2] === 0x2f && first[3] === 0xfd) {
      throw new LayerfsError('EBADTAR', 'layer', 'zstd-compressed layers are not supported (zstd not supported); use gzip or an uncompressed tar');
    }
    async function* rawChunks(): AsyncGenerator<Buffer> {
      if (first.length) yield first;
      for (let c = await pullRaw(); c !== null; c = await pullRaw()) yield c;
    }
    let tarChunks: AsyncIterator<Buffer>;
    if (first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b) {
      diffHash = streamHash();
      const gz = zlib.createGunzip({ chunkSize: 256 << 10 });
      gunzip = gz;
      pipeline(Readable.from(rawChunks(), { objectMode: false }), gz, () => undefined);
      const dh = diffHash;
      tarChunks = (async function* () {
        try {
          for await (const c of gz as AsyncIterable<Buffer>) {
            const w = dh.update(c);
            if (w) await w;
            diffSize += c.length;
            yield c;
          }
        } catch (e) {
          if (isZlibError(e)) throw new LayerfsError('EBADTAR', 'layer', `corrupt gzip stream: ${(e as Error).message}`, { cause: e });
          throw e;
        }
      })();
    } else {
      tarChunks = (async function* () {
        for await (const c of rawChunks()) {
          diffSize += c.length;
          yield c;
        }
      })();
    }

    const fd = new Feed(tarChunks, ex);
    const entries = ex[Symbol.asyncIterator]();
    let hdrPos = 0; // where the next header block starts
    let last = ''; // name of the last entry, for messages
    const nameAt = (at: number) => {
      const b = fd.peek(at, 100);
      return b.length && b[0] !== 0 ? cstr(b, 0, 100) : last || '(start of archive)';
    };
    for (;;) {
      // End of archive: a zero block where a header would start. tar-stream would skip it and read
      // on, and it does not fail when the stream stops between entries, so we look first.
      const w = fd.ensure(hdrPos + 2 * BLOCK);
      if (w) await w;
      const blk = fd.peek(hdrPos, BLOCK);
      if (blk.length === 0) throw badTar(last || '(start of archive)', 'truncated tar: stream ended without the end-of-archive marker');
      if (blk.length < BLOCK) throw badTar(nameAt(hdrPos), 'truncated tar: stream ended inside a header block');
      if (isZero(blk)) {
        // A second zero block should follow; tolerate its absence at EOF as GNU tar does.
        const b2 = fd.peek(hdrPos + BLOCK, BLOCK);
        if (b2.length === BLOCK && !isZero(b2)) throw badTar(last || '(start of archive)', 'garbage after a zero block (corrupt tar?)');
        break;
      }
      let r: IteratorResult<Entry>;
      try {
        r = await entries.next();
      } catch (e) {
        throw tarStreamError(fd.err ?? e, nameAt(hdrPos), 'inside a header');
      }
      if (r.done) {
        throw badTar(nameAt(hdrPos), 'truncated tar: stream ended after an extended header, without the entry it belongs to');
      }
      const st = r.value;
      const th = st.header as TsHeader;
      const raw = fd.peek(th.byteOffset - BLOCK, BLOCK);
      // Extended headers (PAX, GNU long names) tar-stream read before this entry: it skips zero
      // blocks among them, where GNU tar and Go's archive/tar see the end of the archive.
      for (let p = hdrPos; p < th.byteOffset - BLOCK; ) {
        const b = fd.peek(p, BLOCK);
        const d = b.length === BLOCK && !isZero(b) ? decodeHeaderBlock(b) : null;
        if (d === null) throw badTar(th.name, 'end-of-archive marker between an extended header and its entry');
        p += BLOCK + d.size + ((BLOCK - (d.size % BLOCK)) % BLOCK);
      }
      const present = hasBody(th);
      hdrPos = th.byteOffset + (present ? th.size! + ((BLOCK - (th.size! % BLOCK)) % BLOCK) : 0);
      fd.setKeepFrom(hdrPos);
      last = th.name;
      const body = new Body(st, present, th.name);
      try {
        if (raw.length !== BLOCK) throw new Error(`layerfs: lost the header block of ${JSON.stringify(th.name)} (tar-stream framing changed?)`);
        await applier.apply(toHeader(th, raw), body);
        const f = body.finish();
        if (f) await f;
      } catch (e) {
        throw wrapEntryError(e, th.name);
      }
    }
    // The diff digest covers every byte of the stream, including what follows the end marker.
    await fd.finish();
    await applier.drain();
    applier.close();
    applier.finishDirs();

    const diffDigest = await diffHash.digest();
    const compressedDigest = diffHash === compHash ? diffDigest : await compHash.digest();
    if (opts.expectCompressedDigest && opts.expectCompressedDigest !== compressedDigest) {
      throw new LayerfsError('EDIGEST', 'layer', `compressed digest mismatch: expected ${opts.expectCompressedDigest}, got ${compressedDigest}`);
    }
    if (opts.expectDiffDigest && opts.expectDiffDigest !== diffDigest) {
      throw new LayerfsError('EDIGEST', 'layer', `diff digest mismatch: expected ${opts.expectDiffDigest}, got ${diffDigest}`);
    }
    return { diffDigest, compressedDigest, size: applier.size, compressedSize: compSize };
  } catch (e) {
    ex.destroy();
    compHash.abort();
    diffHash.abort();
    gunzip?.destroy();
    src.destroy();
    await applier.settle();
    applier.close();
    throw e;
  }
}
