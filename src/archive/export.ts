/**
 * exportDiff: an overlay upper dir (kernel format) -> an OCI layer tar with `.wh.` whiteouts.
 * Walks in sorted order so the same tree always gives the same bytes. Names are bytes end to end
 * (Buffer paths; byte strings in the tar writer). A sparse file (fewer blocks than its size, and
 * SEEK_HOLE finds holes) is written as a PAX 1.0 sparse member (GNU tar's --sparse format, which
 * GNU tar, libarchive and layerfs read back with the holes; Go's archive/tar, hence containerd,
 * reads PAX sparse too); `LAYERFS_EXPORT_SPARSE=0` writes such files as plain data.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { isErrno } from '../common/errors.js';
import { native, SEEK_DATA, SEEK_HOLE } from '../common/native.js';
// Own header writer, not tar-stream's packer: its encodePax builds records from strings (UTF-8), so binary xattr values cannot be written.
import { encodeHeader, END_OF_ARCHIVE, padLen, type WriteHeader } from './tarwrite.js';

const READ_CHUNK = 1 << 20;

type Path = Buffer;
const SPARSE = process.env.LAYERFS_EXPORT_SPARSE !== '0';

function readXattrs(abs: Path): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = native.llistxattr(abs as unknown as string);
  } catch (e) {
    if (isErrno(e, 'EOPNOTSUPP') || isErrno(e, 'ENOTSUP')) return out;
    throw e;
  }
  for (const n of names) {
    try {
      out.set(n, native.lgetxattr(abs as unknown as string, n));
    } catch (e) {
      if (isErrno(e, 'ENODATA')) continue;
      throw e;
    }
  }
  return out;
}

/** glibc's dev_t encoding. */
function majorOf(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}
function minorOf(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

function isOverlayXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}

function publicXattrs(all: Map<string, Buffer>): Map<string, Buffer> | undefined {
  let out: Map<string, Buffer> | undefined;
  for (const [k, v] of all) {
    if (isOverlayXattr(k)) continue;
    (out ??= new Map()).set(k, v);
  }
  return out;
}

function isYes(v: Buffer | undefined): boolean {
  return v !== undefined && v.length >= 1 && (v[0] === 0x79 || v[0] === 0x59); // 'y' / 'Y'
}


function base(st: BigIntStats, name: string): Omit<WriteHeader, 'type'> {
  return {
    name,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: 0,
    mtime: Number(st.mtimeMs / 1000n),
  };
}

/** The data segments of a file with holes, or null when it has none. */
async function sparseMap(abs: Path, size: number): Promise<[number, number][] | null> {
  const fh = await open(abs, 'r');
  try {
    const map: [number, number][] = [];
    let pos = 0;
    while (pos < size) {
      let d: number;
      try {
        d = native.lseek(fh.fd, pos, SEEK_DATA);
      } catch (e) {
        if (isErrno(e, 'ENXIO')) break;
        if (isErrno(e, 'EINVAL') || isErrno(e, 'ENOTSUP') || isErrno(e, 'EOPNOTSUPP')) return null;
        throw e;
      }
      if (d >= size) break;
      const h = Math.min(native.lseek(fh.fd, d, SEEK_HOLE), size);
      map.push([d, h - d]);
      pos = h;
    }
    if (map.length === 1 && map[0]![0] === 0 && map[0]![1] === size) return null;
    // GNU tar ends the map with the file size, so that a file ending in a hole keeps its length
    if (map.length === 0 || map[map.length - 1]![0] + map[map.length - 1]![1] < size) map.push([size, 0]);
    return map;
  } finally {
    await fh.close();
  }
}

async function* fileBody(abs: Path, segs: [number, number][], stored: number, name: string, head?: Buffer): AsyncGenerator<Buffer> {
  if (head) yield head;
  const fh = await open(abs, 'r');
  try {
    for (const [off, len] of segs) {
      let left = len;
      let pos = off;
      while (left > 0) {
        const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) throw new Error(`exportDiff: ${name} shrank while being read`);
        left -= bytesRead;
        pos += bytesRead;
        yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
      }
    }
  } finally {
    await fh.close();
  }
  const pad = padLen(stored);
  if (pad) yield Buffer.alloc(pad);
}

