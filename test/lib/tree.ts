/** Snapshot a directory tree (async fs only, so it is safe on a FUSE mount served by a child). */
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { native } from '../../src/common/native.js';

export interface NodeInfo {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: string;
  xattrs?: Record<string, string>;
  nlink?: number;
}

export interface SnapshotOptions {
  /** Record xattrs (default true); names matching `skipXattr` are left out. */
  xattrs?: boolean;
  skipXattr?: RegExp;
  nlink?: boolean;
}

function typeOf(st: import('node:fs').Stats): NodeInfo['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

export async function snapshot(root: string, opts: SnapshotOptions = {}): Promise<Record<string, NodeInfo>> {
  const out: Record<string, NodeInfo> = {};
  const walk = async (rel: string): Promise<void> => {
    const abs = path.join(root, rel);
    const st = await lstat(abs);
    const info: NodeInfo = { type: typeOf(st), mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
    if (info.type === 'file') {
      info.size = st.size;
      info.sha256 = createHash('sha256').update(await readFile(abs)).digest('hex');
    }
    if (info.type === 'symlink') info.target = await readlink(abs);
    if (info.type === 'char' || info.type === 'block') info.rdev = `${Math.floor(st.rdev / 256)},${st.rdev % 256}`;
    if (opts.nlink && info.type !== 'dir') info.nlink = st.nlink;
    if (opts.xattrs !== false && info.type !== 'symlink') {
      const names = native.llistxattr(abs).filter((n) => !(opts.skipXattr && opts.skipXattr.test(n))).sort();
      if (names.length) {
        info.xattrs = {};
        for (const n of names) info.xattrs[n] = native.lgetxattr(abs, n).toString('base64');
      }
    }
    out[rel === '' ? '.' : rel] = info;
    if (info.type === 'dir') for (const name of (await readdir(abs)).sort()) await walk(rel === '' ? name : `${rel}/${name}`);
  };
  await walk('');
  return out;
}
