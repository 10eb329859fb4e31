/**
 * The inode cache of the overlay: one Node per merged file, keyed by its inode number (the node id handed to
 * transports). A node lives for the life of the mount, so its inode number is stable, also across copy-up.
 */
import type { Stats } from 'node:fs';
import type { LowerDir } from './layer.js';

export type Kind = 'dir' | 'file' | 'symlink' | 'other';

export function kindOf(st: Stats): Kind {
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
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
}

const NO_KEYS = Object.freeze([]) as unknown as string[];

/**
 * Lower stats of all nodes, 11 doubles per node in one growing Float64Array (an object per node with its fields
 * boxed as heap numbers costs ~4x more). Slots are freed when a node drops its lower stat (copy-up, forget).
 */
const F = 11;
class StatStore {
  private buf = new Float64Array(F * 1024);
  private readonly freeSlots: number[] = [];
  private used = 0;

  put(st: StatLike): number {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      slot = this.used++;
      if ((slot + 1) * F > this.buf.length) {
        const b = new Float64Array(this.buf.length * 2);
        b.set(this.buf);
        this.buf = b;
      }
    }
    const b = this.buf;
    const o = slot * F;
    b[o] = st.mode;
    b[o + 1] = st.nlink;
    b[o + 2] = st.uid;
    b[o + 3] = st.gid;
    b[o + 4] = st.rdev;
    b[o + 5] = st.size;
    b[o + 6] = st.blksize;
    b[o + 7] = st.blocks;
    b[o + 8] = st.atimeMs;
    b[o + 9] = st.mtimeMs;
    b[o + 10] = st.ctimeMs;
    return slot;
  }

  get(slot: number): StatLike {
    const b = this.buf;
    const o = slot * F;
    return { mode: b[o], nlink: b[o + 1], uid: b[o + 2], gid: b[o + 3], rdev: b[o + 4], size: b[o + 5], blksize: b[o + 6], blocks: b[o + 7], atimeMs: b[o + 8], mtimeMs: b[o + 9], ctimeMs: b[o + 10] };
  }

  free(slot: number): void {
    this.freeSlots.push(slot);
  }
}
const statStore = new StatStore();

/** Shared by every node without lower dirs (never mutated: nodes get a new array). */
const NO_LOWER_DIRS = Object.freeze([]) as unknown as LowerDir[];

export class Node {
  readonly ino: number;
  kind: Kind;
  /** Names known to lead here. links[0] is the one used to reach the upper copy. The root has none. */
  links: Link[] = [];
  /** Present in the upper layer (at upperPath). */
  upper: boolean;
  /** Non-dirs not yet copied up: the lower file and its layer index. */
  lowerPath: string | null = null;
  lowerLayer = -1;
  /** Dirs: the lower dirs merged under this one, top first (empty when opaque or pure upper). */
  lowerDirs: LowerDir[] = NO_LOWER_DIRS;
  private childMap: Map<string, Node | null> | null = null;
  /** Dirs: cached lookups; null = known absent. Made on first use (files never have one). */
  get children(): Map<string, Node | null> {
    return (this.childMap ??= new Map());
  }
  /** Bumped by every change of this dir's entries, so a racing lookup knows to retry. */
  gen = 0;
  /** Removed from the namespace (rmdir, or last known name unlinked). */
  removed = false;
  /** Lower-only files: names unlinked through the mount, subtracted from the lower st_nlink. */
  nlinkDelta = 0;
  /** Known to have no visible xattrs (the kernel asks for security.capability before every write): getxattr
   *  answers ENODATA without a syscall. Cleared by setxattr and copy-up; removing xattrs keeps it true. */
  noXattrs = false;
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
    this.kind = kind;
    this.upper = upper;
  }

  addLink(parent: Node, name: string): void {
    if (!this.links.some((l) => l.parent === parent && l.name === name)) this.links.push({ parent, name });
  }

  removeLink(parent: Node, name: string): void {
    this.links = this.links.filter((l) => !(l.parent === parent && l.name === name));
  }

  /** Is `this` (a dir) `other` or one of its ancestors? */
  isAncestorOf(other: Node): boolean {
    for (let n: Node | undefined = other; n; n = n.links[0]?.parent) if (n === this) return true;
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
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
}

export interface DirEntry {
  name: string;
  ino: number;
  kind: Kind;
}
