/**
 * exportDiff: an overlay upper dir (kernel format) -> an OCI layer tar with `.wh.` whiteouts.
 * Walks in sorted order so the same tree always gives the same bytes.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { isErrno } from '../common/errors.js';
import { native } from '../common/native.js';
// Own header writer, not tar-stream's packer: its encodePax builds records from strings (UTF-8), so binary xattr values cannot be written.
import { encodeHeader, END_OF_ARCHIVE, padLen, type WriteHeader } from './tarwrite.js';

const READ_CHUNK = 1 << 20;

function readXattrs(abs: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = native.llistxattr(abs);
  } catch (e) {
    if (isErrno(e, 'EOPNOTSUPP') || isErrno(e, 'ENOTSUP')) return out;
    throw e;
  }
  for (const n of names) {
    try {
      out.set(n, native.lgetxattr(abs, n));
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

function byBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
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

async function* fileBody(abs: string, size: number, name: string): AsyncGenerator<Buffer> {
  const fh = await open(abs, 'r');
  try {
    let left = size;
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) throw new Error(`exportDiff: ${name} shrank while being read`);
      left -= bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
  const pad = padLen(size);
  if (pad) yield Buffer.alloc(pad);
}

async function* walk(root: string, rel: string, inodes: Map<string, string>): AsyncGenerator<Buffer> {
  const dirAbs = rel === '' ? root : `${root}/${rel}`;
  const names = (await readdir(dirAbs)).sort(byBytes);
  for (const n of names) {
    const r = rel === '' ? n : `${rel}/${n}`;
    const abs = `${dirAbs}/${n}`;
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
      yield encodeHeader({ ...b, type: 'file', size, xattrs });
      yield* fileBody(abs, size, r);
    } else if (st.isSymbolicLink()) {
      yield encodeHeader({ ...b, type: 'symlink', linkname: await readlink(abs), xattrs });
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

export function exportDiff(upperDir: string): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    yield* walk(upperDir, '', new Map());
    yield END_OF_ARCHIVE;
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 1 << 20 });
}
