/** Tar entry names -> safe layer-relative paths. */
import { badEntry as badTar, displayName } from './tarparse.js';

/**
 * Normalise a tar entry name (or hardlink target) to a relative path inside the layer:
 * leading `/` and `./` are stripped as tar does, `.` and empty components dropped. Any `..`
 * component is refused outright (GNU tar refuses such members too): a layer has no reason to
 * carry one, and resolving it lexically would disagree with the kernel once symlinks exist.
 * Returns '' for the layer root itself.
 */
export function normalizeName(name: string, entry: string, what = 'name'): string {
  if (name.includes('\0')) throw badTar(entry, `${what} contains a NUL byte`);
  const parts = name.split('/');
  const out: string[] = [];
  for (const p of parts) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw badTar(entry, `${what} ${JSON.stringify(displayName(name))} contains a ".." component (would climb out of the layer)`);
    out.push(p);
  }
  return out.join('/');
}

export function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

export function baseOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? rel : rel.slice(i + 1);
}

export function joinRel(a: string, b: string): string {
  return a === '' ? b : `${a}/${b}`;
}
