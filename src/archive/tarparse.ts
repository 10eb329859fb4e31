/**
 * Our own streaming tar reader (replaces tar-stream's extractor in the applier).
 *
 * Why our own: tar-stream decodes names as UTF-8 (a Linux name is bytes: `bad-\xff.txt` became
 * U+FFFD), reads a negative base-256 size as 0, knows neither GNU sparse members (type `S`, with
 * extension blocks outside the size field) nor PAX sparse, and skips zero blocks where GNU tar
 * sees the end of the archive. Here every field is checked as GNU tar checks it, and every name
 * (entry name, link target, PAX path/linkpath, GNU long names, GNU.sparse.name) is kept as its
 * bytes, in a "byte string": one JS char per byte (latin1). `displayName` turns one into text for
 * messages (UTF-8 where valid, `\xNN` escapes for the rest and for control characters).
 *
 * Formats: v7, ustar (prefix + name), GNU (`ustar  \0`, no prefix; `L`/`K` long names, `S` old
 * sparse), PAX (`x` per entry, `g` global, merged into every later entry), GNU sparse PAX 0.0
 * (repeated GNU.sparse.offset/numbytes), 0.1 (GNU.sparse.map) and 1.0 (map at the head of the
 * data).
 */
import { LayerfsError } from '../common/errors.js';

export const BLOCK = 512;
/** Each extended header (PAX, GNU long name) at most this big; and all of those before one entry together. */
const MAX_EXT = 4 << 20;
const MAX_EXT_RUN = 64 << 20;
const MAX_SPARSE_SEGMENTS = 1 << 20;

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  /** Name as stored (after PAX/GNU long-name overrides), a byte string (latin1), not yet normalised. */
  name: string;
  type: EntryType;
  mode: number; // permission + setuid/setgid/sticky bits (07777)
  uid: number;
  gid: number;
  /** File size: for a sparse file its full (apparent) size; for hardlinks the stored size (0 normally). */
  size: number;
  mtime: number; // seconds, may be fractional (PAX)
  atime?: number;
  /** Byte string. */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from SCHILY.xattr.* / LIBARCHIVE.xattr.*, raw bytes. */
  xattrs: Map<string, Buffer> | null;
  /** Sparse file: the data segments [offset, length], in file order; the body holds their bytes back to back. */
  sparse?: [number, number][];
}

/** Text for messages: valid UTF-8 as is, other bytes and control chars as \xNN. */
export function displayName(bytes: string): string {
  let ascii = true;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes.charCodeAt(i);
    if (c < 0x20 || c >= 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) return bytes;
  const buf = Buffer.from(bytes, 'latin1');
  let out = '';
  let i = 0;
  while (i < buf.length) {
    const c = buf[i]!;
    if (c >= 0x20 && c < 0x7f) {
      out += String.fromCharCode(c);
      i++;
      continue;
    }
    // a valid UTF-8 sequence of 2..4 bytes (no overlongs, no surrogates) is kept as text
    const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (n && i + n <= buf.length) {
      const s = buf.toString('utf8', i, i + n);
      if (s.length >= 1 && !s.includes('\ufffd') && Buffer.byteLength(s) === n) {
        out += s;
        i += n;
        continue;
      }
    }
    out += '\\x' + c.toString(16).padStart(2, '0');
    i++;
  }
  return out;
}

/** A name (byte string) as a path component suitable for fs calls: a string when ASCII, else its bytes. */
export function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

export const badEntry = (name: string, why: string) => new LayerfsError('EBADTAR', `tar entry ${JSON.stringify(displayName(name))}`, why);

/** Pull-based byte source over an async iterator of chunks. */
export class ByteSource {
  private bufs: Buffer[] = [];
  private avail = 0;
  /** Bytes consumed so far (stream offset of the next byte). */
  pos = 0;
  eof = false;

  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<void> {
    while (this.avail < n && !this.eof) {
      const r = await this.it.next();
      if (r.done) {
        this.eof = true;
        break;
      }
      if (r.value.length) {
        this.bufs.push(r.value);
        this.avail += r.value.length;
      }
    }
  }

