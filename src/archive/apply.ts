/**
 * applyLayer: stream one layer tar (plain, gzip or zstd) into a directory in kernel overlay format.
 *
 * Safety model: the target dir belongs to us alone while we apply (the store gives us a fresh temp
 * dir). We keep an in-memory map of every path we created and its kind; every parent of every entry
 * must be a real directory in that map (or, if the dir was not empty to begin with, one that lstat
 * shows to be a directory). A parent that is a symlink is refused, so no write ever goes through a
 * link; final components are created with calls that never follow links (O_EXCL|O_NOFOLLOW, mkdir,
 * symlink, link, mknod, l*xattr, lchown, lutimes).
 *
 * Parsing: our own reader (tarparse.ts): names are byte strings (latin1, one char per byte) and go
 * to the kernel as Buffers when they are not ASCII; sparse members are written segment by segment.
 * Decompression: compress.ts (zlib for gzip, the zstd program for zstd).
 *
 * Speed: structural operations run in entry order; regular-file bodies up to SMALL_FILE bytes are
 * buffered and written by up to MAX_JOBS concurrent jobs while the stream moves on. Anything that
 * removes or replaces an existing path first waits for all jobs (rare in real layers).
 */
import fs from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, pipeline, type Duplex } from 'node:stream';
import { isErrno, LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { native } from '../common/native.js';
import * as f from './fsops.js';
import { streamHash, type StreamHash } from './hasher.js';
import { FileWriter } from './writer.js';
import { baseOf, joinRel, normalizeName, parentOf } from './paths.js';
import { badEntry as badTar, Body, ByteSource, displayName, isAscii, TarParser, type TarHeader } from './tarparse.js';
import { decompressor, sniffCompression, type Compression } from './compress.js';

export interface ApplyOptions {
  /** 'sha256:<hex>' of the uncompressed tar stream; mismatch -> LayerfsError 'EDIGEST' */
  expectDiffDigest?: string;
  /** 'sha256:<hex>' of the bytes as given (compressed or not); mismatch -> 'EDIGEST' */
  expectCompressedDigest?: string;
  /** What errors name the layer by, e.g. `layer sha256:<blob digest>` (default: `layer`). */
  label?: string;
  /** Called with the count of input bytes read so far (progress). */
  onBytes?: (n: number) => void;
}
export interface ApplyResult {
  diffDigest: string;
  compressedDigest: string;
  /** sum of regular file sizes */
  size: number;
  compressedSize: number;
  /** What the input was compressed with (detected from its first bytes). */
  compression: Compression;
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

function timeArg(t: number): number {
  return (t < 0 ? new Date(t * 1000) : t) as number;
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
    this.rootBuf = Buffer.from(root);
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

  private readonly rootBuf: Buffer;

  /** rel is a byte string (tarparse.ts): non-ASCII names go to the kernel as their bytes. */
  private abs(rel: string): string {
    if (rel === '') return this.root;
    if (isAscii(rel)) return `${this.root}/${rel}`;
    return Buffer.concat([this.rootBuf, Buffer.from('/' + rel, 'latin1')]) as unknown as string; // fs and the addon take Buffers
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
      if (k === 'symlink') throw badTar(entry, `parent ${JSON.stringify(displayName(cur))} is a symlink; refusing to write through it`);
      throw badTar(entry, `parent ${JSON.stringify(displayName(cur))} is not a directory`);
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

  /** Node's fs replaces a negative number of seconds by "now": times before 1970 go as Dates. */
  private times(h: TarHeader): [number, number] {
    return [timeArg(h.atime ?? h.mtime), timeArg(h.mtime)];
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
    if (name === '' || name === '.' || name === '..') throw badTar(entry, `bad whiteout name ${JSON.stringify(displayName(name))}`);
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
    if (h.sparse) return this.sparseFile(abs, h, body, finish);
    if (h.size <= SYNC_FILE) {
      // Small file: queued for the writer thread (writer.ts), or, without one (or with xattrs, set
      // here after chown), synchronous calls on this thread. Either way no threadpool round trip per
      // call: four or five of those per file (a futex wake-up and an epoll return each) cost more
      // than the syscalls themselves.
      const data = await body.all();
      if (this.writer && !h.xattrs) {
        const w = this.writer.add(rel, entry, abs, h.mode, data, h.uid, h.gid, chown, chmod, h.atime ?? h.mtime, h.mtime);
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

  /** A sparse member: each data segment written at its offset, the holes left unwritten, then the full size. */
  private async sparseFile(abs: string, h: TarHeader, body: Body, finish: (fd: number) => Promise<void>): Promise<void> {
    const fd = await f.open(abs, CREATE_FLAGS, h.mode & 0o777);
    try {
      for (const [off, len] of h.sparse!) {
        let at = off;
        for await (const c of body.chunks(len)) {
          await f.writeAt(fd, c, at);
          at += c.length;
        }
      }
      await f.ftruncate(fd, h.size);
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
    fs.symlinkSync((isAscii(h.linkname) ? h.linkname : Buffer.from(h.linkname, 'latin1')) as string, abs); // the target is data: never resolved by us
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
    if (k === undefined) throw badTar(entry, `hardlink target ${JSON.stringify(displayName(h.linkname))} is not an earlier entry of this layer`);
    if (k === 'dir') throw badTar(entry, `hardlink target ${JSON.stringify(displayName(h.linkname))} is a directory`);
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
    const w = new Error(`tar entry ${JSON.stringify(displayName(entry))}: ${err.message}`, { cause: e }) as NodeJS.ErrnoException;
    w.code = err.code;
    return w;
  }
  return e;
}

function isZlibError(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof c === 'string' && c.startsWith('Z_');
}

/** An EBADTAR error about an entry, with the layer it came from in front (when known). */
function inLayer(e: unknown, label: string | undefined): unknown {
  if (!label || !(e instanceof LayerfsError) || e.code !== 'EBADTAR' || e.what.startsWith(label)) return e;
  const why = e.message.startsWith(e.what + ': ') ? e.message.slice(e.what.length + 2) : e.message;
  return new LayerfsError('EBADTAR', e.what === 'layer' ? label : `${label}: ${e.what}`, why, { cause: e });
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
  const label = opts.label;
  const what = label ?? 'layer';

  const compHash = streamHash();
  let compSize = 0;
  let diffHash: StreamHash = compHash;
  let diffSize = 0;
  let dec: Duplex | null = null;
  let compression: Compression = 'none';

  const rawIt = src[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  async function pullRaw(): Promise<Buffer | null> {
    const r = await rawIt.next();
    if (r.done) return null;
    const c = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    const w = compHash.update(c);
    if (w) await w;
    compSize += c.length;
    opts.onBytes?.(compSize);
    return c;
  }

  const applier = new Applier(root);
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
    compression = sniffCompression(first);
    async function* rawChunks(): AsyncGenerator<Buffer> {
      if (first.length) yield first;
      for (let c = await pullRaw(); c !== null; c = await pullRaw()) yield c;
    }
    let tarChunks: AsyncIterator<Buffer>;
    if (compression !== 'none') {
      diffHash = streamHash();
      const d = decompressor(compression, what);
      dec = d;
      pipeline(Readable.from(rawChunks(), { objectMode: false }), d, () => undefined);
      const dh = diffHash;
      const kind = compression;
      tarChunks = (async function* () {
        try {
          for await (const c of d as AsyncIterable<Buffer>) {
            const w = dh.update(c);
            if (w) await w;
            diffSize += c.length;
            yield c;
          }
        } catch (e) {
          if (isZlibError(e)) throw new LayerfsError('EBADTAR', what, `corrupt ${kind} stream: ${(e as Error).message}`, { cause: e });
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

    const bs = new ByteSource(tarChunks);
    const parser = new TarParser(bs);
    for (;;) {
      const e = await parser.next();
      if (e === null) break;
      try {
        await applier.apply(e.header, e.body);
      } catch (err) {
        throw wrapEntryError(err, e.header.name);
      }
    }
    // The diff digest covers every byte of the stream, including what follows the end marker.
    await bs.drain();
    await applier.drain();
    applier.close();
    applier.finishDirs();

    const diffDigest = await diffHash.digest();
    const compressedDigest = diffHash === compHash ? diffDigest : await compHash.digest();
    if (opts.expectCompressedDigest && opts.expectCompressedDigest !== compressedDigest) {
      throw new LayerfsError('EDIGEST', what, `compressed digest mismatch: expected ${opts.expectCompressedDigest}, got ${compressedDigest}`);
    }
    if (opts.expectDiffDigest && opts.expectDiffDigest !== diffDigest) {
      throw new LayerfsError('EDIGEST', what, `diff digest mismatch: expected ${opts.expectDiffDigest}, got ${diffDigest}`);
    }
    void diffSize;
    return { diffDigest, compressedDigest, size: applier.size, compressedSize: compSize, compression };
  } catch (e) {
    compHash.abort();
    diffHash.abort();
    dec?.destroy();
    src.destroy();
    await applier.settle();
    applier.close();
    throw inLayer(e, label);
  }
}
