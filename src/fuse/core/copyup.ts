/**
 * Copy-up: make a lower file or dir exist in the upper layer before its first change. Data, mode, owner, times
 * and xattrs are copied into a temp name in the workdir, then renamed into place; parents go first; the parent's
 * times are restored afterwards (as the kernel does). A lower file with other hardlinks gets those names linked to
 * the one upper inode, so the names keep sharing (kernel overlay with index=off breaks them apart).
 */
import { constants as fsc } from 'node:fs';
import { chmod, copyFile, lchown, link, mkdir, open, readlink, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { native, RENAME_NOREPLACE } from '../../common/native.js';
import { fsErr } from './errors.js';
import { copySparse } from './rangecopy.js';
import type { AliasIndex } from './layer.js';
import type { Node } from './node.js';
import { lstatOrNull } from './whiteout.js';
import { lstatX as lstat, setTimes, type ExactStat } from './stat.js';
import { copyXattrs, writeInoXattr } from './xattr.js';

export interface CopyUpHost {
  upperPath(n: Node): string;
  tmpPath(): string;
  lowerRoot(layer: number): string;
  registerUpper(n: Node, st: { dev: number; ino: number }): void;
  lookupPath(rel: string): Promise<Node | null>;
  childNodes(dir: Node): Promise<Node[]>;
  readonly aliases: AliasIndex;
}

export interface CopyUpOptions {
  /** false: create the upper file empty (open with O_TRUNC, truncate to 0). */
  data?: boolean;
}

export const major = (dev: number): number => ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
export const minor = (dev: number): number => (dev & 0xff) | ((dev >>> 12) & 0xfff00);

async function restoreTimes(p: string, st: ExactStat): Promise<void> {
  try {
    setTimes(p, st);
  } catch {
    // best effort, as the kernel's
  }
}

/** Must be called with the overlay's mutation lock held. */
export async function copyUp(h: CopyUpHost, n: Node, opts: CopyUpOptions = {}): Promise<void> {
  if (n.upper) return;
  const lk = n.links[0];
  if (!lk) throw fsErr('ENOENT', `copy-up of inode ${n.ino} without a name`);
  await copyUp(h, lk.parent);
  const parentUpper = h.upperPath(lk.parent);
  const target = path.join(parentUpper, lk.name);
  const src = n.kind === 'dir' ? n.lowerDirs[0]?.path : n.lowerPath;
  if (!src) throw fsErr('EIO', `inode ${n.ino} has no layer`);
  const st = await lstat(src);
  const pst = await lstat(parentUpper);
  const tmp = h.tmpPath();
  try {
    switch (n.kind) {
      case 'dir':
        await mkdir(tmp, { mode: st.mode & 0o7777 });
        break;
      case 'file':
        if (opts.data === false) await (await open(tmp, 'wx', 0o600)).close();
        // holes stay holes (as kernel overlay's copy-up keeps them); a dense file: libuv's copy, off the JS thread
        else if (st.blocks * 512 < st.size) await copySparse(src, tmp, st.size);
        else await copyFile(src, tmp, fsc.COPYFILE_EXCL);
        break;
      case 'symlink':
        await symlink(await readlink(src), tmp);
        break;
      default:
        native.mknod(tmp, st.mode, major(st.rdev), minor(st.rdev));
    }
    copyXattrs(src, tmp);
    writeInoXattr(tmp, n.ino); // the number this node has had so far stays after a remount
    await lchown(tmp, st.uid, st.gid);
    if (n.kind !== 'symlink') await chmod(tmp, st.mode & 0o7777); // after chown, which clears set-id bits
    setTimes(tmp, st); // exact nanoseconds, as kernel overlay copies them
    native.renameat2(tmp, target, RENAME_NOREPLACE);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
  await restoreTimes(parentUpper, pst);
  h.registerUpper(n, await lstat(target));
  n.upper = true;
  if (n.kind !== 'dir' && st.nlink > 1 && n.lowerLayer >= 0) await linkAliases(h, n, st, target);
}

/** Give every visible name of the same lower inode a hardlink to the new upper inode. */
async function linkAliases(h: CopyUpHost, n: Node, st: ExactStat, target: string): Promise<void> {
  const rels = await h.aliases.aliases(n.lowerLayer, h.lowerRoot(n.lowerLayer), st.dev, st.ino);
  for (const rel of rels) await h.lookupPath(rel).catch(() => null); // attaches visible aliases to n.links
  for (const l of n.links.slice(1)) {
    await copyUp(h, l.parent);
    const dir = h.upperPath(l.parent);
    const p = path.join(dir, l.name);
    if (await lstatOrNull(p)) continue;
    const pst = await lstat(dir);
    await link(target, p);
    await restoreTimes(dir, pst);
  }
  // names of the lower inode that are not visible (whited out, shadowed by a higher layer) still count in st_nlink
  const hidden = Math.max(0, st.nlink - (await lstat(target)).nlink);
  n.nlinkDelta = hidden;
  if (hidden > 0) writeInoXattr(target, n.ino, hidden);
}

/** Copy a whole merged tree up (rename of a lower/merged dir). The caller marks the top opaque afterwards. */
export async function copyUpTree(h: CopyUpHost, dir: Node): Promise<void> {
  await copyUp(h, dir);
  for (const c of await h.childNodes(dir)) {
    if (c.kind === 'dir') await copyUpTree(h, c);
    else await copyUp(h, c);
  }
}
