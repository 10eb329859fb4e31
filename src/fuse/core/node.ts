/**
 * The inode cache of the overlay: one Node per merged file, keyed by its inode number (the node id handed to
 * transports). A node lives for the life of the mount, so its inode number is stable, also across copy-up.
 */
import type { LowerDir } from './layer.js';

export type Kind = 'dir' | 'file' | 'symlink' | 'other';

export function kindOf(st: { isDirectory(): boolean; isFile(): boolean; isSymbolicLink(): boolean }): Kind {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  return 'other';
}

/** One name of a node: (parent dir node, entry name). Dirs have exactly one; files one per hardlink seen. */
export interface Link {
  parent: Node;
  name: string;
}

/** The fields of a stat the overlay answers with. A fs.Stats (with its four Date objects) costs ~5x the memory. */
export interface StatLike {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  blksize: number;
  blocks: number;
  /** Times as seconds and nanoseconds apart: exact (a double of milliseconds is not). */
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

const NO_KEYS = Object.freeze([]) as unknown as string[];

/**
 * Lower stats of all nodes, in chunks of typed arrays: per slot 6 doubles (size, blocks, rdev, three times' seconds)
 * and 8 32-bit fields (mode, nlink, uid, gid, blksize, three times' nanoseconds): 80 bytes, where an object with boxed heap numbers costs ~4x more.
 * Fixed-size chunks, not one array doubled on growth: no copy, no half-empty tail, no old+new peak while copying.
 * Slots are freed when a node drops its lower stat (copy-up, forget).
 */
const CHUNK = 4096;
const FD = 6;
const FU = 8;
class StatStore {
  private readonly dbl: Float64Array[] = [];
  private readonly u32: Uint32Array[] = [];
  private readonly freeSlots: number[] = [];
  private used = 0;

  put(st: StatLike): number {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      slot = this.used++;
      if (slot >= this.dbl.length * CHUNK) {
        this.dbl.push(new Float64Array(CHUNK * FD));
        this.u32.push(new Uint32Array(CHUNK * FU));
      }
    }
    const c = (slot / CHUNK) | 0;
    const i = slot % CHUNK;
    const d = this.dbl[c];
    const u = this.u32[c];
    let o = i * FD;
    d[o] = st.size;
    d[o + 1] = st.blocks;
    d[o + 2] = st.rdev;
    d[o + 3] = st.atimeSec;
    d[o + 4] = st.mtimeSec;
    d[o + 5] = st.ctimeSec;
    o = i * FU;
    u[o] = st.mode;
    u[o + 1] = st.nlink;
    u[o + 2] = st.uid;
    u[o + 3] = st.gid;
    u[o + 4] = st.blksize;
    u[o + 5] = st.atimeNsec;
    u[o + 6] = st.mtimeNsec;
    u[o + 7] = st.ctimeNsec;
    return slot;
  }

  get(slot: number): StatLike {
    const c = (slot / CHUNK) | 0;
    const i = slot % CHUNK;
    const d = this.dbl[c];
    const u = this.u32[c];
    const o = i * FD;
    const p = i * FU;
    return { mode: u[p], nlink: u[p + 1], uid: u[p + 2], gid: u[p + 3], rdev: d[o + 2], size: d[o], blksize: u[p + 4], blocks: d[o + 1], atimeSec: d[o + 3], atimeNsec: u[p + 5], mtimeSec: d[o + 4], mtimeNsec: u[p + 6], ctimeSec: d[o + 5], ctimeNsec: u[p + 7] };
  }

  free(slot: number): void {
    this.freeSlots.push(slot);
  }
}
const statStore = new StatStore();

/** Shared by every node without lower dirs (never mutated: nodes get a new array). */
const NO_LOWER_DIRS = Object.freeze([]) as unknown as LowerDir[];

const KINDS: readonly Kind[] = ['dir', 'file', 'symlink', 'other'];
const UPPER = 4;
const REMOVED = 8;
const NO_XATTRS = 16;
const LAYER_SHIFT = 8;
/** Layer indexes fit in 16 bits (the kernel's overlay stops at 500 lowers). */
const LAYER_MAX = 0xffff;

export class Node {
  readonly ino: number;
  /** kind, upper, removed, noXattrs and lowerLayer packed in one small integer (see the accessors): five fields
   *  of their own cost 32 bytes a node more. */
  private bits = 0;
  get kind(): Kind {
    return KINDS[this.bits & 3];
  }
  set kind(k: Kind) {
    this.bits = (this.bits & ~3) | KINDS.indexOf(k);
  }
  /** The first name leading here (links[0], the one used to reach the upper copy): its dir, null for the root and
   *  for a node whose last name is gone. Kept as two fields: an array of link objects per node costs ~100 bytes. */
  parent: Node | null = null;
  /** The first name's entry name ('' without one). */
  name = '';
  /** Names beyond the first (hardlinks seen). */
  private moreLinks: Link[] | null = null;
  /** Present in the upper layer (at upperPath). */
  get upper(): boolean {
    return (this.bits & UPPER) !== 0;
  }
  set upper(v: boolean) {
    this.bits = v ? this.bits | UPPER : this.bits & ~UPPER;
  }
  /** Non-dirs not yet copied up: the layer index of the lower file (its path: lowerPath); -1 for none. */
  get lowerLayer(): number {
    return (this.bits >>> LAYER_SHIFT) - 1;
  }
  set lowerLayer(v: number) {
    if (v < -1 || v >= LAYER_MAX) throw new RangeError(`layer index ${v} out of range`);
    this.bits = (this.bits & ((1 << LAYER_SHIFT) - 1)) | ((v + 1) << LAYER_SHIFT);
  }
  /** The lower file's path when it cannot be derived from the first name (see lowerPath). */
  private fixedLowerPath: string | null = null;
  private lowers: LowerDir[] = NO_LOWER_DIRS;
  private childMap: Map<string, Node | null> | null = null;

