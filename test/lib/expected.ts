/**
 * The rootfs an image's layers should merge into, computed from the layers' tar entries with the
 * OCI rules (later layers win, `.wh.NAME` deletes, `.wh..wh..opq` hides what lower layers had in
 * the dir). Compared against real mounts with the shape of `snapshot()` in tree.ts.
 */
import { createHash } from 'node:crypto';
import type { TarEntry } from './tarbuild.js';
import type { NodeInfo } from './tree.js';

const norm = (n: string) => n.replace(/^\.?\/+/, '').replace(/\/+$/, '');

export function expectedTree(layers: TarEntry[][]): Record<string, NodeInfo> {
  const tree = new Map<string, NodeInfo>();
  tree.set('.', { type: 'dir', mode: '755', uid: 0, gid: 0 });
  const under = (dir: string) => [...tree.keys()].filter((k) => k !== dir && (dir === '.' ? k !== '.' : k.startsWith(dir + '/')));
  for (const layer of layers) {
    const added = new Set<string>();
    const opaque: string[] = [];
    for (const e of layer) {
      const name = norm(e.name);
      const base = name.split('/').pop()!;
      const dir = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : '.';
      if (base === '.wh..wh..opq') {
        opaque.push(dir);
        continue;
      }
      if (base.startsWith('.wh.')) {
        const victim = dir === '.' ? base.slice(4) : `${dir}/${base.slice(4)}`;
        for (const k of [victim, ...under(victim)]) tree.delete(k);
        continue;
      }
      const type = e.type ?? (e.content !== undefined ? 'file' : 'directory');
      const mode = (e.mode ?? (type === 'directory' ? 0o755 : 0o644)).toString(8);
      let info: NodeInfo;
      if (type === 'link') {
        const target = tree.get(norm(e.linkname!))!;
        info = { ...target };
        if (info.nlink !== undefined) info.nlink++;
        tree.set(norm(e.linkname!), { ...info });
      } else if (type === 'directory') {
        info = { type: 'dir', mode, uid: e.uid ?? 0, gid: e.gid ?? 0 };
        const old = tree.get(name);
        if (old?.type !== 'dir') for (const k of under(name)) tree.delete(k);
      } else if (type === 'file') {
        const body = typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0));
        info = { type: 'file', mode, uid: e.uid ?? 0, gid: e.gid ?? 0, size: body.length, sha256: createHash('sha256').update(body).digest('hex') };
      } else if (type === 'symlink') {
        info = { type: 'symlink', mode: '777', uid: e.uid ?? 0, gid: e.gid ?? 0, target: e.linkname! };
      } else if (type === 'character-device' || type === 'block-device') {
        info = { type: type === 'character-device' ? 'char' : 'block', mode, uid: e.uid ?? 0, gid: e.gid ?? 0, rdev: `${e.devmajor ?? 0},${e.devminor ?? 0}` };
      } else if (type === 'fifo') {
        info = { type: 'fifo', mode, uid: e.uid ?? 0, gid: e.gid ?? 0 };
      } else {
        throw new Error(`expectedTree: unsupported entry type ${type}`);
      }
      const xattrs = Object.entries(e.pax ?? {}).filter(([k]) => k.startsWith('SCHILY.xattr.'));
      if (xattrs.length && info.type !== 'symlink') info.xattrs = Object.fromEntries(xattrs.map(([k, v]) => [k.slice(13), Buffer.from(v).toString('base64')]));
      tree.set(name, info);
      added.add(name);
    }
    for (const dir of opaque) for (const k of under(dir)) if (!added.has(k)) tree.delete(k);
  }
  return Object.fromEntries([...tree.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
