/** Extended attributes through the overlay: overlay's private `trusted.overlay.*` names are hidden and refused. */
import { native } from '../../common/native.js';
import { isCode } from './errors.js';

const PRIVATE_PREFIX = 'trusted.overlay.';

export function isPrivateXattr(name: string): boolean {
  return name.startsWith(PRIVATE_PREFIX);
}

export function listVisible(p: string): string[] {
  return native.llistxattr(p).filter((n) => !isPrivateXattr(n));
}

/** Copy every non-private xattr from src to dst (copy-up). Names the target fs refuses are skipped, like the kernel does for ENOTSUP. */
export function copyXattrs(src: string, dst: string): void {
  let names: string[];
  try {
    names = listVisible(src);
  } catch (err) {
    if (isCode(err, 'ENOTSUP', 'EOPNOTSUPP')) return;
    throw err;
  }
  for (const name of names) {
    let value: Buffer;
    try {
      value = native.lgetxattr(src, name);
    } catch (err) {
      if (isCode(err, 'ENODATA')) continue;
      throw err;
    }
    try {
      native.lsetxattr(dst, name, value, 0);
    } catch (err) {
      if (isCode(err, 'ENOTSUP', 'EOPNOTSUPP') || (name.startsWith('security.') && isCode(err, 'EPERM', 'EACCES'))) continue;
      throw err;
    }
  }
}

/**
 * The overlay inode number of an upper entry made by copy-up, kept across remounts. In overlay's private
 * namespace: kernel overlay hides and ignores it, layer export drops it, so the upper dir stays a plain overlay
 * upper dir (no index files).
 */
export const INO_XATTR = 'trusted.overlay.layerfs.ino';

export function readInoXattr(p: string): number | null {
  return readInoRecord(p)?.ino ?? null;
}

/**
 * The record kept on an upper file made by copy-up: its inode number, and (after `/`) the names of the lower inode
 * that were hidden (whited out, shadowed) when it was copied up, so not linked to the upper inode: kernel overlay
 * (index=on) keeps counting them in st_nlink, and so do we.
 */
export function readInoRecord(p: string): { ino: number; hiddenLinks: number } | null {
  try {
    const [a, b] = native.lgetxattr(p, INO_XATTR).toString().split('/');
    const ino = Number(a);
    const hidden = b === undefined ? 0 : Number(b);
    return Number.isSafeInteger(ino) && ino > 0 ? { ino, hiddenLinks: Number.isSafeInteger(hidden) && hidden > 0 ? hidden : 0 } : null;
  } catch {
    return null;
  }
}

/** Best effort: without it (no trusted xattrs: not root) the number falls back to the upper st_ino on remount. */
export function writeInoXattr(p: string, ino: number, hiddenLinks = 0): void {
  try {
    native.lsetxattr(p, INO_XATTR, Buffer.from(hiddenLinks > 0 ? `${ino}/${hiddenLinks}` : String(ino)), 0);
  } catch {
    // not root or no xattr support
  }
}
