/** Snapshot a directory tree (metadata, content hashes, xattrs) for comparisons in tests. */
import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../src/common/native.js';

export interface NodeInfo {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  mode: number; // 07777 bits
  uid: number;
  gid: number;
  size: number;
  sha?: string;
  link?: string;
  rdev?: number;
  xattrs: Record<string, string>; // hex values
  mtime: number; // seconds
  ino: number;
  nlink: number;
}

export function xattrsOf(p: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of native.llistxattr(p).sort()) out[n] = native.lgetxattr(p, n).toString('hex');
  return out;
}

export async function snapshot(root: string): Promise<Map<string, NodeInfo>> {
  const out = new Map<string, NodeInfo>();
  async function walk(rel: string): Promise<void> {
    const abs = rel ? path.join(root, rel) : root;
    for (const n of (await readdir(abs)).sort()) {
      const r = rel ? `${rel}/${n}` : n;
      const p = path.join(root, r);
      const st = await lstat(p);
      const type: NodeInfo['type'] = st.isDirectory()
        ? 'dir'
        : st.isFile()
          ? 'file'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isCharacterDevice()
              ? 'char'
              : st.isBlockDevice()
                ? 'block'
                : st.isFIFO()
                  ? 'fifo'
                  : 'socket';
      const info: NodeInfo = {
        type,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        size: type === 'file' ? st.size : 0,
        xattrs: xattrsOf(p),
        mtime: Math.floor(st.mtimeMs / 1000),
        ino: st.ino,
        nlink: st.nlink,
      };
      if (type === 'file') info.sha = createHash('sha256').update(await readFile(p)).digest('hex');
      if (type === 'symlink') info.link = await readlink(p);
      if (type === 'char' || type === 'block') info.rdev = st.rdev;
      out.set(r, info);
      if (type === 'dir') await walk(r);
    }
  }
  await walk('');
  return out;
}

/** Comparable form: drops inode numbers but keeps hardlink grouping (by first path of each inode). */
export function comparable(s: Map<string, NodeInfo>, ignoreMtime: string[] = []): Record<string, unknown> {
  const firstByIno = new Map<number, string>();
  const out: Record<string, unknown> = {};
  for (const [k, v] of s) {
    const { ino, ...rest } = v;
    let linkGroup: string | undefined;
    if (v.type !== 'dir' && v.nlink > 1) {
      linkGroup = firstByIno.get(ino) ?? k;
      if (!firstByIno.has(ino)) firstByIno.set(ino, k);
    }
    out[k] = { ...rest, linkGroup, mtime: ignoreMtime.includes(k) ? 0 : rest.mtime };
  }
  return out;
}

export async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'layerfs-archive-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
