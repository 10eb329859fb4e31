/**
 * Whiteouts and opaque dirs, in both forms:
 *  - kernel overlay format (what we write): char device 0/0 = whiteout, xattr trusted.overlay.opaque=y = opaque dir;
 *  - AUFS/OCI file form (read only): `.wh.NAME` hides NAME in lower layers, `.wh..wh..opq` makes its dir opaque.
 */
import path from 'node:path';
import { mkWhiteout, native } from '../../common/native.js';
import { isCode } from './errors.js';
import { lstatXOrNull, type ExactStat } from './stat.js';

export const WH_PREFIX = '.wh.';
export const WH_OPAQUE = '.wh..wh..opq';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

export function isWhiteoutStat(st: { isCharacterDevice(): boolean; rdev: number }): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** `.wh.NAME` file names: the name they hide, or null. The opaque marker is not a whiteout of a name. */
export function whiteoutTarget(name: string): string | null {
  if (!name.startsWith(WH_PREFIX) || name === WH_OPAQUE) return null;
  return name.slice(WH_PREFIX.length);
}

export function isHiddenName(name: string): boolean {
  return name.startsWith(WH_PREFIX);
}

/** lstat of a path on a backing dir, never on the mount: synchronous (a threadpool round trip costs more than the
 *  syscall) and without an exception for the common ENOENT. */
export function lstatOrNullSync(p: string): ExactStat | null {
  try {
    return lstatXOrNull(p);
  } catch (err) {
    if (isCode(err, 'ENOENT', 'ENOTDIR')) return null;
    throw err;
  }
}

export async function lstatOrNull(p: string): Promise<ExactStat | null> {
  return lstatOrNullSync(p);
}

export function hasOpaqueXattr(dir: string): boolean {
  try {
    const v = native.lgetxattr(dir, OPAQUE_XATTR);
    return v.length === 1 && v[0] === 0x79; // 'y'
  } catch {
    return false;
  }
}

/** Opaque in either form. `listing` (a lower dir's cached names) saves the lstat for the file form. */
export async function isOpaqueDir(dir: string, listing?: ReadonlySet<string> | ReadonlyMap<string, unknown>): Promise<boolean> {
  if (hasOpaqueXattr(dir)) return true;
  if (listing) return listing.has(WH_OPAQUE);
  return (await lstatOrNull(path.join(dir, WH_OPAQUE))) !== null;
}

export function setOpaque(dir: string): void {
  native.lsetxattr(dir, OPAQUE_XATTR, Buffer.from('y'), 0);
}

export function makeWhiteout(p: string): void {
  mkWhiteout(p);
}
