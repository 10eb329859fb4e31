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
