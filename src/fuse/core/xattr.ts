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
  try {
    const v = Number(native.lgetxattr(p, INO_XATTR).toString());
    return Number.isSafeInteger(v) && v > 0 ? v : null;
  } catch {
    return null;
  }
}

/** Best effort: without it (no trusted xattrs: not root) the number falls back to the upper st_ino on remount. */
export function writeInoXattr(p: string, ino: number): void {
  try {
    native.lsetxattr(p, INO_XATTR, Buffer.from(String(ino)), 0);
  } catch {
    // not root or no xattr support
  }
}
