/**
 * Read-only lower layers: they never change while mounted, so each directory's listing is read once and cached,
 * and lookups in a lower dir are answered from memory. A lower dir is addressed as { layer, path }.
 */
import { lstatSync, readdirSync, type Dirent } from 'node:fs';
import { readdir, lstat } from 'node:fs/promises';
import path from 'node:path';
import { isWhiteoutStat, whiteoutTarget, WH_OPAQUE } from './whiteout.js';

export interface LowerDir {
  layer: number; // index into Overlay.lowers (0 = top lower)
  path: string; // absolute path of the directory inside that layer
  /** Known to be at most SMALL_DIR bytes (from the stat of this very dir at lookup): listed synchronously. */
  small?: boolean;
}

/**
 * A lower dir this size or smaller (st_size: one or a few blocks, a few hundred entries) is listed on the calling
 * thread: a threadpool round trip (two thread wake-ups, ~150 us on a VM) cost more than the getdents itself, even
 * cold. Bigger ones, and dirs of unknown size, go to the threadpool, so that one huge dir on a slow NFS store does
 * not hold up every other request.
 */
export const SMALL_DIR = 16 * 1024;

/** Listings read ahead at most at once (threadpool jobs), so that requests' own fs calls still find threads. */
const PREFETCH_MAX = 4;
/** Dirs waiting to be read ahead at most (the oldest are dropped: a walk has moved on from them). */
const PREFETCH_QUEUE = 4096;

/** Entry kinds in a lower listing: d = dir, w = whiteout (char 0/0), o = anything else. */
export type LowerKind = 'd' | 'w' | 'o';

/**
 * One lower dir's entries. Names in a sorted array, searched by bisection, not a Map: 8 bytes an entry instead of
 * ~45 (the base layer of a /usr copy has 45k), and a found name is this array's string, which the node made for
 * it keeps, so a name is held once, not once here and once per node.
 */
export interface LowerListing {
  /** Real entries (no whiteouts of either form, no opaque marker), in JS string order. */
  names: readonly string[];
  /** Per entry of `names`: 1 for a dir. */
  dirs: Uint8Array;
  /** Names hidden in layers below by this dir: char 0/0 whiteouts and `.wh.NAME` files. */
  whiteouts: ReadonlySet<string>;
  /** `.wh..wh..opq` present. */
  opaqueFile: boolean;
}

/** Shared by every listing without whiteouts (most dirs): an empty Set still costs ~150 bytes. */
const NO_WHITEOUTS: ReadonlySet<string> = new Set();

export class LowerCache {
  /** A listing being read (a promise), then the listing itself: one map, and no await for a listing in hand. */
  private listings = new Map<string, Promise<LowerListing> | LowerListing>();
  private prefetching = 0;
  private prefetchQueue: string[] = [];