async function* walk(root: Path, rel: string, inodes: Map<string, string>): AsyncGenerator<Buffer> {
  // rel and every name below are byte strings (latin1); paths are Buffers, so no name is re-encoded
  const dirAbs = rel === '' ? root : Buffer.concat([root, Buffer.from('/' + rel, 'latin1')]);
  const names = (await readdir(dirAbs, { encoding: 'buffer' })).sort(Buffer.compare);
  for (const nb of names) {
    const n = nb.toString('latin1');
    const r = rel === '' ? n : `${rel}/${n}`;
    const abs = Buffer.concat([dirAbs, SLASH, nb]);
    const st = await lstat(abs, { bigint: true });
    const xa = readXattrs(abs);
    const b = base(st, r);
    const wh = rel === '' ? `.wh.${n}` : `${rel}/.wh.${n}`;
    if (st.isCharacterDevice() && st.rdev === 0n) {
      yield encodeHeader({ ...b, name: wh, type: 'file', mode: 0o600 });
      continue;
    }
    if (st.isFile() && st.size === 0n && xa.has('trusted.overlay.whiteout')) {
      yield encodeHeader({ ...b, name: wh, type: 'file', mode: 0o600 });
      continue;
    }
    const xattrs = publicXattrs(xa);
    if (st.isDirectory()) {
      yield encodeHeader({ ...b, type: 'dir', xattrs });
      if (isYes(xa.get('trusted.overlay.opaque')) || isYes(xa.get('user.overlay.opaque'))) {
        yield encodeHeader({ ...b, name: `${r}/.wh..wh..opq`, type: 'file', mode: 0o600, xattrs: undefined });
      }
      yield* walk(root, r, inodes);
    } else if (st.isFile()) {
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        const first = inodes.get(key);
        if (first !== undefined) {
          yield encodeHeader({ ...b, type: 'link', linkname: first, xattrs });
          continue;
        }
        inodes.set(key, r);
      }
      const size = Number(st.size);
      const segs = SPARSE && size > 0 && Number(st.blocks) * 512 < size ? await sparseMap(abs, size) : null;
      if (segs) {
        // PAX 1.0 sparse: the map (decimal, one number a line) heads the data, padded to a block
        const text = Buffer.from([segs.length, ...segs.flat()].join('\n') + '\n');
        const head = Buffer.concat([text, Buffer.alloc(padLen(text.length))]);
        const stored = head.length + segs.reduce((a, [, l]) => a + l, 0);
        const slash = r.lastIndexOf('/');
        const ustarName = `${slash >= 0 ? r.slice(0, slash + 1) : ''}GNUSparseFile.0/${r.slice(slash + 1)}`;
        const pax: [string, Buffer][] = [
          ['GNU.sparse.major', Buffer.from('1')],
          ['GNU.sparse.minor', Buffer.from('0')],
          ['GNU.sparse.name', Buffer.from(r, 'latin1')],
          ['GNU.sparse.realsize', Buffer.from(String(size))],
        ];
        yield encodeHeader({ ...b, type: 'file', size: stored, xattrs, pax, ustarName });
        yield* fileBody(abs, segs, stored, r, head);
        continue;
      }
      yield encodeHeader({ ...b, type: 'file', size, xattrs });
      yield* fileBody(abs, [[0, size]], size, r);
    } else if (st.isSymbolicLink()) {
      yield encodeHeader({ ...b, type: 'symlink', linkname: (await readlink(abs, { encoding: 'buffer' })).toString('latin1'), xattrs });
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      yield encodeHeader({
        ...b,
        type: st.isCharacterDevice() ? 'char' : 'block',
        devmajor: majorOf(st.rdev),
        devminor: minorOf(st.rdev),
        xattrs,
      });
    } else if (st.isFIFO()) {
      yield encodeHeader({ ...b, type: 'fifo', xattrs });
    }
    // sockets are not representable in tar; skipped as GNU tar does.
  }
}

const SLASH = Buffer.from('/');

export function exportDiff(upperDir: string): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    yield* walk(Buffer.from(upperDir), '', new Map());
    yield END_OF_ARCHIVE;
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 1 << 20 });
}
