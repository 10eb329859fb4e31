/**
 * A small streaming tar reader (ustar, GNU long names, PAX x/g records).
 *
 * Why not tar-stream's extractor: it decodes PAX values as UTF-8 strings, which corrupts binary
 * xattr values (security.capability), and we want exact control over truncation and end-of-archive
 * handling. This reader pulls chunks from an async iterator and hands out header records and body
 * bytes without copying where a body lies inside one chunk.
 */
import { badTar, LayerfsError } from '../common/errors.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  /** Name as stored (after PAX/GNU long-name overrides), not yet normalised. */
  name: string;
  type: EntryType;
  mode: number; // permission + setuid/setgid/sticky bits (07777)
  uid: number;
  gid: number;
  size: number; // body size in bytes
  mtime: number; // seconds, may be fractional (PAX)
  atime?: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from SCHILY.xattr.* / LIBARCHIVE.xattr.*, raw bytes. */
  xattrs: Map<string, Buffer> | null;
}

const BLOCK = 512;
const MAX_META = 8 << 20; // PAX / GNU long-name bodies bigger than this are refused

/** Pulls bytes out of an async iterator of chunks. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private avail = 0;
  private done = false;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  get buffered(): number {
    return this.avail;
  }

  /** Ensure at least n bytes are buffered; false if the stream ended first. */
  async fill(n: number): Promise<boolean> {
    while (this.avail < n && !this.done) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        break;
      }
      const c = r.value;
      if (c.length) {
        this.chunks.push(c);
        this.avail += c.length;
      }
    }
    return this.avail >= n;
  }

  /** Take exactly n buffered bytes (n <= buffered). Copies only across chunk boundaries. */
  take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) {
      this.avail -= n;
      if (first.length === n) {
        this.chunks.shift();
        return first;
      }
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.avail -= n;
    return out;
  }

  /** Take up to n bytes from the first buffered chunk (no copy). Requires buffered > 0. */
  takeSome(n: number): Buffer {
    const first = this.chunks[0]!;
    return this.take(Math.min(n, first.length));
  }

  /** Discard n bytes; false if the stream ended first. */
  async skip(n: number): Promise<boolean> {
    while (n > 0) {
      if (this.avail === 0 && !(await this.fill(1))) return false;
      const k = this.takeSome(n).length;
      n -= k;
    }
    return true;
  }

  /** Read and discard everything left in the stream; returns the byte count. */
  async drain(): Promise<number> {
    let n = this.avail;
    this.chunks = [];
    this.avail = 0;
    while (!this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else n += r.value.length;
    }
    return n;
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function cstr(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString('utf8', off, end);
}

function parseNum(b: Buffer, off: number, len: number, field: string, name: string): number {
  if (b[off]! & 0x80) {
    // base-256 (GNU): big-endian, first byte's top bit is the marker
    if (b[off] === 0xff) throw badTar(name, `negative ${field} in header`);
    let v = b[off]! & 0x7f;
    for (let i = off + 1; i < off + len; i++) {
      v = v * 256 + b[i]!;
      if (v > Number.MAX_SAFE_INTEGER) throw badTar(name, `${field} in header is too large`);
    }
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) throw badTar(name, `bad octal ${field} field in header (corrupt tar?)`);
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) {
    if (b[i] !== 0x20 && b[i] !== 0) throw badTar(name, `bad octal ${field} field in header (corrupt tar?)`);
  }
  return digits ? v : 0;
}

function checksumOk(b: Buffer): boolean {
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i]!;
    u += c;
    s += c > 127 ? c - 256 : c;
  }
  let want: number;
  try {
    want = parseNum(b, 148, 8, 'checksum', '?');
  } catch {
    return false;
  }
  return want === u || want === s;
}

type Pax = Map<string, Buffer>;

function parsePax(body: Buffer, name: string): Pax {
  const out: Pax = new Map();
  let off = 0;
  while (off < body.length) {
    if (body[off] === 0) break; // trailing NUL padding some writers leave
    let sp = off;
    while (sp < body.length && body[sp] !== 0x20) sp++;
    const len = Number(body.toString('latin1', off, sp));
    if (!Number.isInteger(len) || len <= sp - off + 1 || off + len > body.length || sp === off) {
      throw badTar(name, 'malformed PAX extended header record');
    }
    const rec = body.subarray(sp + 1, off + len);
    if (rec[rec.length - 1] !== 0x0a) throw badTar(name, 'malformed PAX extended header record (no newline)');
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw badTar(name, 'malformed PAX extended header record (no key)');
    const key = rec.toString('utf8', 0, eq);
    out.set(key, Buffer.from(rec.subarray(eq + 1, rec.length - 1)));
    off += len;
  }
  return out;
}

