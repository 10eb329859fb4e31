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
 * Speed: structural operations run in entry order; regular-file bodies up to SMALL_FILE bytes are
 * buffered and written by up to MAX_JOBS concurrent jobs while the stream moves on. Anything that
 * removes or replaces an existing path first waits for all jobs (rare in real layers).
 */
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, pipeline } from 'node:stream';
import zlib from 'node:zlib';
import { badTar, isErrno, LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { native } from '../common/native.js';
import * as f from './fsops.js';
import { baseOf, joinRel, normalizeName, parentOf } from './paths.js';
import { ByteReader, TarParser, type TarHeader } from './tarparse.js';

export interface ApplyOptions {
  expectDiffDigest?: string;
  expectCompressedDigest?: string;
}
export interface ApplyResult {
  diffDigest: string;
  compressedDigest: string;
  size: number;
  compressedSize: number;
}

const SMALL_FILE = 1 << 20;
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

  constructor(private readonly root: string) {}

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
  }

  private async room(bytes: number): Promise<void> {
    while (this.inflight >= MAX_JOBS || (this.inflight > 0 && this.inflightBytes + bytes > MAX_JOB_BYTES)) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
    this.checkJobs();
  }

  /** Wait for every background job; rethrow the first failure. */
  async drain(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending.values()]);
    this.checkJobs();
  }

  /** Wait for every background job, ignoring failures (error path). */
  async settle(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending.values()]);
  }

  // ---------- path bookkeeping ----------

  private async kindOf(rel: string): Promise<Kind | undefined> {
    const k = this.known.get(rel);
    if (k !== undefined || this.rootEmpty) return k;
    try {
      const st = await f.lstat(this.abs(rel));
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
  private async ensureDirs(rel: string, entry: string, includeSelf: boolean): Promise<void> {
    const dir = includeSelf ? rel : parentOf(rel);
    if (dir === this.lastParentOk || dir === '') return;
    const parts = dir.split('/');
    let cur = '';
    for (const part of parts) {
      cur = joinRel(cur, part);
      const k = await this.kindOf(cur);
      if (k === 'dir') continue;
      if (k === undefined) {
        await f.mkdir(this.abs(cur), 0o755);
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
  private async clear(rel: string, newIsDir: boolean): Promise<'merge' | 'fresh'> {
    const k = await this.kindOf(rel);
    if (k === undefined) return 'fresh';
    if (k === 'dir' && newIsDir) return 'merge';
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

  async apply(h: TarHeader, parser: TarParser): Promise<void> {
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
    await this.ensureDirs(rel, entry, false);
    switch (h.type) {
      case 'dir':
        return this.dir(rel, h, entry);
      case 'file':
        return this.file(rel, h, entry, parser);
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
      await this.ensureDirs(dir, entry, true);
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
    await this.ensureDirs(target, entry, false);
    await this.clear(target, false);
    const abs = this.abs(target);
    native.mknod(abs, S_IFCHR, 0, 0);
    this.known.set(target, 'other');
    if (this.isRoot) await f.lchown(abs, h.uid, h.gid);
    const [at, mt] = this.times(h);
    await f.lutimes(abs, at, mt);
  }

  private async dir(rel: string, h: TarHeader, entry: string): Promise<void> {
    const abs = this.abs(rel);
    const how = rel === '' ? 'merge' : await this.clear(rel, true);
    if (how === 'fresh') {
      await f.mkdir(abs, 0o700);
      this.known.set(rel, 'dir');
    }
    if (this.isRoot) await f.lchown(abs, h.uid, h.gid);
    await f.chmod(abs, h.mode);
    if (h.mode & 0o2000) this.setgidDirs.add(rel);
    else this.setgidDirs.delete(rel);
    this.setXattrs(abs, h, entry);
    this.dirTimes.set(rel, this.times(h));
  }

  private async file(rel: string, h: TarHeader, entry: string, parser: TarParser): Promise<void> {
    await this.clear(rel, false);
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
    if (h.size <= SMALL_FILE) {
      await this.room(h.size);
      const body = await parser.body();
      this.schedule(rel, h.size, async () => {
        const fd = await f.open(abs, CREATE_FLAGS, h.mode & 0o777);
        try {
          if (body.length) await f.writeAll(fd, body);
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
      for (let c = await parser.bodyChunk(); c !== null; c = await parser.bodyChunk()) {
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
    await this.clear(rel, false);
    const abs = this.abs(rel);
    await f.symlink(h.linkname, abs); // the target is data: never resolved by us
    this.known.set(rel, 'symlink');
    if (this.isRoot) await f.lchown(abs, h.uid, h.gid);
    this.setXattrs(abs, h, entry);
    const [at, mt] = this.times(h);
    await f.lutimes(abs, at, mt);
  }

  private async hardlink(rel: string, h: TarHeader, entry: string): Promise<void> {
    const target = normalizeName(h.linkname, entry, 'hardlink target');
    if (target === '') throw badTar(entry, 'hardlink to the layer root');
    if (target === rel) throw badTar(entry, 'hardlink to itself');
    const k = this.known.get(target);
    if (k === undefined) throw badTar(entry, `hardlink target ${JSON.stringify(h.linkname)} is not an earlier entry of this layer`);
    if (k === 'dir') throw badTar(entry, `hardlink target ${JSON.stringify(h.linkname)} is a directory`);
    // The target's ancestors are real dirs (it is in our map, and removals purge the map), but check anyway.
    await this.ensureDirs(target, entry, false);
    const job = this.pending.get(target);
    if (job) await job;
    this.checkJobs();
    await this.clear(rel, false);
    await f.link(this.abs(target), this.abs(rel));
    this.known.set(rel, k);
  }

  private async node(rel: string, h: TarHeader, entry: string): Promise<void> {
    await this.clear(rel, false);
    const abs = this.abs(rel);
    const type = h.type === 'char' ? S_IFCHR : h.type === 'block' ? S_IFBLK : S_IFIFO;
    native.mknod(abs, type | (h.mode & 0o777), h.devmajor, h.devminor);
    this.known.set(rel, 'other');
    if (this.isRoot) await f.lchown(abs, h.uid, h.gid);
    if (this.needChmod(h.mode, false, false)) await f.chmod(abs, h.mode);
    this.setXattrs(abs, h, entry);
    const [at, mt] = this.times(h);
    await f.lutimes(abs, at, mt);
  }

  /** Directory times last: writing into a dir changes its mtime. */
  async finishDirs(): Promise<void> {
    const list = [...this.dirTimes];
    const N = 16;
    for (let i = 0; i < list.length; i += N) {
      await Promise.all(
        list.slice(i, i + N).map(([rel, [at, mt]]) => (this.known.get(rel) === 'dir' ? f.lutimes(this.abs(rel), at, mt) : undefined)),
      );
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

export async function applyLayer(
  input: NodeJS.ReadableStream | Readable,
  dir: string,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  checkDigestArg(opts.expectDiffDigest, 'expected diff digest');
  checkDigestArg(opts.expectCompressedDigest, 'expected compressed digest');
  const root = path.resolve(dir);
  const src: Readable = input instanceof Readable ? input : new Readable().wrap(input);

  const compHash = createHash('sha256');
  let compSize = 0;
  let diffHash: Hash = compHash;
  let diffSize = 0;
  let gunzip: zlib.Gunzip | null = null;

  const rawIt = src[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  async function pullRaw(): Promise<Buffer | null> {
    const r = await rawIt.next();
    if (r.done) return null;
    const c = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    compHash.update(c);
    compSize += c.length;
    return c;
  }

  const applier = new Applier(root);
  let parser: TarParser | null = null;
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
      diffHash = createHash('sha256');
      const gz = zlib.createGunzip({ chunkSize: 256 << 10 });
      gunzip = gz;
      pipeline(Readable.from(rawChunks(), { objectMode: false }), gz, () => undefined);
      const dh = diffHash;
      tarChunks = (async function* () {
        try {
          for await (const c of gz as AsyncIterable<Buffer>) {
            dh.update(c);
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

    parser = new TarParser(new ByteReader(tarChunks));
    for (let h = await parser.next(); h !== null; h = await parser.next()) {
      try {
        await applier.apply(h, parser);
      } catch (e) {
        throw wrapEntryError(e, h.name);
      }
    }
    // The diff digest covers every byte of the stream, including what follows the end marker.
    await parser.reader.drain();
    await applier.drain();
    await applier.finishDirs();

    const diffDigest = 'sha256:' + diffHash.digest('hex');
    const compressedDigest = diffHash === compHash ? diffDigest : 'sha256:' + compHash.digest('hex');
    if (opts.expectCompressedDigest && opts.expectCompressedDigest !== compressedDigest) {
      throw new LayerfsError('EDIGEST', 'layer', `compressed digest mismatch: expected ${opts.expectCompressedDigest}, got ${compressedDigest}`);
    }
    if (opts.expectDiffDigest && opts.expectDiffDigest !== diffDigest) {
      throw new LayerfsError('EDIGEST', 'layer', `diff digest mismatch: expected ${opts.expectDiffDigest}, got ${diffDigest}`);
    }
    return { diffDigest, compressedDigest, size: applier.size, compressedSize: compSize };
  } catch (e) {
    gunzip?.destroy();
    src.destroy();
    await applier.settle();
    throw e;
  }
}