  listing(ld: LowerDir | string): Promise<LowerListing> {
    const dir = typeof ld === 'string' ? ld : ld.path;
    const have = this.listings.get(dir);
    if (have instanceof Promise) return have;
    if (have) return Promise.resolve(have);
    if (typeof ld !== 'string' && ld.small) {
      try {
        const l = toListing(dir, readdirSync(dir, { withFileTypes: true }));
        this.listings.set(dir, l);
        return Promise.resolve(l);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.readAsync(dir);
  }

  /** The listing of dir if it has been read: a lookup through 100 layers then costs no await per layer. */
  now(dir: string): LowerListing | undefined {
    const have = this.listings.get(dir);
    return have instanceof Promise ? undefined : have;
  }

  /**
   * Read these dirs' listings ahead, in the background (threadpool, PREFETCH_MAX at a time): the subdirs of a dir
   * just listed, which a walk (find, tar, du, ls -R) visits next. Their disk reads then overlap the requests in
   * between instead of each waiting in turn. A stack, the first subdir on top: a walk goes depth first, so the
   * subdirs of the dir it entered last are the next it needs. Dirs already listed are skipped.
   */
  prefetch(dirs: readonly string[]): void {
    for (let i = dirs.length - 1; i >= 0; i--) if (!this.listings.has(dirs[i])) this.prefetchQueue.push(dirs[i]);
    if (this.prefetchQueue.length > PREFETCH_QUEUE) this.prefetchQueue.splice(0, this.prefetchQueue.length - PREFETCH_QUEUE);
    this.pump();
  }

  private pump(): void {
    while (this.prefetching < PREFETCH_MAX && this.prefetchQueue.length > 0) {
      const dir = this.prefetchQueue.pop()!;
      if (this.listings.has(dir)) continue;
      this.prefetching++;
      void this.readAsync(dir)
        .catch(() => undefined)
        .finally(() => {
          this.prefetching--;
          this.pump();
        });
    }
  }

  /** Read dir's listing on the threadpool; in the map as a promise until read (forgotten if the read fails). */
  private readAsync(dir: string): Promise<LowerListing> {
    const p = readdir(dir, { withFileTypes: true }).then((d) => toListing(dir, d));
    this.listings.set(dir, p);
    p.then(
      (l) => {
        if (this.listings.get(dir) === p) this.listings.set(dir, l);
      },
      () => {
        if (this.listings.get(dir) === p) this.listings.delete(dir);
      },
    );
    return p;
  }
}

/** A listing from a dir's entries. lstat only for char devices (whiteout or not) and DT_UNKNOWN: rare, so sync. */
function toListing(dir: string, dirents: Dirent[]): LowerListing {
  const entries: [string, LowerKind][] = [];
  let whiteouts: Set<string> | null = null;
  let opaqueFile = false;
  for (const d of dirents) {
    const name = d.name;
    if (name === WH_OPAQUE) {
      opaqueFile = true;
      continue;
    }
    const hidden = whiteoutTarget(name);
    if (hidden !== null) {
      (whiteouts ??= new Set()).add(hidden);
      continue;
    }
    let kind: LowerKind;
    if (d.isDirectory()) kind = 'd';
    else if (d.isCharacterDevice()) kind = isWhiteoutStat(lstatSync(path.join(dir, name))) ? 'w' : 'o';
    else if (d.isFile() || d.isSymbolicLink() || d.isBlockDevice() || d.isFIFO() || d.isSocket()) kind = 'o';
    else {
      const st = lstatSync(path.join(dir, name)); // DT_UNKNOWN (some network filesystems)
      kind = st.isDirectory() ? 'd' : isWhiteoutStat(st) ? 'w' : 'o';
    }
    if (kind === 'w') (whiteouts ??= new Set()).add(name);
    else entries.push([name, kind]);
  }
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); // libuv hands them in strcmp order: mostly a no-op
  const dirs = new Uint8Array(entries.length);
  entries.forEach((e, i) => (dirs[i] = e[1] === 'd' ? 1 : 0));
  return { names: entries.map((e) => e[0]), dirs, whiteouts: whiteouts ?? NO_WHITEOUTS, opaqueFile };
}

/** Index of `name` in a listing, -1 if absent. */
export function findName(l: LowerListing, name: string): number {
  const a = l.names;
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = a[mid];
    if (v === name) return mid;
    if (v < name) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/**
 * Hardlink aliases inside one lower layer: inode -> relative paths. Built by one walk of the layer, only when a
 * file with st_nlink > 1 is copied up (so that its other names keep sharing the copied-up inode).
 */
export class AliasIndex {
  private byLayer = new Map<number, Promise<Map<string, string[]>>>();

  aliases(layer: number, root: string, dev: number, ino: number): Promise<string[]> {
    let p = this.byLayer.get(layer);
    if (!p) {
      p = walkLayer(root);
      this.byLayer.set(layer, p);
    }
    return p.then((m) => m.get(`${dev}:${ino}`) ?? []);
  }
}

async function walkLayer(root: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  const stack = [''];
  while (stack.length) {
    const rel = stack.pop()!;
    const dirents = await readdir(path.join(root, rel), { withFileTypes: true });
    for (const d of dirents) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) {
        stack.push(r);
        continue;
      }
      const st = await lstat(path.join(root, r));
      if (st.nlink < 2) continue;
      const k = `${st.dev}:${st.ino}`;
      const list = out.get(k);
      if (list) list.push(r);
      else out.set(k, [r]);
    }
  }
  return out;
}
