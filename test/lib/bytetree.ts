/**
 * A directory tree snapshot that treats names as bytes (Buffer paths throughout), for comparing a
 * layerfs apply with GNU tar's extraction: type, mode, owner, size, mtime, content hash, link
 * target bytes, device numbers, xattrs and, for regular files, the data/hole map (SEEK_DATA/SEEK_HOLE).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { native, SEEK_DATA, SEEK_HOLE } from '../../src/common/native.js';

export interface ByteNode {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtime?: number;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: string;
  xattrs?: Record<string, string>;
  holes?: string;
}

/** Data segments of an open file as "off+len,..." (the holes are what is between). */
export function dataMap(fd: number, size: number): string {
  const out: string[] = [];
  let pos = 0;
  while (pos < size) {
    let d: number;
    try {
      d = native.lseek(fd, pos, SEEK_DATA);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENXIO') break;
      throw e;
    }
    const h = native.lseek(fd, d, SEEK_HOLE);
    out.push(`${d}+${h - d}`);
    pos = h;
  }
  return out.join(',');
}

const key = (b: Buffer) => b.toString('latin1');

export function byteTree(root: string, opts: { mtimeDirs?: boolean } = {}): Record<string, ByteNode> {
  const out: Record<string, ByteNode> = {};
  const walk = (dir: Buffer, rel: string) => {
    const names = fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare);
    for (const n of names) {
      const abs = Buffer.concat([dir, Buffer.from('/'), n]);
      const r = rel === '' ? key(n) : `${rel}/${key(n)}`;
      const st = fs.lstatSync(abs);
      const node: ByteNode = {
        type: st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : st.isFIFO() ? 'fifo' : 'other',
        mode: (st.mode & 0o7777).toString(8),
        uid: st.uid,
        gid: st.gid,
      };
      if (!st.isDirectory() || opts.mtimeDirs) node.mtime = Math.floor(st.mtimeMs / 1000);
      if (st.isFile()) {
        node.size = st.size;
        const fd = fs.openSync(abs, 'r');
        try {
          node.holes = dataMap(fd, st.size);
          node.sha256 = createHash('sha256').update(fs.readFileSync(fd)).digest('hex');
        } finally {
          fs.closeSync(fd);
        }
      }
      if (st.isSymbolicLink()) node.target = key(fs.readlinkSync(abs, { encoding: 'buffer' }));
      if (st.isCharacterDevice() || st.isBlockDevice()) node.rdev = String(st.rdev);
      let xs: string[] = [];
      try {
        xs = native.llistxattr(abs as unknown as string).filter((x) => !x.startsWith('security.selinux'));
      } catch {
        xs = [];
      }
      if (xs.length) {
        node.xattrs = {};
        for (const x of xs.sort()) node.xattrs[x] = native.lgetxattr(abs as unknown as string, x).toString('hex');
      }
      out[r] = node;
      if (st.isDirectory()) walk(abs, r);
    }
  };
  walk(Buffer.from(root), '');
  return out;
}