  /** Up to n bytes without consuming (shorter only at the end of the stream). */
  async peek(n: number): Promise<Buffer> {
    if (this.avail < n) await this.fill(n);
    return this.view(Math.min(n, this.avail));
  }

  private view(n: number): Buffer {
    if (n === 0) return EMPTY;
    const b0 = this.bufs[0]!;
    if (b0.length >= n) return b0.subarray(0, n);
    const b = Buffer.concat(this.bufs, this.avail);
    this.bufs = [b];
    return b.subarray(0, n);
  }

  private consume(n: number): void {
    this.pos += n;
    this.avail -= n;
    while (n > 0) {
      const b0 = this.bufs[0]!;
      if (b0.length <= n) {
        n -= b0.length;
        this.bufs.shift();
      } else {
        this.bufs[0] = b0.subarray(n);
        n = 0;
      }
    }
  }

  /** Exactly n bytes (shorter only at the end of the stream). A fast path when they are buffered. */
  read(n: number): Buffer | Promise<Buffer> {
    if (this.avail >= n) {
      const b = this.view(n);
      this.consume(n);
      return b;
    }
    return this.fill(n).then(() => {
      const m = Math.min(n, this.avail);
      const b = this.view(m);
      this.consume(m);
      return b;
    });
  }

  /** The next up to `max` bytes that are available (reads one chunk if none are); empty at EOF. */
  async some(max: number): Promise<Buffer> {
    if (this.avail === 0) await this.fill(1);
    if (this.avail === 0) return EMPTY;
    const b0 = this.bufs[0]!;
    const n = Math.min(max, b0.length);
    const b = b0.subarray(0, n);
    this.consume(n);
    return b;
  }

  /** Skip n bytes; returns how many were there. */
  async skip(n: number): Promise<number> {
    let left = n;
    while (left > 0) {
      const b = await this.some(left);
      if (b.length === 0) break;
      left -= b.length;
    }
    return n - left;
  }

  /** Read (and drop) the rest of the stream. */
  async drain(): Promise<void> {
    this.bufs = [];
    this.pos += this.avail;
    this.avail = 0;
    while (!this.eof) {
      const r = await this.it.next();
      if (r.done) this.eof = true;
      else this.pos += r.value.length;
    }
  }
}

const EMPTY = Buffer.alloc(0);

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** A NUL-terminated (or field-long) byte string. */
function bstr(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString('latin1', off, end);
}

/**
 * A numeric header field: octal digits (leading spaces/NULs allowed, ended by space or NUL) or
 * GNU base-256 (first byte 0x80: positive; 0xff: negative, which we refuse). Returns undefined for
 * a malformed field, -1 for a negative one, Infinity for one beyond 2^53.
 */
export function numField(b: Buffer, off: number, len: number): number | undefined {
  const first = b[off]!;
  if (first & 0x80) {
    if (first === 0xff) return -1;
    if (first !== 0x80) return undefined;
    let v = 0;
    for (let i = off + 1; i < off + len; i++) {
      v = v * 256 + b[i]!;
      if (v > Number.MAX_SAFE_INTEGER) return Infinity;
    }
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++;
  if (i === end) return 0; // an all-blank field is 0 (as GNU tar for some fields; v7 devmajor/minor)
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) return undefined;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) if (b[i] !== 0x20 && b[i] !== 0) return undefined;
  if (digits === 0) return undefined;
  return v;
}

function checksumOk(b: Buffer): boolean {
  const stored = numField(b, 148, 8);
  if (stored === undefined || stored < 0) return false;
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i]!;
    u += c;
    s += c >= 0x80 ? c - 256 : c;
  }
  return stored === u || stored === s;
}

/** The name stored in a header block, for messages about a header we could not parse. */
export function rawName(b: Buffer): string {
  return bstr(b, 0, 100);
}

type PaxRec = [string, Buffer];