function paxNum(v: Buffer, key: string, name: string, frac: boolean): number {
  const s = v.toString('latin1');
  const re = frac ? /^-?\d+(\.\d+)?$/ : /^\d+$/;
  if (!re.test(s)) throw badTar(name, `bad PAX ${key} value ${JSON.stringify(s)}`);
  const n = Number(s);
  if (!Number.isFinite(n) || (!frac && n > Number.MAX_SAFE_INTEGER)) throw badTar(name, `PAX ${key} out of range`);
  return n;
}

/** Reads tar entries one at a time; the caller consumes (or skips) each body before asking for the next. */
export class TarParser {
  private remaining = 0; // body bytes of the current entry not yet consumed
  private padding = 0;
  private globalPax: Pax | null = null;
  private current = '';
  ended = false;

  constructor(readonly reader: ByteReader) {}

  /** Name of the entry being read (for error messages). */
  get entryName(): string {
    return this.current;
  }

  private async need(n: number, what: string): Promise<void> {
    if (!(await this.reader.fill(n))) {
      throw badTar(this.current || '(start of archive)', `truncated tar: stream ended ${what}`);
    }
  }

  private async skipRest(): Promise<void> {
    const n = this.remaining + this.padding;
    this.remaining = 0;
    this.padding = 0;
    if (n && !(await this.reader.skip(n))) throw badTar(this.current, 'truncated tar: stream ended inside the entry body');
  }

  private async readMeta(size: number, kind: string): Promise<Buffer> {
    if (size > MAX_META) throw badTar(this.current, `${kind} of ${size} bytes is too large`);
    const total = size + ((BLOCK - (size % BLOCK)) % BLOCK);
    await this.need(total, `inside a ${kind}`);
    const b = Buffer.from(this.reader.take(total).subarray(0, size));
    return b;
  }

  /** Next entry, or null at the end-of-archive marker. */
  async next(): Promise<TarHeader | null> {
    await this.skipRest();
    let pax: Pax | null = null;
    let longName: string | null = null;
    let longLink: string | null = null;
    for (;;) {
      if (!(await this.reader.fill(BLOCK))) {
        if (this.reader.buffered === 0) {
          throw badTar(this.current || '(start of archive)', 'truncated tar: stream ended without the end-of-archive marker');
        }
        throw badTar(this.current || '(start of archive)', 'truncated tar: stream ended inside a header block');
      }
      const h = this.reader.take(BLOCK);
      if (isZero(h)) {
        if (pax || longName !== null || longLink !== null) throw badTar(this.current, 'end of archive right after an extended header');
        // A second zero block should follow; tolerate its absence at EOF as GNU tar does.
        if (await this.reader.fill(BLOCK)) {
          const h2 = this.reader.take(BLOCK);
          if (!isZero(h2)) throw badTar(this.current, 'garbage after a zero block (corrupt tar?)');
        }
        this.ended = true;
        return null;
      }
      const rawName = cstr(h, 0, 100);
      const shownName = longName ?? pax?.get('path')?.toString('utf8') ?? rawName;
      this.current = shownName;
      if (!checksumOk(h)) throw badTar(shownName, 'header checksum mismatch (corrupt tar, or not a tar?)');
      const magic = h.toString('latin1', 257, 263);
      const version = h.toString('latin1', 263, 265);
      const ustar = magic === 'ustar\0';
      const gnu = magic === 'ustar ' && version === ' \0';
      if (!ustar && !gnu && !isZero(h.subarray(257, 265))) throw badTar(shownName, 'unknown tar header format');
      const flag = String.fromCharCode(h[156]!);
      const size = parseNum(h, 124, 12, 'size', shownName);

      if (flag === 'x' || flag === 'g') {
        const recs = parsePax(await this.readMeta(size, 'PAX header'), shownName);
        if (flag === 'g') {
          this.globalPax ??= new Map();
          for (const [k, v] of recs) this.globalPax.set(k, v);
        } else {
          pax ??= new Map();
          for (const [k, v] of recs) pax.set(k, v);
        }
        continue;
      }
      if (flag === 'L' || flag === 'K') {
        const body = await this.readMeta(size, 'GNU long name');
        let end = body.length;
        while (end > 0 && body[end - 1] === 0) end--;
        const s = body.toString('utf8', 0, end);
        if (flag === 'L') longName = s;
        else longLink = s;
        this.current = flag === 'L' ? s : this.current;
        continue;
      }

      let type: EntryType;
      switch (flag) {
        case '0':
        case '\0':
        case '7':
          type = 'file';
          break;
        case '1':
          type = 'link';
          break;
        case '2':
          type = 'symlink';
          break;
        case '3':
          type = 'char';
          break;
        case '4':
          type = 'block';
          break;
        case '5':
          type = 'dir';
          break;
        case '6':
          type = 'fifo';
          break;
        case 'S':
          throw badTar(shownName, 'GNU sparse files are not supported');
        default:
          throw badTar(shownName, `unsupported tar entry type ${JSON.stringify(flag)}`);
      }

      let name = rawName;
      if (ustar && h[345] !== 0) name = cstr(h, 345, 155) + '/' + name;
      let linkname = cstr(h, 157, 100);
      const hdr: TarHeader = {
        name,
        type,
        mode: parseNum(h, 100, 8, 'mode', shownName) & 0o7777,
        uid: parseNum(h, 108, 8, 'uid', shownName),
        gid: parseNum(h, 116, 8, 'gid', shownName),
        size,
        mtime: parseNum(h, 136, 12, 'mtime', shownName),
        linkname,
        devmajor: type === 'char' || type === 'block' ? parseNum(h, 329, 8, 'devmajor', shownName) : 0,
        devminor: type === 'char' || type === 'block' ? parseNum(h, 337, 8, 'devminor', shownName) : 0,
        xattrs: null,
      };
      if (type === 'file' && !ustar && !gnu && name.endsWith('/')) hdr.type = 'dir'; // old v7 dirs
      if (longName !== null) hdr.name = longName;
      if (longLink !== null) hdr.linkname = longLink;
      const all = this.globalPax && pax ? new Map([...this.globalPax, ...pax]) : (pax ?? this.globalPax);
      if (all) this.applyPax(hdr, all);
      linkname = hdr.linkname;
      this.current = hdr.name;
      if (hdr.name.includes('\0')) throw badTar(hdr.name, 'entry name contains a NUL byte');
      if (linkname.includes('\0')) throw badTar(hdr.name, 'link target contains a NUL byte');

      // Only regular files carry data we use; other bodies (e.g. PAX hardlinks with data) are skipped.
      this.remaining = hdr.size;
      this.padding = (BLOCK - (hdr.size % BLOCK)) % BLOCK;
      if (hdr.type !== 'file' && hdr.type !== 'link') {
        // POSIX says size is ignored for these; GNU tar writes 0. Skip whatever is claimed.
        hdr.size = 0;
      }
      return hdr;
    }
  }