  /** Dirs: the lower dirs merged under this one, top first (empty when opaque or pure upper). */
  get lowerDirs(): LowerDir[] {
    return this.lowers;
  }
  set lowerDirs(v: LowerDir[]) {
    // lower children find their file through this dir's lower dirs: they keep the path they have now
    if (this.childMap) for (const c of this.childMap.values()) c?.freezeLowerPath();
    this.lowers = v;
  }

  /**
   * Non-dirs not yet copied up: the lower file. Derived (parent's lower dir in lowerLayer + name) rather than
   * stored: a path string per node is most of a node's memory. Fixed once the derivation could change.
   */
  get lowerPath(): string | null {
    if (this.fixedLowerPath !== null) return this.fixedLowerPath;
    if (this.lowerLayer < 0 || this.kind === 'dir' || this.parent === null) return null;
    for (const ld of this.parent.lowers) if (ld.layer === this.lowerLayer) return ld.path + '/' + this.name;
    return null;
  }
  set lowerPath(p: string | null) {
    this.fixedLowerPath = null;
    if (p !== null && p !== this.lowerPath) this.fixedLowerPath = p;
  }

  private freezeLowerPath(): void {
    if (this.fixedLowerPath === null && this.lowerLayer >= 0 && this.kind !== 'dir') this.fixedLowerPath = this.lowerPath;
  }

  /** Names known to lead here, the first one first (a fresh array). The root has none. */
  get links(): Link[] {
    const out: Link[] = this.parent ? [{ parent: this.parent, name: this.name }] : [];
    if (this.moreLinks) out.push(...this.moreLinks);
    return out;
  }
  set links(ls: Link[]) {
    this.freezeLowerPath();
    this.parent = ls[0]?.parent ?? null;
    this.name = ls[0]?.name ?? '';
    this.moreLinks = ls.length > 1 ? ls.slice(1) : null;
  }

  /** How many names are known to lead here. */
  get linkCount(): number {
    return (this.parent ? 1 : 0) + (this.moreLinks?.length ?? 0);
  }

  /** Dirs: cached lookups; null = known absent. Made on first use (files never have one). */
  get children(): Map<string, Node | null> {
    return (this.childMap ??= new Map());
  }
  /** Bumped by every change of this dir's entries, so a racing lookup knows to retry. */
  gen = 0;
  /** Removed from the namespace (rmdir, or last known name unlinked). */
  get removed(): boolean {
    return (this.bits & REMOVED) !== 0;
  }
  set removed(v: boolean) {
    this.bits = v ? this.bits | REMOVED : this.bits & ~REMOVED;
  }
  /** Lower-only files: names unlinked through the mount, subtracted from the lower st_nlink (<= 0). Upper files:
   *  names of the lower inode hidden when it was copied up (not linked to the upper inode), added to the upper
   *  st_nlink (>= 0), as kernel overlay (index=on) counts them. */
  nlinkDelta = 0;
  /** Known to have no visible xattrs (the kernel asks for security.capability before every write): getxattr
   *  answers ENODATA without a syscall. Cleared by setxattr and copy-up; removing xattrs keeps it true. */
  get noXattrs(): boolean {
    return (this.bits & NO_XATTRS) !== 0;
  }
  set noXattrs(v: boolean) {
    this.bits = v ? this.bits | NO_XATTRS : this.bits & ~NO_XATTRS;
  }
  /** Not copied up: the lower entry's stat, read at lookup. Lower layers do not change while mounted, so getattr
   *  answers from it without a syscall (atime aside) until the copy-up, after which the upper copy is stat'ed. */
  private statSlot = -1;
  get lowerStat(): StatLike | null {
    return this.statSlot < 0 ? null : statStore.get(this.statSlot);
  }
  set lowerStat(st: StatLike | null) {
    if (this.statSlot >= 0) statStore.free(this.statSlot);
    this.statSlot = st === null ? -1 : statStore.put(st);
  }
  /** Identity keys in the overlay's key map (lower and/or upper dev:ino); only for nodes that can have hardlinks
   *  (upper ones, lower ones with st_nlink > 1). Never mutated in place (the empty one is shared). */
  keys: string[] = NO_KEYS;

  constructor(ino: number, kind: Kind, upper: boolean) {
    this.ino = ino;
    this.bits = KINDS.indexOf(kind) | (upper ? UPPER : 0); // lowerLayer -1 (stored as 0)
  }

  addLink(parent: Node, name: string): void {
    const ls = this.links;
    if (!ls.some((l) => l.parent === parent && l.name === name)) this.links = [...ls, { parent, name }];
  }

  removeLink(parent: Node, name: string): void {
    this.links = this.links.filter((l) => !(l.parent === parent && l.name === name));
  }

  /** Is `this` (a dir) `other` or one of its ancestors? */
  isAncestorOf(other: Node): boolean {
    for (let n: Node | null = other; n; n = n.parent) if (n === this) return true;
    return false;
  }
}

/** What getattr returns: a local filesystem's stat, with the overlay's inode number. */
export interface NodeStat {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  blksize: number;
  blocks: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

export interface DirEntry {
  name: string;
  ino: number;
  kind: Kind;
}