function parsePax(data: Buffer, entry: string): PaxRec[] {
  const out: PaxRec[] = [];
  let p = 0;
  while (p < data.length) {
    if (data[p] === 0) break; // NUL padding some writers leave
    let sp = p;
    while (sp < data.length && data[sp] !== 0x20) sp++;
    const lenStr = data.toString('latin1', p, sp);
    if (!/^[0-9]{1,9}$/.test(lenStr)) throw badEntry(entry, `bad PAX record length ${JSON.stringify(displayName(lenStr))}`);
    const len = Number(lenStr);
    if (len <= sp - p + 1 || p + len > data.length || data[p + len - 1] !== 0x0a) throw badEntry(entry, 'malformed PAX record (length does not match)');
    const rec = data.subarray(sp + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw badEntry(entry, 'malformed PAX record (no key)');
    out.push([rec.toString('utf8', 0, eq), rec.subarray(eq + 1)]);
    p += len;
  }
  return out;
}

function paxNum(v: Buffer, key: string, name: string, frac: boolean): number {
  const s = v.toString('latin1', 0, v.length);
  const re = frac ? /^-?\d+(\.\d+)?$/ : /^\d+$/;
  if (!re.test(s)) throw badEntry(name, `bad PAX ${key} value ${JSON.stringify(displayName(s))}`);
  const n = Number(s);
  if (!Number.isFinite(n) || (!frac && n > Number.MAX_SAFE_INTEGER)) throw badEntry(name, `PAX ${key} out of range`);
  return n;
}

/** The body of the current entry, read from the source exactly once (or skipped). */
export class Body {
  private left: number;
  constructor(
    private readonly src: ByteSource,
    readonly size: number,
    private readonly entry: string,
  ) {
    this.left = size;
  }

  private truncated(): LayerfsError {
    return badEntry(this.entry, 'truncated tar: stream ended inside the entry body');
  }

  /** The whole (remaining) body (call only for bodies of bounded size). */
  async all(): Promise<Buffer> {
    if (this.left === 0) return EMPTY;
    const n = this.left;
    let b = this.src.read(n);
    if (!(b instanceof Buffer)) b = await b;
    this.left -= b.length;
    if (b.length < n) throw this.truncated();
    return b;
  }

  /** Exactly n more bytes of the body. */
  async take(n: number): Promise<Buffer> {
    if (n > this.left) throw badEntry(this.entry, 'sparse map promises more data than the entry holds');
    let b = this.src.read(n);
    if (!(b instanceof Buffer)) b = await b;
    this.left -= b.length;
    if (b.length < n) throw this.truncated();
    return b;
  }

  /** Up to `max` more bytes of the body, piece by piece as they come. */
  async *chunks(max = Infinity): AsyncGenerator<Buffer> {
    let want = Math.min(max, this.left);
    while (want > 0) {
      const b = await this.src.some(want);
      if (b.length === 0) throw this.truncated();
      this.left -= b.length;
      want -= b.length;
      yield b;
    }
  }

  get remaining(): number {
    return this.left;
  }

  /** Skip whatever the applier did not read, and the padding. */
  async finish(): Promise<void> {
    const pad = (BLOCK - (this.size % BLOCK)) % BLOCK;
    const want = this.left + pad;
    this.left = 0;
    if (want === 0) return;
    const got = await this.src.skip(want);
    if (got < want) throw this.truncated();
  }
}

export interface TarEntry {
  header: TarHeader;
  body: Body;
}

export class TarParser {
  private last = '';
  private global: PaxRec[] = [];
  private prevBody: Body | null = null;
  private ended = false;

  constructor(private readonly src: ByteSource) {}

  /** Name of the last entry (a byte string), or '' before the first. */
  get lastName(): string {
    return this.last;
  }

  private where(): string {
    return this.last || '(start of archive)';
  }

  private async block(ctx: () => string, eofName: string | null): Promise<Buffer | null> {
    let b = this.src.read(BLOCK);
    if (!(b instanceof Buffer)) b = await b;
    if (b.length === 0) {
      if (eofName !== null) throw badEntry(eofName, 'truncated tar: stream ended after an extended header, without the entry it belongs to');
      return null;
    }
    if (b.length < BLOCK) throw badEntry(b[0] ? rawName(b) : ctx(), 'truncated tar: stream ended inside a header block');
    return b;
  }

  private async extData(size: number, name: string, kind: string): Promise<Buffer> {
    if (size > MAX_EXT) throw badEntry(name, `extended header (${kind}) larger than ${MAX_EXT >> 20} MiB`);
    const padded = size + ((BLOCK - (size % BLOCK)) % BLOCK);
    let b = this.src.read(padded);
    if (!(b instanceof Buffer)) b = await b;
    if (b.length < padded) throw badEntry(name, `truncated tar: stream ended inside an extended header (${kind})`);
    return Buffer.from(b.subarray(0, size)); // a copy: the source may reuse nothing, but keep it small and owned
  }

  /** The next entry, or null at the end-of-archive marker. The previous entry's body must be finished. */
  async next(): Promise<TarEntry | null> {
    if (this.ended) return null;
    if (this.prevBody) {
      await this.prevBody.finish();
      this.prevBody = null;
    }
    let longName: string | null = null;
    let longLink: string | null = null;
    let pax: PaxRec[] | null = null;
    let extName = ''; // name of the first extended header of this run, for messages
    let extBytes = 0;
    for (;;) {
      const ctx = () => (pax ? paxPath(pax) ?? extName : longName ?? extName) || this.where();
      const b = await this.block(ctx, extName !== '' ? extName : null);
      if (b === null) throw badEntry(this.where(), 'truncated tar: stream ended without the end-of-archive marker');
      if (isZero(b)) {
        if (extName !== '') throw badEntry(ctx(), 'end-of-archive marker between an extended header and its entry');
        // A second zero block should follow; tolerate its absence at EOF as GNU tar does.
        const b2 = await this.src.peek(BLOCK);
        if (b2.length === BLOCK && !isZero(b2)) throw badEntry(this.where(), 'garbage after a zero block (corrupt tar?)');
        this.ended = true;
        return null;
      }
      const hname = rawName(b);
      if (!checksumOk(b)) throw badEntry(hname || this.where(), 'header checksum mismatch (corrupt tar, or not a tar?)');
      // magic: "ustar\0" (POSIX), "ustar  \0" (GNU) or nothing (v7)
      const ustar = b[257] === 0x75 && b[258] === 0x73 && b[259] === 0x74 && b[260] === 0x61 && b[261] === 0x72;
      const posix = ustar && b[262] === 0;
      const gnu = ustar && b[262] === 0x20 && b[263] === 0x20 && b[264] === 0;
      if (ustar ? !posix && !gnu : !isZero(b.subarray(257, 265))) throw badEntry(hname, 'unknown tar header format');
      let name = hname;
      if (posix && b[345] !== 0) name = bstr(b, 345, 155) + '/' + name;
      const flag = b[156]!;
      const size = numField(b, 124, 12);
      const fieldName = (longName ?? (pax ? paxPath(pax) : undefined)) || name;
      if (size === undefined) throw badEntry(fieldName, 'bad size field in header (corrupt tar?)');
      if (size < 0) throw badEntry(fieldName, 'negative size in header (corrupt tar?)');
      if (!Number.isSafeInteger(size)) throw badEntry(fieldName, 'size field out of range (corrupt tar?)');
      // extended headers
      if (flag === 0x78 /* x */ || flag === 0x67 /* g */ || flag === 0x4c /* L */ || flag === 0x4b /* K */) {
        if (extName === '') extName = name;
        extBytes += BLOCK + size;
        if (extBytes > MAX_EXT_RUN) throw badEntry(name, `more than ${MAX_EXT_RUN >> 20} MiB of extended headers before one entry`);
        const data = await this.extData(size, name, flag === 0x78 || flag === 0x67 ? 'PAX' : 'GNU long name');
        if (flag === 0x78) (pax ??= []).push(...parsePax(data, name));
        else if (flag === 0x67) this.global = mergePax(this.global, parsePax(data, name));
        else {
          const s = bstr(data, 0, data.length);
          if (flag === 0x4c) longName = s;
          else longLink = s;
        }
        continue;
      }
      if (longName !== null) name = longName;
      let linkname = longLink ?? bstr(b, 157, 100);
      const recs = this.global.length ? mergePax(this.global, pax ?? []) : pax;
      const h = this.header(b, flag, name, linkname, size, gnu);
      if (h.__ext) {
        // old GNU sparse: extension blocks of 21 more map entries follow the header, outside the size
        for (let more = true, n = 0; more; n++) {
          const e = await this.block(() => name, name);
          if (e === null || n > MAX_SPARSE_SEGMENTS / 21) throw badEntry(name, 'truncated GNU sparse map');
          for (let i = 0; i < 21; i++) addSparseSeg(h.sparse!, e, i * 24, name);
          more = e[504] !== 0;
        }
      }
      if (recs) applyPax(h, recs);
      if (h.sparse && !h.__sparse10) checkSparse(h.sparse, h.size, h.name, h.__stored ?? size);
      name = h.name;
      linkname = h.linkname;
      this.last = name;
      // body framing: as GNU tar, a directory's size is not followed by data
      let bodySize = 0;
      if (flag === 0x53 /* S */) bodySize = h.__stored!;
      else if (h.type === 'file' || h.type === 'link' || flag === 0x37) bodySize = h.__stored ?? h.size;
      else if (h.type !== 'dir') bodySize = size; // symlinks, devices, fifos: some writers store data; skipped
      const body = new Body(this.src, bodySize, name);
      this.prevBody = body;
      if (h.__sparse10) {
        h.sparse = await readSparse10Map(body, name, h.size);
      }
      delete h.__stored;
      delete h.__sparse10;
      delete h.__ext;
      return { header: h, body };
    }
  }

  private header(
    b: Buffer,
    flag: number,
    name: string,
    linkname: string,
    size: number,
    gnu: boolean,
  ): Hdr {
    let type: EntryType;
    let sparseOld = false;
    switch (flag) {
      case 0x30:
      case 0:
      case 0x37:
        type = 'file';
        break;
      case 0x31:
        type = 'link';
        break;
      case 0x32:
        type = 'symlink';
        break;
      case 0x33:
        type = 'char';
        break;
      case 0x34:
        type = 'block';
        break;
      case 0x35:
        type = 'dir';
        break;
      case 0x36:
        type = 'fifo';
        break;
      case 0x53:
        if (!gnu) throw badEntry(name, 'GNU sparse entry (type S) in a non-GNU header');
        type = 'file';
        sparseOld = true;
        break;
      default:
        throw badEntry(name, `unsupported tar entry type ${JSON.stringify(displayName(String.fromCharCode(flag)))}`);
    }
    // v7 dirs are files whose name ends in '/'
    if (type === 'file' && flag === 0 && name.endsWith('/')) type = 'dir';
    const field = (off: number, len: number, what: string, n: string): number => {
      const v = numField(b, off, len);
      if (v === undefined) throw badEntry(n, `bad ${what} field in header (corrupt tar?)`);
      if (v < 0) throw badEntry(n, `negative ${what} in header (corrupt tar?)`);
      if (!Number.isSafeInteger(v)) throw badEntry(n, `${what} field out of range (corrupt tar?)`);
      return v;
    };
    const dev = type === 'char' || type === 'block';
    let mtimeRaw = numField(b, 136, 12);
    if (mtimeRaw === undefined || mtimeRaw === Infinity) throw badEntry(name, 'bad mtime field in header (corrupt tar?)');
    if (mtimeRaw === -1 && b[136] === 0xff) mtimeRaw = negBase256(b, 136, 12); // negative times are valid
    const h: Hdr = {
      name,
      type,
      mode: field(100, 8, 'mode', name) & 0o7777,
      uid: field(108, 8, 'uid', name),
      gid: field(116, 8, 'gid', name),
      size: type === 'file' || type === 'link' ? size : 0,
      mtime: mtimeRaw,
      linkname,
      devmajor: dev ? field(329, 8, 'devmajor', name) : 0,
      devminor: dev ? field(337, 8, 'devminor', name) : 0,
      xattrs: null,
    };
    if (h.uid > 0xffffffff || h.gid > 0xffffffff) throw badEntry(name, 'uid or gid field out of range (corrupt tar?)');
    if (h.devmajor > 0xfff || h.devminor > 0xfffff) throw badEntry(name, 'device number out of range (corrupt tar?)');
    if (sparseOld) {
      h.__stored = size;
      const map: [number, number][] = [];
      for (let i = 0; i < 4; i++) addSparseSeg(map, b, 386 + i * 24, name);
      const real = numField(b, 483, 12);
      if (real === undefined || real < 0 || !Number.isSafeInteger(real)) throw badEntry(name, 'bad GNU sparse real size (corrupt tar?)');
      h.size = real;
      h.sparse = map;
      h.__ext = b[482] !== 0;
    }
    return h;
  }
}

type Hdr = TarHeader & { __stored?: number; __sparse10?: boolean; __ext?: boolean };

function addSparseSeg(map: [number, number][], blk: Buffer, off: number, name: string): void {
  if (blk[off] === 0) return;
  const o = numField(blk, off, 12);
  const n = numField(blk, off + 12, 12);
  if (o === undefined || n === undefined || o < 0 || n < 0 || !Number.isSafeInteger(o) || !Number.isSafeInteger(n)) throw badEntry(name, 'bad GNU sparse map entry (corrupt tar?)');
  map.push([o, n]);
}

/** GNU base-256 negative numbers (only times may be negative). */
function negBase256(b: Buffer, off: number, len: number): number {
  let v = 0;
  for (let i = off; i < off + len; i++) v = v * 256 + (255 - b[i]!);
  return -(v + 1);
}

function paxPath(pax: PaxRec[]): string | undefined {
  let p: string | undefined;
  for (const [k, v] of pax) if (k === 'path' || k === 'GNU.sparse.name') p = v.toString('latin1', 0, v.length);
  return p;
}

/** Later records override earlier ones of the same key (sparse offset/numbytes pairs are kept in order). */
function mergePax(a: PaxRec[], b: PaxRec[]): PaxRec[] {
  if (b.length === 0) return a;
  const keys = new Set(b.map(([k]) => k));
  return [...a.filter(([k]) => !keys.has(k)), ...b];
}

function applyPax(h: Hdr, pax: PaxRec[]): void {
  const name = () => h.name;
  let sparseMajor: number | null = null;
  let sparseMinor: number | null = null;
  let sparseSize: number | null = null;
  let sparseName: string | null = null;
  const offsets: number[] = [];
  const numbytes: number[] = [];
  let map: number[] | null = null;
  let paxSize: number | null = null;
  for (const [k, v] of pax) {
    switch (k) {
      case 'path':
        h.name = v.toString('latin1', 0, v.length);
        break;
      case 'linkpath':
        h.linkname = v.toString('latin1', 0, v.length);
        break;
      case 'size':
        paxSize = paxNum(v, k, name(), false);
        break;
      case 'uid':
        h.uid = paxNum(v, k, name(), false);
        break;
      case 'gid':
        h.gid = paxNum(v, k, name(), false);
        break;
      case 'mtime':
        h.mtime = paxNum(v, k, name(), true);
        break;
      case 'atime':
        h.atime = paxNum(v, k, name(), true);
        break;
      case 'GNU.sparse.major':
        sparseMajor = paxNum(v, k, name(), false);
        break;
      case 'GNU.sparse.minor':
        sparseMinor = paxNum(v, k, name(), false);
        break;
      case 'GNU.sparse.name':
        sparseName = v.toString('latin1', 0, v.length);
        break;
      case 'GNU.sparse.size':
      case 'GNU.sparse.realsize':
        sparseSize = paxNum(v, k, name(), false);
        break;
      case 'GNU.sparse.offset':
        offsets.push(paxNum(v, k, name(), false));
        break;
      case 'GNU.sparse.numbytes':
        numbytes.push(paxNum(v, k, name(), false));
        break;
      case 'GNU.sparse.numblocks':
        paxNum(v, k, name(), false);
        break;
      case 'GNU.sparse.map': {
        const s = v.toString('latin1', 0, v.length);
        if (!/^(\d+,\d+)(,\d+,\d+)*$/.test(s) && s !== '') throw badEntry(name(), `bad GNU.sparse.map ${JSON.stringify(displayName(s.slice(0, 60)))}`);
        map = s === '' ? [] : s.split(',').map(Number);
        break;
      }
      default:
        if (k.startsWith('SCHILY.xattr.')) {
          (h.xattrs ??= new Map()).set(k.slice('SCHILY.xattr.'.length), Buffer.from(v));
        } else if (k.startsWith('LIBARCHIVE.xattr.')) {
          let xname: string;
          try {
            xname = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
          } catch {
            throw badEntry(name(), `bad LIBARCHIVE.xattr key ${JSON.stringify(k)}`);
          }
          (h.xattrs ??= new Map()).set(xname, Buffer.from(v.toString('latin1'), 'base64'));
        } else if (k.startsWith('GNU.sparse.')) {
          throw badEntry(name(), `unsupported GNU sparse record ${JSON.stringify(k)}`);
        }
    }
  }
  if (paxSize !== null && (h.type === 'file' || h.type === 'link')) {
    if (h.sparse) h.__stored = paxSize;
    else h.size = paxSize;
  }
  const isSparse = sparseMajor !== null || map !== null || offsets.length > 0 || numbytes.length > 0;
  if (!isSparse) {
    if (sparseName !== null || sparseSize !== null) throw badEntry(name(), 'GNU sparse records without a sparse map');
    return;
  }
  if (h.type !== 'file') throw badEntry(name(), 'GNU sparse records on an entry that is not a regular file');
  if (sparseName !== null) h.name = sparseName;
  if (sparseSize === null) throw badEntry(name(), 'sparse file without GNU.sparse.size/realsize');
  h.__stored = h.size; // the stored body: ustar/PAX size
  h.size = sparseSize;
  if (sparseMajor === 1) {
    if (sparseMinor !== 0) throw badEntry(name(), `unsupported GNU sparse format 1.${sparseMinor}`);
    h.__sparse10 = true;
    return;
  }
  if (sparseMajor !== null && sparseMajor !== 0) throw badEntry(name(), `unsupported GNU sparse format ${sparseMajor}.${sparseMinor ?? 0}`);
  const segs: [number, number][] = [];
  if (map !== null) {
    for (let i = 0; i < map.length; i += 2) segs.push([map[i]!, map[i + 1]!]);
  } else {
    if (offsets.length !== numbytes.length) throw badEntry(name(), 'GNU.sparse.offset and GNU.sparse.numbytes records do not pair up');
    for (let i = 0; i < offsets.length; i++) segs.push([offsets[i]!, numbytes[i]!]);
  }
  h.sparse = segs;
}

function checkSparse(map: [number, number][], real: number, name: string, stored: number): void {
  if (map.length > MAX_SPARSE_SEGMENTS) throw badEntry(name, 'sparse map too long');
  let end = 0;
  let sum = 0;
  for (const [o, n] of map) {
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(n)) throw badEntry(name, 'sparse map entry out of range');
    if (o < end) throw badEntry(name, 'sparse map segments overlap or are out of order (corrupt tar?)');
    if (o + n > real) throw badEntry(name, `sparse map segment [${o}, +${n}] beyond the file size ${real} (corrupt tar?)`);
    end = o + n;
    sum += n;
  }
  if (sum !== stored) throw badEntry(name, `sparse map holds ${sum} bytes but the entry stores ${stored} (corrupt tar?)`);
}