  private applyPax(hdr: TarHeader, pax: Pax): void {
    const n = hdr.name;
    for (const [k, v] of pax) {
      switch (k) {
        case 'path':
          hdr.name = v.toString('utf8');
          break;
        case 'linkpath':
          hdr.linkname = v.toString('utf8');
          break;
        case 'size':
          hdr.size = paxNum(v, k, n, false);
          break;
        case 'uid':
          hdr.uid = paxNum(v, k, n, false);
          break;
        case 'gid':
          hdr.gid = paxNum(v, k, n, false);
          break;
        case 'mtime':
          hdr.mtime = paxNum(v, k, n, true);
          break;
        case 'atime':
          hdr.atime = paxNum(v, k, n, true);
          break;
        default:
          if (k.startsWith('SCHILY.xattr.')) {
            (hdr.xattrs ??= new Map()).set(k.slice('SCHILY.xattr.'.length), v);
          } else if (k.startsWith('LIBARCHIVE.xattr.')) {
            let xname: string;
            try {
              xname = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
            } catch {
              throw badTar(n, `bad LIBARCHIVE.xattr key ${JSON.stringify(k)}`);
            }
            (hdr.xattrs ??= new Map()).set(xname, Buffer.from(v.toString('latin1'), 'base64'));
          } else if (k.startsWith('GNU.sparse.')) {
            throw badTar(n, 'GNU sparse files are not supported');
          }
      }
    }
  }

  /** Next piece of the current body (null when it is fully consumed). Does not copy. */
  async bodyChunk(): Promise<Buffer | null> {
    if (this.remaining === 0) return null;
    if (this.reader.buffered === 0) await this.need(1, 'inside the entry body');
    const b = this.reader.takeSome(this.remaining);
    this.remaining -= b.length;
    return b;
  }

  /** The whole current body in one buffer (call only for bodies of bounded size). */
  async body(): Promise<Buffer> {
    const n = this.remaining;
    if (n === 0) return Buffer.alloc(0);
    await this.need(n, 'inside the entry body');
    this.remaining = 0;
    return this.reader.take(n);
  }
}

export function isLayerfsError(e: unknown): e is LayerfsError {
  return e instanceof LayerfsError;
}