/** PAX 1.0 sparse: the map heads the data, decimal numbers one per line, padded to a block. */
async function readSparse10Map(body: Body, name: string, real: number): Promise<[number, number][]> {
  let buf = await body.take(Math.min(BLOCK, body.remaining));
  let used = buf.length;
  let p = 0;
  const line = async (): Promise<number> => {
    for (;;) {
      const nl = buf.indexOf(0x0a, p);
      if (nl >= 0) {
        const s = buf.toString('latin1', p, nl);
        p = nl + 1;
        if (!/^\d{1,16}$/.test(s)) throw badEntry(name, `bad sparse map in the data (${JSON.stringify(displayName(s.slice(0, 40)))})`);
        return Number(s);
      }
      if (buf.length - p > 64 || body.remaining === 0) throw badEntry(name, 'bad sparse map in the data (no number)');
      const more = await body.take(Math.min(BLOCK, body.remaining));
      used += more.length;
      buf = Buffer.concat([buf.subarray(p), more]);
      p = 0;
    }
  };
  const count = await line();
  if (count > MAX_SPARSE_SEGMENTS) throw badEntry(name, 'sparse map too long');
  const map: [number, number][] = [];
  for (let i = 0; i < count; i++) map.push([await line(), await line()]);
  checkSparse(map, real, name, body.remaining);
  void used;
  return map;
}
