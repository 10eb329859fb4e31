/**
 * The overlay core: N read-only lower dirs and one upper dir merged with kernel overlayfs semantics, addressed by
 * node id (= inode number). It knows nothing of any FUSE transport; every method either resolves or throws an
 * error carrying an errno code (FsError or a Node fs error), which transports turn into an errno reply.
 *
 * Concurrency: lookups, getattr, readdir and I/O run concurrently; namespace changes, setattr and copy-up run one
 * at a time under `lock`. A lookup racing a change of the same dir notices through the dir's `gen` and retries.
 */
import { chmodSync, close as closeCb, closeSync, constants as fsc, lchownSync, renameSync, unlinkSync, fdatasync as fdatasyncCb, fsync as fsyncCb, ftruncateSync, openSync, read as readCb, readdirSync, readlinkSync, readSync, write as writeCb, writeSync } from 'node:fs';
import { promisify } from 'node:util';
import {
  link,
  lstat,
  mkdir,
  readdir,
  rename,
  rm,
  statfs,
  symlink,
  truncate,
  unlink,
} from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { native, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, SEEK_DATA, SEEK_HOLE, XATTR_CREATE, XATTR_REPLACE } from '../../common/native.js';
import { copyUp, copyUpTree, major, minor, type CopyUpHost, type CopyUpOptions } from './copyup.js';
import { fsErr, isCode } from './errors.js';
import { AliasIndex, findName, LowerCache, SMALL_DIR, type LowerDir } from './layer.js';
import { Mutex } from './mutex.js';
import { loopTurn, RangeCopier } from './rangecopy.js';
import { kindOf, Node, type DirEntry, type NodeStat, type StatLike } from './node.js';
import { isOpaqueDir, isWhiteoutStat, lstatOrNull, makeWhiteout, setOpaque, whiteoutTarget, WH_OPAQUE, WH_PREFIX } from './whiteout.js';
import { isPrivateXattr, listVisible, readInoRecord } from './xattr.js';
import { fstatX, lstatX, setTimes, type ExactStat } from './stat.js';
import { UTIME_NOW, UTIME_OMIT } from '../../common/native.js';

export interface OverlayOptions {
  /** Lower dirs, top first. */
  lowerdirs: string[];
  upperdir?: string;
  workdir?: string;
  /** Width of the inode numbers handed out: 64 (default), or 32 for a transport whose stat has a 32-bit st_ino
   *  (fuse-native). In 32 bits a derived number that does not fit is hashed into 32 bits, and the node table alone
   *  keeps numbers unique: no second map of folded numbers per node. */
  inoBits?: 32 | 64;
}

export const ROOT_ID = 1;
/** Stable inode numbers: st_ino + tag * 2^43 (see newNode); session-only numbers start at 2^52. */
const INO_LAYER_UNIT = 2 ** 43;
const FALLBACK_INO_BASE = 2 ** 52;
/** 32-bit mode: session numbers are taken downwards from the top of the range. */
const FALLBACK_INO32_TOP = 0xffffffff;
const NAME_MAX = 255;
/** Backing paths of upper dirs longer than this are replaced by a path through an fd of the dir (dirFdPath). */
const LONG_PATH = 2048;
const O_PATH = 0o10000000;

/** A derived number in 32 bits: itself when it fits (every layer on one fs), else its high bits (the layer tag)
 *  mixed into the low ones. 0 stays 0 (no derived number); a clash is the node table's to resolve. */
function fit32(ino: number): number {
  if (ino <= 0xffffffff) return ino;
  return ((ino % 2 ** 32) ^ Math.imul(Math.floor(ino / 2 ** 32), 0x9e3779b1)) >>> 0;
}
const O_ACCMODE = 3;

interface Resolution {
  st: ExactStat;
  /** The name as a lower listing holds it (the same string, kept by the node instead of the caller's copy). */
  name?: string;
  upper: boolean;
  lowerPath: string | null;
  lowerLayer: number;
  lowerDirs: LowerDir[];
}

/** File I/O up to this size is done with a synchronous syscall on the JS thread (the backing file is a local file,
 *  never the mount: a threadpool round trip costs more than a small read). Bigger reads/writes go to the pool.
 *  A transport may do a READ or WRITE of at most this size itself, at once, on readFd / writeFd. */
export const SYNC_IO_MAX = 64 * 1024;
/** Read-ahead across files (readStarted): files kept in flight ahead of an in-order reader, and bytes of each. */
const FILES_AHEAD = 8;
const FILE_AHEAD_BYTES = 256 * 1024;
/** Entries between two files read in order that may be skipped (dirs, links, empty files), and the largest dir
 *  searched for an out-of-order file's place. */
const SEQ_SKIP_MAX = 256;
const SEQ_FIND_MAX = 4096;
const readAsync = promisify(readCb);
const writeAsync = promisify(writeCb);
const closeAsync = promisify(closeCb);
const fsyncAsync = promisify(fsyncCb);
const fdatasyncAsync = promisify(fdatasyncCb);

interface Handle {
  node: Node;
  /** A raw fd of the backing file (opened once per open, closed at release). */
  fd: number;
  upper: boolean;
  flags: number;
}

export interface StatFs {
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

export class Overlay implements CopyUpHost {
  readonly lowers: string[];
  readonly upper: string | null;
  readonly work: string | null;
  readonly root: Node;
  readonly aliases = new AliasIndex();
  private readonly lowerCache = new LowerCache();
  private readonly nodes = new Map<number, Node>();
  private readonly byKey = new Map<string, Node>();
  private readonly handles = new Map<number, Handle>();
  /** Node-keyed I/O (readNode/writeNode, for kernels told not to send OPEN): one implicit handle per node, the least
   *  recently used closed past IMPLICIT_MAX; those of removed nodes are pinned until forget (the file may be open). */
  private readonly implicit = new Map<Node, number>();
  /** Merged listings of dirs, valid while the dir's gen, upper flag and lower dirs are unchanged. */
  private readonly namesCache = new WeakMap<Node, { gen: number; upper: boolean; lowerDirs: LowerDir[]; names: readonly string[] }>();
  /** Per dir: where in its listing the files read from their start have got to (readStarted). */
  private readonly readCursor = new WeakMap<Node, { names: readonly string[]; at: number; ahead: number; run: number }>();
  private readonly lock = new Mutex();
  /** Session numbers for nodes whose stable number is taken or unknown (2^52 up: above every derived one). */
  private nextFallbackIno: number;
  private readonly ino32: boolean;
  /** Per layer (0 = upper, i + 1 = lower i): the high bits added to st_ino; 0 for layers on the upper's fs. */
  private readonly layerTags: number[];
  private nextFh = 1;
  /** The upper path placeNew is looking up right after making it (under the lock). */
  private freshPath: string | null = null;
  private tmpSeq = 0;

  private constructor(opts: OverlayOptions, rootStat: { dev: number }, layerDevs: number[]) {
    this.lowers = opts.lowerdirs;
    // inode numbers as the kernel's overlay (xino off) gives them when every layer is on one fs: the real st_ino;
    // layers on another fs get their index in the high bits (st_ino < 2^43, 511 layers: below 2^52)
    this.layerTags = layerDevs.map((dev, i) => (dev === rootStat.dev ? 0 : i));
    this.ino32 = opts.inoBits === 32;
    this.nextFallbackIno = this.ino32 ? FALLBACK_INO32_TOP : FALLBACK_INO_BASE;
    this.upper = opts.upperdir ?? null;
    this.work = opts.workdir ? path.join(opts.workdir, 'work') : null;
    this.root = new Node(ROOT_ID, 'dir', this.upper !== null);
    this.root.lowerDirs = this.lowers.map((p, layer) => ({ layer, path: p }));
    this.nodes.set(ROOT_ID, this.root);
    void rootStat;
  }

  /** Checks the dirs and prepares the workdir; reads nothing else (lookups are lazy). */
  static async open(opts: OverlayOptions): Promise<Overlay> {
    if (opts.lowerdirs.length === 0) throw fsErr('EINVAL', 'no lowerdir');
    const abs = (p: string) => path.resolve(p);
    const o: OverlayOptions = { lowerdirs: opts.lowerdirs.map(abs), upperdir: opts.upperdir && abs(opts.upperdir), workdir: opts.workdir && abs(opts.workdir), inoBits: opts.inoBits };
    for (const d of [...o.lowerdirs, ...(o.upperdir ? [o.upperdir] : [])]) {
      const st = await lstat(d).catch(() => null);
      if (!st?.isDirectory()) throw fsErr('ENOTDIR', `${d} is not a directory`);
    }
    if (o.upperdir) {
      if (!o.workdir) throw fsErr('EINVAL', 'upperdir needs a workdir');
      const wst = await lstat(o.workdir).catch(() => null);
      if (!wst?.isDirectory()) throw fsErr('ENOTDIR', `${o.workdir} is not a directory`);
      const ust = await lstat(o.upperdir);
      if (wst.dev !== ust.dev) throw fsErr('EXDEV', 'upperdir and workdir must be on the same filesystem');
      const work = path.join(o.workdir, 'work');
      await rm(work, { recursive: true, force: true });
      await mkdir(work, { mode: 0o700 });
    }
    const rootStat = await lstat(o.upperdir ?? o.lowerdirs[0]);
    const devs = [rootStat.dev, ...(await Promise.all(o.lowerdirs.map(async (d) => (await lstat(d)).dev)))];
    return new Overlay(o, rootStat, devs);
  }

  get readonly(): boolean {
    return this.upper === null;
  }

  // ---- node table -------------------------------------------------------------------------------------------

  node(id: number): Node {
    const n = this.nodes.get(id);
    if (!n) throw fsErr('ESTALE', `no inode ${id}`);
    return n;
  }

  /**
   * FUSE forget: a transport calls this when the kernel's lookup count of node `id` has reached 0 (`nlookup` is the
   * count just dropped; informational). Call it only then, and not while a reply handing out `id` is still being
   * built. Nodes the layers alone can rebuild with the same number (lower-only non-dirs with one name, no open
   * handle, not changed through the mount) leave the tables, to bound memory; a later lookup makes them again.
   * Everything else stays. Unknown ids are ignored, so it is always safe to call.
   */
  forget(id: number, nlookup = 1): void {
    void nlookup;
    const n = this.nodes.get(id);
    if (n) this.dropImplicit(n); // no open file of it is left in the kernel: its implicit handle goes
    if (!n || n === this.root || n.kind === 'dir' || n.upper || n.removed || n.nlinkDelta !== 0) return;
    if (n.linkCount !== 1 || !n.lowerStat || n.lowerStat.nlink > 1) return;
    const parent = n.parent!;
    if (parent.children.get(n.name) !== n) return;
    for (const h of this.handles.values()) if (h.node === n) return;
    parent.children.delete(n.name);
    this.nodes.delete(id);
    n.lowerStat = null;
    for (const k of n.keys) if (this.byKey.get(k) === n) this.byKey.delete(k);
  }

  /** Whether node `id` is in the table (forget may have dropped it). */
  known(id: number): boolean {
    return this.nodes.has(id);
  }

  /** Nodes in the table (for memory checks). */
  get nodeCount(): number {
    return this.nodes.size;
  }

  private dirNode(id: number): Node {
    const n = this.node(id);
    if (n.kind !== 'dir') throw fsErr('ENOTDIR');
    return n;
  }

  /**
   * A new node numbered from its real inode: st_ino (plus the layer's tag when that layer is on another fs), or
   * the number recorded on an upper copy at copy-up, so a number survives copy-up and remount. A number taken by
   * another node (a reused st_ino after a delete, a hardlink across layers) gets a session number instead.
   */
  private newNode(kind: Node['kind'], upper: boolean, st: { ino: number }, layer: number, realPath: string): Node {
    const rec = upper && realPath !== this.freshPath ? readInoRecord(realPath) : null;
    const recorded = rec?.ino ?? null;
    let ino = upper ? (recorded ?? this.derivedIno(0, st.ino)) : this.derivedIno(layer + 1, st.ino);
    if (this.ino32) ino = fit32(ino);
    if (ino <= ROOT_ID || this.nodes.has(ino)) ino = this.fallbackIno();
    const n = new Node(ino, kind, upper);
    if (rec && kind !== 'dir') n.nlinkDelta = rec.hiddenLinks;
    this.nodes.set(n.ino, n);
    return n;
  }

  private derivedIno(layerSlot: number, stIno: number): number {
    const tag = this.layerTags[layerSlot] ?? -1;
    if (tag < 0 || tag >= 512 || !(stIno < INO_LAYER_UNIT)) return 0;
    return tag * INO_LAYER_UNIT + stIno;
  }

  private fallbackIno(): number {
    if (this.ino32) {
      // downwards from 2^32 - 1, wrapping above the root: every number is tried before one is reused
      const next = (v: number) => (v <= ROOT_ID + 1 ? FALLBACK_INO32_TOP : v - 1);
      for (let i = 0; this.nodes.has(this.nextFallbackIno); i++) {
        if (i > FALLBACK_INO32_TOP) throw fsErr('EOVERFLOW', 'no free 32-bit inode number');
        this.nextFallbackIno = next(this.nextFallbackIno);
      }
      const ino = this.nextFallbackIno;
      this.nextFallbackIno = next(ino);
      return ino;
    }
    while (this.nodes.has(this.nextFallbackIno)) this.nextFallbackIno++;
    return this.nextFallbackIno++;
  }

  private setKey(n: Node, key: string): void {
    this.byKey.set(key, n);
    if (!n.keys.includes(key)) n.keys = [...n.keys, key];
  }

  private dropUpperKey(n: Node): void {
    for (const k of n.keys) if (k.startsWith('u:') && this.byKey.get(k) === n) this.byKey.delete(k);
    n.keys = n.keys.filter((k) => !k.startsWith('u:'));
  }

  registerUpper(n: Node, st: { dev: number; ino: number }): void {
    n.lowerStat = null; // upper from now on: getattr stats the upper copy
    n.noXattrs = false;
    if (n.kind !== 'dir') this.setKey(n, `u:${st.dev}:${st.ino}`);
  }

  // ---- paths ------------------------------------------------------------------------------------------------

  upperPath(n: Node): string {
    if (!this.upper) throw fsErr('EROFS');
    if (n === this.root) return this.upper;
    if (!n.parent) throw fsErr('ENOENT', `inode ${n.ino} has no name`);
    const p = path.join(this.upperPath(n.parent), n.name);
    if (n.kind === 'dir' && n.upper && p.length > LONG_PATH / 4 && Buffer.byteLength(p) > LONG_PATH) return this.dirFdPath(n, p);
    return p;
  }

  /**
   * Upper dirs deeper than LONG_PATH bytes of backing path are reached through an O_PATH fd of theirs:
   * `/proc/self/fd/N/.` stands for the dir, so a path under it stays short where the joined backing path (upper dir +
   * path in the mount) would pass PATH_MAX, and every syscall works on a path of PATH_MAX - 1 bytes in the mount, as
   * on kernel overlay. The fd follows the dir when it is renamed; it is closed some time after the dir is removed
   * (a call that took its path just before may still be using it).
   */
  private dirFdPath(n: Node, p: string): string {
    let fd = this.dirFds.get(n);
    if (fd === undefined) {
      fd = openSync(p, O_PATH | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
      this.dirFds.set(n, fd);
    }
    // '/.': the dir itself, also for calls that do not follow a final symlink (lstat of the fd's magic link would
    // answer for the link)
    return `/proc/self/fd/${fd}/.`;
  }

  private readonly dirFds = new Map<Node, number>();

  private realPath(n: Node): string {
    if (n.upper) return this.upperPath(n);
    const p = n.kind === 'dir' ? n.lowerDirs[0]?.path : n.lowerPath;
    if (!p) throw fsErr('EIO', `inode ${n.ino} has no layer`);
    return p;
  }

  tmpPath(): string {
    if (!this.work) throw fsErr('EROFS');
    return path.join(this.work, `#${process.pid.toString(16)}.${(this.tmpSeq++).toString(16)}.${randomBytes(3).toString('hex')}`);
  }

  lowerRoot(layer: number): string {
    return this.lowers[layer];
  }

  // ---- lookup -----------------------------------------------------------------------------------------------

  private static checkName(name: string): void {
    if (Buffer.byteLength(name) > NAME_MAX) throw fsErr('ENAMETOOLONG');
    if (name === '' || name === '.' || name === '..' || name.includes('/')) throw fsErr('EINVAL', `bad name ${JSON.stringify(name)}`);
  }

  /** The node named `name` in dir `parentId`, or null. Cached; lowers are resolved top-down on first use. */
  async lookup(parentId: number, name: string): Promise<Node | null> {
    Overlay.checkName(name);
    return this.lookupIn(this.dirNode(parentId), name);
  }

  private async lookupIn(p: Node, name: string): Promise<Node | null> {
    if (p.removed) return null;
    for (let attempt = 0; ; attempt++) {
      const cached = p.children.get(name);
      if (cached !== undefined) return cached;
      const gen = p.gen;
      const res = await this.resolve(p, name);
      if (p.gen !== gen && attempt < 8) continue;
      const again = p.children.get(name);
      if (again !== undefined) return again;
      const key = res?.name ?? name;
      const n = res ? this.materialize(p, key, res) : null;
      p.children.set(key, n);
      return n;
    }
  }

  /** The cached answer for `name` in dir `parentId` without a lookup: the node, null if known absent, undefined if
   *  not cached (or not a dir: lookup then gives the error). */
  cachedChild(parentId: number, name: string): Node | null | undefined {
    const p = this.nodes.get(parentId);
    if (p === undefined || p.kind !== 'dir' || p.removed) return undefined;
    return p.children.get(name);
  }

  /** Walk a '/'-separated path from the root ('' or '/' = root). */
  async lookupPath(rel: string): Promise<Node | null> {
    let n: Node | null = this.root;
    for (const part of rel.split('/')) {
      if (!part) continue;
      if (n.kind !== 'dir') return null;
      n = await this.lookupIn(n, part);
      if (!n) return null;
    }
    return n;
  }

  private materialize(p: Node, name: string, r: Resolution): Node {
    const kind = kindOf(r.st);
    const real = r.upper ? path.join(this.upperPath(p), name) : (r.lowerPath ?? r.lowerDirs[0]?.path ?? '');
    if (kind === 'dir') {
      const n = this.newNode('dir', r.upper, r.st, r.lowerLayer, real);
      n.lowerDirs = r.lowerDirs;
      if (!r.upper) n.lowerStat = r.st;
      n.parent = p;
      n.name = name;
      return n;
    }
    // a lower file with one link has no other name in its layer: no identity key to share it by
    const key = r.upper ? `u:${r.st.dev}:${r.st.ino}` : r.st.nlink > 1 ? `l${r.lowerLayer}:${r.st.dev}:${r.st.ino}` : null;
    const known = key === null ? undefined : this.byKey.get(key);
    if (known && known.kind === kind) {
      known.removed = false;
      known.addLink(p, name);
      return known;
    }
    const n = this.newNode(kind, r.upper, r.st, r.lowerLayer, real);
    if (!r.upper) n.lowerStat = r.st;
    n.lowerLayer = r.lowerLayer;
    n.parent = p;
    n.name = name;
    n.lowerPath = r.lowerPath; // after the name: stored only if it differs from the derived one
    if (key !== null) this.setKey(n, key);
    return n;
  }

  private async resolve(p: Node, name: string): Promise<Resolution | null> {
    let res: Resolution | null = null;
    if (p.upper) {
      const dir = this.upperPath(p);
      const st = await lstatOrNull(path.join(dir, name));
      // a dir with no lower dirs (made through the mount, or opaque) has nothing below to hide or merge: the
      // opaque and `.wh.` checks could not change the answer (a syscall each, twice per file created)
      if (p.lowerDirs.length === 0) return st && !isWhiteoutStat(st) ? { st, upper: true, lowerPath: null, lowerLayer: -1, lowerDirs: [] } : null;
      if (st) {
        if (isWhiteoutStat(st)) return null;
        res = { st, upper: true, lowerPath: null, lowerLayer: -1, lowerDirs: [] };
        if (!st.isDirectory()) return res;
        if (await isOpaqueDir(path.join(dir, name))) return res;
        if (await whFileExists(dir, name)) return res;
      } else if (await whFileExists(dir, name)) {
        return null;
      }
    }
    return this.resolveLowers(p, name, res);
  }

  /** Continue a resolution through p's lower dirs. With res = null: is the name positive in the lowers? */
  private async resolveLowers(p: Node, name: string, res: Resolution | null): Promise<Resolution | null> {
    const last = p.lowerDirs.length - 1;
    for (let k = 0; k <= last; k++) {
      const ld = p.lowerDirs[k];
      const listing = this.lowerCache.now(ld.path) ?? (await this.lowerCache.listing(ld));
      const i = findName(listing, name);
      if (i < 0) {
        if (listing.whiteouts.has(name)) return res;
        continue;
      }
      const full = path.join(ld.path, name);
      if (listing.dirs[i] === 0) {
        if (res) return res; // an upper/higher dir over a lower non-dir: stop merging
        return { st: lstatX(full), name: listing.names[i], upper: false, lowerPath: full, lowerLayer: ld.layer, lowerDirs: [] };
      }
      if (res && !res.st.isDirectory()) return res;
      if (!res) {
        res = { st: lstatX(full), name: listing.names[i], upper: false, lowerPath: null, lowerLayer: ld.layer, lowerDirs: [] };
        res.lowerDirs.push({ layer: ld.layer, path: full, small: res.st.size <= SMALL_DIR });
      } else {
        res.lowerDirs.push({ layer: ld.layer, path: full });
      }
      if (listing.whiteouts.has(name)) return res; // `.wh.X` beside X: X is new in this layer
      // opaque: stop merging the layers below. The bottom one has none below: no check (two syscalls per dir
      // looked up, and most dirs of an image are in one layer only)
      if (k < last && (await isOpaqueDir(full))) return res;
    }
    return res;
  }

  private async lowerPositive(p: Node, name: string): Promise<boolean> {
    return (await this.resolveLowers(p, name, null)) !== null;
  }

  // ---- attributes -------------------------------------------------------------------------------------------

  async getattr(id: number): Promise<NodeStat> {
    const n = this.node(id);
    if (n.removed || (n.parent === null && n !== this.root)) {
      // unlinked while open: the open file answers (st_nlink 0 for an upper file; lower ones count their whiteout)
      for (const h of this.handles.values()) if (h.node === n) return this.statOf(n, fstatX(h.fd));
      throw fsErr('ENOENT');
    }
    if (!n.upper && n.lowerStat) return this.statOf(n, n.lowerStat);
    return this.statOf(n, lstatX(this.realPath(n)));
  }

  private statOf(n: Node, st: StatLike): NodeStat {
    let nlink = st.nlink;
    if (n.kind === 'dir') {
      // like the kernel: merged dirs report 1 (their real count is unknown without a full merge)
      if ((n.upper && n.lowerDirs.length > 0) || n.lowerDirs.length > 1) nlink = 1;
    } else if (!n.upper || nlink > 0) {
      nlink = Math.max(0, nlink + n.nlinkDelta);
    }
    return {
      ino: n.ino,
      mode: st.mode,
      nlink,
      uid: st.uid,
      gid: st.gid,
      rdev: st.rdev,
      size: st.size,
      blksize: st.blksize,
      blocks: st.blocks,
      atimeSec: st.atimeSec,
      atimeNsec: st.atimeNsec,
      mtimeSec: st.mtimeSec,
      mtimeNsec: st.mtimeNsec,
      ctimeSec: st.ctimeSec,
      ctimeNsec: st.ctimeNsec,
    };
  }

  async readlink(id: number): Promise<string> {
    const n = this.node(id);
    if (n.kind !== 'symlink') throw fsErr('EINVAL');
    // synchronous: a target of up to 60 bytes lives in the inode (read already by the lookup), and a threadpool
    // round trip cost ~100 us of a ~110 us READLINK (fuse-overlayfs answers in ~40)
    return readlinkSync(this.realPath(n));
  }

  async access(id: number, _mode: number): Promise<void> {
    this.node(id); // existence; permission bits are checked by the kernel (default_permissions)
  }

  async statfs(): Promise<StatFs> {
    const s = await statfs(this.upper ?? this.lowers[0]);
    return { bsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, namemax: NAME_MAX };
  }

  // ---- readdir ----------------------------------------------------------------------------------------------

  /** Visible names of a merged dir: upper first, then each lower; whiteouts of both forms applied, never shown. */
  private async mergedNames(d: Node): Promise<readonly string[]> {
    // cached per dir until its entries change through the mount (gen) or its layers do (copy-up, opaque)
    const c = this.namesCache.get(d);
    if (c && c.gen === d.gen && c.upper === d.upper && c.lowerDirs === d.lowerDirs) return c.names;
    const gen = d.gen;
    const upper = d.upper;
    const lowerDirs = d.lowerDirs;
    const names = await this.readMergedNames(d);
    this.namesCache.set(d, { gen, upper, lowerDirs, names });
    return names;
  }

  private async readMergedNames(d: Node): Promise<readonly string[]> {
    // one lower dir and no upper one: its listing is the merged one (no copy of it per dir)
    if (!d.upper && d.lowerDirs.length === 1) return (await this.lowerCache.listing(d.lowerDirs[0])).names;
    const seen = new Set<string>();
    const hidden = new Set<string>();
    const out: string[] = [];
    if (d.upper) {
      const dir = this.upperPath(d);
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.name === WH_OPAQUE) continue;
        const t = whiteoutTarget(e.name);
        if (t !== null) {
          hidden.add(t);
          continue;
        }
        if (e.isCharacterDevice()) {
          const st = await lstatOrNull(path.join(dir, e.name));
          if (st && isWhiteoutStat(st)) {
            hidden.add(e.name);
            continue;
          }
        }
        seen.add(e.name);
        out.push(e.name);
      }
    }
    for (const ld of d.lowerDirs) {
      const listing = this.lowerCache.now(ld.path) ?? (await this.lowerCache.listing(ld));
      for (const name of listing.names) {
        if (seen.has(name) || hidden.has(name)) continue;
        seen.add(name);
        out.push(name);
      }
      for (const w of listing.whiteouts) hidden.add(w);
    }
    return out;
  }

  async readdir(id: number): Promise<DirEntry[]> {
    const d = this.dirNode(id);
    const names = await this.mergedNames(d);
    // names already looked up are map hits; only the others are resolved (at most 32 at a time)
    const unknown = names.filter((name) => d.children.get(name) === undefined);
    if (unknown.length > 0) await mapLimit(unknown, 32, (name) => this.lookupIn(d, name).catch(() => null));
    const out: DirEntry[] = [];
    const subdirs: string[] = [];
    for (const name of names) {
      const n = d.children.get(name) ?? (await this.lookupIn(d, name).catch(() => null));
      if (!n) continue;
      out.push({ name, ino: n.ino, kind: n.kind });
      if (n.kind === 'dir') for (const ld of n.lowerDirs) subdirs.push(ld.path);
    }
    this.lowerCache.prefetch(subdirs);
    return out;
  }

  async childNodes(dir: Node): Promise<Node[]> {
    const names = await this.mergedNames(dir);
    const out: Node[] = [];
    for (const name of names) {
      const n = await this.lookupIn(dir, name);
      if (n) out.push(n);
    }
    return out;
  }

  // ---- read-ahead across files ------------------------------------------------------------------------------

  /**
   * A read from offset 0 of node id began. When the files of its dir are being read one after another in listing
   * order (tar, cp -r, rsync, an image export: the second file read from the start is the next readable entry
   * after the first), the next FILES_AHEAD lower files of the dir are read ahead (POSIX_FADV_WILLNEED, their
   * first FILE_AHEAD_BYTES), so that their disk reads are in flight while the caller works through the current
   * one, instead of each READ waiting for its own. Other orders read nothing ahead.
   */
  readStarted(id: number): void {
    const n = this.nodes.get(id);
    const p = n?.parent;
    if (!n || !p || n.kind !== 'file') return;
    const c = this.namesCache.get(p);
    if (!c || c.gen !== p.gen) return;
    const names = c.names;
    let cur = this.readCursor.get(p);
    if (!cur || cur.names !== names) this.readCursor.set(p, (cur = { names, at: -1, ahead: -1, run: 0 }));
    // the next entries of the listing that a reader in order would have read before this one: dirs, symlinks,
    // empty files (no READ)
    let i = -1;
    for (let j = cur.at + 1; j < names.length && j <= cur.at + SEQ_SKIP_MAX; j++) {
      if (names[j] === n.name) {
        i = j;
        break;
      }
      if (readable(p.children.get(names[j]))) break;
    }
    if (i < 0) {
      // out of order: find where it is (bounded), read nothing ahead
      cur.at = names.length <= SEQ_FIND_MAX ? names.indexOf(n.name) : -1;
      cur.ahead = cur.at;
      cur.run = 0;
      return;
    }
    cur.at = i;
    cur.ahead = Math.max(cur.ahead, i);
    // the window grows with the run: 2 files ahead after two read in order, then 4, 6, up to FILES_AHEAD
    const want = Math.min(FILES_AHEAD, 2 * cur.run++);
    let queued = 0;
    for (let j = i + 1; j <= cur.ahead; j++) if (readable(p.children.get(names[j]))) queued++;
    for (let j = cur.ahead + 1; j < names.length && queued < want && j <= i + SEQ_SKIP_MAX; j++) {
      cur.ahead = j;
      const m = p.children.get(names[j]);
      if (!readable(m) || m.upper || !m.lowerStat) continue;
      try {
        native.willNeed(this.realPath(m), Math.min(m.lowerStat.size, FILE_AHEAD_BYTES));
      } catch {
        // only advice: a read never fails for it
      }
      queued++;
    }
  }

  /** readStarted for a read by handle fh (a transport whose read requests carry no node id). */
  readStartedByHandle(fh: number): void {
    const h = this.handles.get(fh);
    if (h) this.readStarted(h.node.ino);
  }

  // ---- helpers for changes ----------------------------------------------------------------------------------

  private writable(): void {
    if (this.readonly) throw fsErr('EROFS');
  }

  private copyUp(n: Node, opts?: CopyUpOptions): Promise<void> {
    return copyUp(this, n, opts);
  }

  private touched(p: Node): void {
    p.gen++;
  }

  /**
   * Create a new entry `name` in dir p through `make(path)`. Over an upper whiteout (or a `.wh.` file) the entry
   * is made under a temp name in the workdir and renamed into place; a dir made there is opaque (as the kernel does).
   */
  private async placeNew(p: Node, name: string, isDir: boolean, make: (target: string) => Promise<void>): Promise<Node> {
    await this.copyUp(p);
    const dir = this.upperPath(p);
    const target = path.join(dir, name);
    const ust = await lstatOrNull(target);
    const upperWhiteout = ust !== null && isWhiteoutStat(ust);
    if (ust && !upperWhiteout) throw fsErr('EEXIST');
    const whFile = path.join(dir, WH_PREFIX + name);
    const hasWhFile = await whFileExists(dir, name);
    this.touched(p);
    if (!upperWhiteout && !hasWhFile) {
      await make(target);
    } else {
      const tmp = this.tmpPath();
      await make(tmp);
      try {
        if (isDir) setOpaque(tmp);
        if (upperWhiteout && isDir) {
          native.renameat2(tmp, target, RENAME_EXCHANGE);
          await unlink(tmp); // now the old whiteout
        } else if (upperWhiteout) {
          await rename(tmp, target);
        } else {
          native.renameat2(tmp, target, RENAME_NOREPLACE);
        }
      } catch (err) {
        await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
        throw err;
      }
      if (hasWhFile) await unlink(whFile).catch(() => undefined); // we write only the kernel's format
    }
    p.children.delete(name);
    this.freshPath = target; // made just now by us: no ino xattr to read
    let n: Node | null;
    try {
      n = await this.lookupIn(p, name);
    } finally {
      this.freshPath = null;
    }
    if (!n) throw fsErr('EIO', `created ${name} is not visible`);
    return n;
  }

  private async mustBeAbsent(p: Node, name: string): Promise<void> {
    Overlay.checkName(name);
    if (p.removed) throw fsErr('ENOENT');
    if (await this.lookupIn(p, name)) throw fsErr('EEXIST');
  }

  // ---- namespace changes ------------------------------------------------------------------------------------

  async mkdir(parentId: number, name: string, mode: number): Promise<Node> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      await this.mustBeAbsent(p, name);
      this.writable();
      return this.placeNew(p, name, true, (t) => mkdir(t, { mode: mode & 0o7777 }));
    });
  }

  async mknod(parentId: number, name: string, mode: number, rdev: number): Promise<Node> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      await this.mustBeAbsent(p, name);
      this.writable();
      // a regular file made for node-keyed I/O keeps its fd as the node's implicit handle (the kernel's next step is
      // to open it, which, with no OPEN sent, means the writes that follow)
      let fd = -1;
      try {
        const n = await this.placeNew(p, name, false, async (t) => {
          if ((mode & fsc.S_IFMT) === fsc.S_IFREG || (mode & fsc.S_IFMT) === 0) fd = openSync(t, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, mode & 0o7777);
          else native.mknod(t, mode, major(rdev), minor(rdev));
        });
        if (fd >= 0 && this.nodeKeyedIo && n.kind === 'file' && !this.implicit.has(n)) {
          this.implicit.set(n, this.addHandle(n, fd, true, fsc.O_RDWR));
          this.trimImplicit(n);
          fd = -1;
        }
        return n;
      } finally {
        if (fd >= 0) closeSync(fd);
      }
    });
  }

  async symlink(parentId: number, name: string, target: string): Promise<Node> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      await this.mustBeAbsent(p, name);
      this.writable();
      return this.placeNew(p, name, false, (t) => symlink(target, t));
    });
  }

  /** Create and open a regular file; returns the node and a handle for read/write. */
  async create(parentId: number, name: string, mode: number, flags = fsc.O_RDWR): Promise<{ node: Node; fh: number }> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      await this.mustBeAbsent(p, name);
      this.writable();
      let fd = -1;
      try {
        const n = await this.placeNew(p, name, false, async (t) => {
          fd = openSync(t, fsc.O_CREAT | fsc.O_EXCL | openFlags(flags), mode & 0o7777);
        });
        return { node: n, fh: this.addHandle(n, fd, true, flags) };
      } catch (err) {
        if (fd >= 0) closeSync(fd);
        throw err;
      }
    });
  }

  async link(id: number, newParentId: number, newName: string): Promise<Node> {
    return this.lock.run(async () => {
      const n = this.node(id);
      const p = this.dirNode(newParentId);
      if (n.kind === 'dir') throw fsErr('EPERM');
      await this.mustBeAbsent(p, newName);
      this.writable();
      await this.copyUp(n);
      const src = this.upperPath(n);
      return this.placeNew(p, newName, false, (t) => link(src, t));
    });
  }

  async unlink(parentId: number, name: string): Promise<void> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      Overlay.checkName(name);
      const n = await this.lookupIn(p, name);
      if (!n) throw fsErr('ENOENT');
      if (n.kind === 'dir') throw fsErr('EISDIR');
      this.writable();
      await this.copyUp(p);
      // a lower file with other names: copy it up (its names become upper hardlinks), so the link count the
      // remaining names report is real, also after a remount (a whiteout alone would leave the lower count)
      if (!n.upper && n.lowerPath && (n.lowerStat ?? lstatX(n.lowerPath)).nlink > 1) await this.copyUp(n);
      const target = path.join(this.upperPath(p), name);
      const wh = await this.lowerPositive(p, name);
      this.touched(p);
      if (n.linkCount === 1) this.pinForRemoval(n);
      if (n.upper) {
        const st = lstatX(target);
        if (wh) this.replaceWithWhiteout(target);
        else unlinkSync(target);
        if (st.nlink <= 1) this.dropUpperKey(n);
      } else {
        makeWhiteout(target);
        n.nlinkDelta--;
      }
      n.removeLink(p, name);
      if (n.linkCount === 0) n.removed = true;
      p.children.set(name, null);
    });
  }

  /** Atomically replace the upper entry at target with a whiteout. */
  private replaceWithWhiteout(target: string): void {
    const tmp = this.tmpPath();
    makeWhiteout(tmp);
    try {
      native.renameat2(tmp, target, 0);
    } catch (err) {
      void rm(tmp, { force: true });
      throw err;
    }
  }

  async rmdir(parentId: number, name: string): Promise<void> {
    return this.lock.run(async () => {
      const p = this.dirNode(parentId);
      Overlay.checkName(name);
      const n = await this.lookupIn(p, name);
      if (!n) throw fsErr('ENOENT');
      if (n.kind !== 'dir') throw fsErr('ENOTDIR');
      if ((await this.mergedNames(n)).length > 0) throw fsErr('ENOTEMPTY');
      this.writable();
      await this.copyUp(p);
      const target = path.join(this.upperPath(p), name);
      const wh = await this.lowerPositive(p, name);
      this.touched(p);
      if (n.upper) {
        const tmp = this.tmpPath();
        if (wh) {
          makeWhiteout(tmp);
          native.renameat2(tmp, target, RENAME_EXCHANGE);
        } else {
          await rename(target, tmp);
        }
        await rm(tmp, { recursive: true, force: true }); // the old upper dir: only whiteouts were left in it
      } else {
        makeWhiteout(target);
      }
      this.dropDir(n);
      p.children.set(name, null);
    });
  }

  private dropDir(n: Node): void {
    const fd = this.dirFds.get(n);
    if (fd !== undefined) {
      this.dirFds.delete(n);
      setTimeout(() => closeQuietly(fd), 10_000).unref();
    }
    n.removed = true;
    n.links = [];
    n.children.clear();
  }

  /** rename(2) / renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE. */
  async rename(parentId: number, name: string, newParentId: number, newName: string, flags = 0): Promise<void> {
    return this.lock.run(async () => {
      const sp = this.dirNode(parentId);
      const dp = this.dirNode(newParentId);
      Overlay.checkName(name);
      Overlay.checkName(newName);
      if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) throw fsErr('EINVAL');
      if (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE) throw fsErr('EINVAL');
      const src = await this.lookupIn(sp, name);
      if (!src) throw fsErr('ENOENT');
      if (dp.removed) throw fsErr('ENOENT');
      const dst = await this.lookupIn(dp, newName);
      if (src.kind === 'dir' && src.isAncestorOf(dp)) throw fsErr('EINVAL');
      if (flags & RENAME_EXCHANGE) {
        if (!dst) throw fsErr('ENOENT');
        if (dst.kind === 'dir' && dst.isAncestorOf(sp)) throw fsErr('EINVAL');
        if (src === dst) return;
        this.writable();
        return this.exchange(sp, name, src, dp, newName, dst);
      }
      if (dst) {
        if (flags & RENAME_NOREPLACE) throw fsErr('EEXIST');
        if (src === dst) return; // same inode (or same name): nothing to do
        if (src.kind === 'dir' && dst.kind !== 'dir') throw fsErr('ENOTDIR');
        if (src.kind !== 'dir' && dst.kind === 'dir') throw fsErr('EISDIR');
        if (dst.kind === 'dir' && (await this.mergedNames(dst)).length > 0) throw fsErr('ENOTEMPTY');
      }
      this.writable();
      await this.prepareMove(src);
      // a lower file with other names, replaced: copied up first, as unlink does, so its other names report the real
      // link count (kernel overlay with index=on does the same)
      if (dst && dst.kind !== 'dir' && !dst.upper && dst.lowerPath && (dst.lowerStat ?? lstatX(dst.lowerPath)).nlink > 1) await this.copyUp(dst);
      await this.copyUp(dp);
      const from = path.join(this.upperPath(sp), name);
      const to = path.join(this.upperPath(dp), newName);
      const whOld = await this.lowerPositive(sp, name);
      const opaque = src.kind === 'dir' && dp.lowerDirs.length > 0;
      if (opaque) setOpaque(from);
      this.touched(sp);
      this.touched(dp);
      const toSt = await lstatOrNull(to);
      if (dst?.kind === 'dir' && toSt?.isDirectory()) await clearDir(to); // only whiteouts are left in it
      if (dst && dst.kind !== 'dir' && toSt && !toSt.isDirectory() && toSt.nlink <= 1) this.dropUpperKey(dst);
      if (src.kind === 'dir' && toSt && !toSt.isDirectory()) {
        // a dir over a whiteout: swap, then the whiteout left at the old name is kept or dropped
        native.renameat2(from, to, RENAME_EXCHANGE);
        if (!whOld) await unlink(from);
      } else if (whOld) {
        try {
          native.renameat2(from, to, RENAME_WHITEOUT);
        } catch (err) {
          if (!isCode(err, 'EINVAL', 'ENOTSUP', 'EOPNOTSUPP')) throw err;
          await rename(from, to);
          makeWhiteout(from);
        }
      } else {
        renameSync(from, to);
      }
      if (await whFileExists(this.upperPath(dp), newName)) await unlink(path.join(this.upperPath(dp), WH_PREFIX + newName));
      if (dst) {
        if (dst.kind !== 'dir' && dst.linkCount === 1) this.pinForRemoval(dst);
        dst.removeLink(dp, newName);
        if (dst.kind === 'dir') this.dropDir(dst);
        else if (dst.linkCount === 0) dst.removed = true;
      }
      sp.children.set(name, null);
      this.relink(src, sp, name, dp, newName);
      if (opaque) src.lowerDirs = [];
    });
  }

  /** Before moving: a dir with lower parts is copied up whole and made opaque (where kernel overlay says EXDEV). */
  private async prepareMove(n: Node): Promise<void> {
    if (n.kind === 'dir' && n.lowerDirs.length > 0) {
      await copyUpTree(this, n);
      const top = this.upperPath(n);
      setOpaque(top);
      // nothing below is merged any more: whiteouts in the copied tree would hide nothing, and kernel overlay, which
      // merges nothing under an opaque dir either, would list them as broken entries
      await dropWhiteouts(top);
      clearLowers(n);
    } else {
      await this.copyUp(n);
    }
  }

  private relink(n: Node, sp: Node, name: string, dp: Node, newName: string): void {
    const ls = n.links;
    const i = ls.findIndex((l) => l.parent === sp && l.name === name);
    const lk = { parent: dp, name: newName };
    if (i >= 0) ls[i] = lk;
    else ls.unshift(lk);
    n.links = ls;
    dp.children.set(newName, n);
  }

  private async exchange(sp: Node, name: string, src: Node, dp: Node, newName: string, dst: Node): Promise<void> {
    await this.prepareMove(src);
    await this.prepareMove(dst);
    const from = path.join(this.upperPath(sp), name);
    const to = path.join(this.upperPath(dp), newName);
    if (src.kind === 'dir' && dp.lowerDirs.length > 0) setOpaque(from);
    if (dst.kind === 'dir' && sp.lowerDirs.length > 0) setOpaque(to);
    this.touched(sp);
    this.touched(dp);
    native.renameat2(from, to, RENAME_EXCHANGE);
    this.relink(src, sp, name, dp, newName);
    this.relink(dst, dp, newName, sp, name);
    if (src.kind === 'dir') src.lowerDirs = [];
    if (dst.kind === 'dir') dst.lowerDirs = [];
  }

  // ---- setattr ----------------------------------------------------------------------------------------------

  async chmod(id: number, mode: number): Promise<void> {
    return this.lock.run(async () => {
      const n = this.node(id);
      this.writable();
      await this.copyUp(n);
      if (n.kind !== 'symlink') chmodSync(this.upperPath(n), mode & 0o7777);
    });
  }

  /** uid/gid -1 = unchanged. */
  async chown(id: number, uid: number, gid: number): Promise<void> {
    return this.lock.run(async () => {
      const n = this.node(id);
      this.writable();
      await this.copyUp(n);
      lchownSync(this.upperPath(n), uid, gid);
    });
  }

  async truncate(id: number, size: number): Promise<void> {
    return this.lock.run(async () => {
      const n = this.node(id);
      mustBeFile(n);
      this.writable();
      await this.copyUp(n, { data: size > 0 });
      await truncate(this.upperPath(n), size);
    });
  }

  /** Set times exactly: seconds and nanoseconds since the epoch, 'now' (the kernel's clock) or 'omit' (unchanged). */
  async utimens(id: number, atime: TimeSpec, mtime: TimeSpec): Promise<void> {
    return this.lock.run(async () => {
      const n = this.node(id);
      this.writable();
      await this.copyUp(n);
      const [as, an] = timeArgs(atime);
      const [ms, mn] = timeArgs(mtime);
      native.lutimens(this.upperPath(n), as, an, ms, mn);
    });
  }

  // ---- xattrs -----------------------------------------------------------------------------------------------

  async listxattr(id: number): Promise<string[]> {
    return listVisible(this.realPath(this.node(id)));
  }

  async getxattr(id: number, name: string): Promise<Buffer> {
    if (isPrivateXattr(name)) throw fsErr('EOPNOTSUPP');
    const n = this.node(id);
    if (n.noXattrs) throw fsErr('ENODATA');
    const p = this.realPath(n);
    try {
      return native.lgetxattr(p, name);
    } catch (err) {
      if (isCode(err, 'ENODATA') && listVisible(p).length === 0) n.noXattrs = true;
      throw err;
    }
  }

  async setxattr(id: number, name: string, value: Buffer, flags: number): Promise<void> {
    if (isPrivateXattr(name)) throw fsErr('EOPNOTSUPP');
    return this.lock.run(async () => {
      const n = this.node(id);
      this.writable();
      if (!n.upper && flags & XATTR_REPLACE) native.lgetxattr(this.realPath(n), name); // ENODATA before a copy-up
      if (!n.upper && flags & XATTR_CREATE && hasXattr(this.realPath(n), name)) throw fsErr('EEXIST');
      await this.copyUp(n);
      native.lsetxattr(this.upperPath(n), name, value, flags);
      n.noXattrs = false;
    });
  }

  async removexattr(id: number, name: string): Promise<void> {
    if (isPrivateXattr(name)) throw fsErr('EOPNOTSUPP');
    return this.lock.run(async () => {
      const n = this.node(id);
      this.writable();
      if (!n.upper) native.lgetxattr(this.realPath(n), name); // ENODATA without a pointless copy-up
      await this.copyUp(n);
      native.lremovexattr(this.upperPath(n), name);
    });
  }

  // ---- file I/O ---------------------------------------------------------------------------------------------

  private addHandle(node: Node, fd: number, upper: boolean, flags: number): number {
    let fh = this.nextFh;
    while (this.handles.has(fh) || fh === 0) fh = (fh + 1) >>> 0;
    this.nextFh = (fh + 1) >>> 0;
    this.handles.set(fh, { node, fd, upper, flags });
    return fh;
  }

  /** Keep node-keyed I/O working after the last name of n goes: an implicit handle, pinned until forget. Only when
   *  the transport does node-keyed I/O (a kernel that sends no OPEN may still hold the file open). */
  private pinForRemoval(n: Node): void {
    if (!this.nodeKeyedIo || n.kind !== 'file' || this.implicit.has(n)) return;
    try {
      this.implicitHandle(n, false);
    } catch {
      // unreadable backing file: reads of it fail as they would have
    }
  }

  /** Set by a transport that uses readNode/writeNode (the kernel sends no OPEN). */
  nodeKeyedIo = false;

  private static readonly IMPLICIT_MAX = 128;

  /** The implicit handle (fh) of n, opened on first use: its upper copy read-write once copied up, else the lower
   *  file. */
  private implicitHandle(n: Node, write: boolean): number {
    const fh = this.implicit.get(n);
    const h = fh === undefined ? undefined : this.handles.get(fh);
    if (h && h.upper === n.upper && (!write || h.upper)) {
      this.implicit.delete(n); // most recently used last
      this.implicit.set(n, fh!);
      return fh!;
    }
    if (h) this.closeHandle(fh!); // opened before the copy-up (or read-only)
    mustBeFile(n);
    let fd: number;
    if (n.upper) {
      const p = this.upperPath(n);
      try {
        fd = openSync(p, fsc.O_RDWR);
      } catch (err) {
        if (write || !isCode(err, 'EACCES', 'EPERM', 'ETXTBSY')) throw err;
        fd = openSync(p, fsc.O_RDONLY);
      }
    } else {
      fd = openSync(this.realPath(n), fsc.O_RDONLY);
    }
    const nfh = this.addHandle(n, fd, n.upper, n.upper ? fsc.O_RDWR : fsc.O_RDONLY);
    this.implicit.set(n, nfh);
    this.trimImplicit(n);
    return nfh;
  }

  /** Close the least recently used implicit handles past IMPLICIT_MAX (not those of removed nodes, nor keep's). */
  private trimImplicit(keep: Node): void {
    if (this.implicit.size <= Overlay.IMPLICIT_MAX) return;
    for (const [m, mfh] of this.implicit) {
      if (this.implicit.size <= Overlay.IMPLICIT_MAX) break;
      if (m.removed || m === keep) continue;
      this.closeHandle(mfh);
      this.implicit.delete(m);
    }
  }

  private closeHandle(fh: number): void {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    this.closeFd(h.fd);
  }

  /** fds an operation on libuv's pool is using, and how many such operations: closing one of them waits for them.
   *  A closed fd's number goes to the next open, and a pending read or write would reach that file instead. (An
   *  implicit handle can be closed by the LRU, or replaced after a copy-up, while a large read runs on it.) */
  private readonly fdUse = new Map<number, number>();
  private readonly fdCloseLater = new Set<number>();

  private async usingFd<T>(fd: number, fn: () => Promise<T>): Promise<T> {
    this.fdUse.set(fd, (this.fdUse.get(fd) ?? 0) + 1);
    try {
      return await fn();
    } finally {
      const left = this.fdUse.get(fd)! - 1;
      if (left > 0) this.fdUse.set(fd, left);
      else {
        this.fdUse.delete(fd);
        if (this.fdCloseLater.delete(fd)) closeQuietly(fd);
      }
    }
  }

  private closeFd(fd: number): void {
    if (this.fdUse.has(fd)) this.fdCloseLater.add(fd);
    else closeQuietly(fd);
  }

  private dropImplicit(n: Node): void {
    const fh = this.implicit.get(n);
    if (fh === undefined) return;
    this.implicit.delete(n);
    this.closeHandle(fh);
  }

  /** read() by node id, with no open handle (the kernel sent no OPEN). */
  async readNode(id: number, buf: Buffer, len: number, pos: number): Promise<number> {
    return this.read(this.implicitHandle(this.node(id), false), buf, len, pos);
  }

  /** write() by node id: the first write to a lower file copies it up (the kernel sent no OPEN to do it at). */
  async writeNode(id: number, buf: Buffer, len: number, pos: number): Promise<number> {
    await this.prepareWrite(id);
    return this.write(this.implicitHandle(this.node(id), true), buf, len, pos);
  }

  /** Copy a lower file up for a write to come by node id (a no-op once upper). Separate from writeNode so that a
   *  transport can let a signal end the wait for a long copy-up (it goes on) without a half-done write. */
  async prepareWrite(id: number): Promise<void> {
    const n = this.node(id);
    if (n.upper) return;
    this.writable();
    mustBeFile(n);
    await this.lock.run(() => this.copyUp(n, { data: true }));
  }

  /** Whether node id needs a copy-up before it can be written. */
  needsCopyUp(id: number): boolean {
    return !this.node(id).upper;
  }

  /** fallocate() by node id: a lower file is copied up first, as for a write. */
  async fallocateNode(id: number, mode: number, offset: number, length: number): Promise<void> {
    await this.prepareWrite(id);
    return this.fallocate(this.implicitHandle(this.node(id), true), mode, offset, length);
  }

  /** lseek() SEEK_DATA / SEEK_HOLE by node id, in the lower file until it is copied up. */
  async lseekNode(id: number, offset: number, whence: number): Promise<number> {
    return this.lseek(this.implicitHandle(this.node(id), false), offset, whence);
  }

  /** copy_file_range() by node ids: the destination is copied up first, as for a write (before the source's handle
   *  is taken: source and destination may be one lower file). */
  async copyFileRangeNode(idIn: number, offIn: number, idOut: number, offOut: number, len: number, flags: number): Promise<number> {
    await this.prepareWrite(idOut);
    const nIn = this.node(idIn);
    const nOut = this.node(idOut);
    const fds = (): [number, number] => {
      const fdOut = this.handle(this.implicitHandle(nOut, true)).fd;
      return [this.handle(this.implicitHandle(nIn, false)).fd, fdOut];
    };
    return this.copyRange(fds, offIn, offOut, len, flags);
  }

  /** fsync() by node id. */
  async fsyncNode(id: number, datasync: boolean): Promise<void> {
    const n = this.node(id);
    if (n.kind !== 'file' || !n.upper) return; // nothing written through the mount is unsynced elsewhere
    return this.fsync(this.implicitHandle(n, false), datasync);
  }

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) throw fsErr('EBADF');
    return h;
  }

  /** The backing file of handle fh as it was opened (a transport hands it to the kernel: FUSE passthrough): its fd
   *  (ours, closed at release) and whether it is the upper copy or the lower file. */
  handleFile(fh: number): { fd: number; upper: boolean } {
    const h = this.handle(fh);
    return { fd: h.fd, upper: h.upper };
  }

  async open(id: number, flags: number): Promise<number> {
    const n = this.node(id);
    if (n.kind === 'dir' && (flags & O_ACCMODE) !== fsc.O_RDONLY) throw fsErr('EISDIR');
    const write = (flags & O_ACCMODE) !== fsc.O_RDONLY || (flags & fsc.O_TRUNC) !== 0;
    if (write && !n.upper) {
      this.writable();
      await this.lock.run(() => this.copyUp(n, { data: (flags & fsc.O_TRUNC) === 0 }));
    }
    const fd = openSync(this.realPath(n), openFlags(flags) | (write ? flags & fsc.O_TRUNC : 0));
    return this.addHandle(n, fd, n.upper, flags);
  }

  /** Handle fh for reading: one opened read-only before its file was copied up follows the data to the upper copy
   *  (as the kernel does). */
  private readHandle(fh: number): Handle {
    const h = this.handle(fh);
    if (!h.upper && h.node.upper) {
      const fd = openSync(this.upperPath(h.node), fsc.O_RDONLY);
      const old = h.fd;
      h.fd = fd;
      h.upper = true;
      this.closeFd(old);
    }
    return h;
  }

  /** Handle fh for a change of its file: only write opens have one (they copied the file up). */
  private writeHandle(fh: number): Handle {
    const h = this.handle(fh);
    if (!h.upper) throw fsErr('EBADF');
    return h;
  }

  /** The fd a read of handle fh reads, or with fh 0 that of node id's implicit handle (no open handle). Valid until
   *  the next turn of the event loop: a transport does a small read on it at once (its own syscall). */
  readFd(fh: number, id: number): number {
    return this.readHandle(fh === 0 ? this.implicitHandle(this.node(id), false) : fh).fd;
  }

  /** The fd a write of handle fh writes, or with fh 0 that of node id's implicit handle; valid as readFd's. null when
   *  the write cannot be done at once: by node id to a lower file, which is copied up first (writeNode). */
  writeFd(fh: number, id: number): number | null {
    if (fh === 0) {
      const n = this.node(id);
      if (!n.upper) return null;
      fh = this.implicitHandle(n, true);
    }
    return this.writeHandle(fh).fd;
  }

  async read(fh: number, buf: Buffer, len: number, pos: number): Promise<number> {
    const fd = this.readHandle(fh).fd;
    if (len <= SYNC_IO_MAX) return readFully(fd, buf, len, pos);
    return this.usingFd(fd, async () => {
      let done = 0;
      while (done < len) {
        const { bytesRead } = await readAsync(fd, buf, done, len - done, pos + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    });
  }

  async write(fh: number, buf: Buffer, len: number, pos: number): Promise<number> {
    const fd = this.writeHandle(fh).fd;
    if (len <= SYNC_IO_MAX) return writeFully(fd, buf, len, pos);
    return this.usingFd(fd, async () => {
      let done = 0;
      while (done < len) done += (await writeAsync(fd, buf, done, len - done, pos + done)).bytesWritten;
      return done;
    });
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    ftruncateSync(this.writeHandle(fh).fd, size);
  }

  /** fallocate(2) of a write handle's file. A mode the backing fs lacks fails as it does there (EOPNOTSUPP...). */
  async fallocate(fh: number, mode: number, offset: number, length: number): Promise<void> {
    try {
      native.fallocate(this.writeHandle(fh).fd, mode, offset, length);
    } catch (err) {
      // ENOSYS would make a FUSE kernel stop sending fallocate for the whole mount: the mode is what is missing
      if (isCode(err, 'ENOSYS')) throw fsErr('EOPNOTSUPP');
      throw err;
    }
  }

  /** lseek(2) SEEK_DATA / SEEK_HOLE in the file under fh (the lower file until copied up: nothing is copied).
   *  Other whences never come (the kernel answers them from its own size): EINVAL. */
  async lseek(fh: number, offset: number, whence: number): Promise<number> {
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw fsErr('EINVAL');
    return native.lseek(this.readHandle(fh).fd, offset, whence);
  }

  /** copy_file_range(2) from the file under fhIn to a write handle's file: bytes copied (0 at the end of the input;
   *  fewer than len past COPY_MAX, as copy_file_range may). */
  async copyFileRange(fhIn: number, offIn: number, fhOut: number, offOut: number, len: number, flags: number): Promise<number> {
    return this.copyRange(() => [this.readHandle(fhIn).fd, this.writeHandle(fhOut).fd], offIn, offOut, len, flags);
  }

  /** Most bytes one copyFileRange copies, in steps (rangecopy.ts) with a turn of the loop between them: each step
   *  is a synchronous syscall on the JS thread, and other requests are answered between steps. */
  private static readonly COPY_MAX = 64 << 20;

  private async copyRange(fds: () => [number, number], offIn: number, offOut: number, len: number, flags: number): Promise<number> {
    const want = Math.min(len, Overlay.COPY_MAX);
    const copier = new RangeCopier(flags);
    let done = 0;
    while (done < want) {
      if (done > 0) await loopTurn();
      let n: number;
      try {
        // the fds again each step: an implicit handle may have been closed (LRU) and reopened meanwhile
        const [fdIn, fdOut] = fds();
        n = copier.step(fdIn, offIn + done, fdOut, offOut + done, want - done);
      } catch (err) {
        if (done > 0) return done; // what was copied stays copied: report it, as a short write would
        throw err;
      }
      if (n === 0) break; // end of the input
      done += n;
    }
    return done;
  }

  async fsync(fh: number, datasync: boolean): Promise<void> {
    const fd = this.handle(fh).fd;
    await this.usingFd(fd, () => (datasync ? fdatasyncAsync(fd) : fsyncAsync(fd)));
  }

  async release(fh: number): Promise<void> {
    this.closeHandle(fh);
  }

  /** Close every handle (unmount). */
  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    for (const fd of this.dirFds.values()) closeQuietly(fd);
    this.dirFds.clear();
    this.implicit.clear();
    await Promise.all(hs.map((h) => closeAsync(h.fd).catch(() => undefined)));
  }
}

/** A time to set: exact seconds and nanoseconds, the kernel's 'now', or 'omit' to leave it. */
export type TimeSpec = { sec: number; nsec: number } | 'now' | 'omit';

function timeArgs(t: TimeSpec): [number, number] {
  if (t === 'now') return [0, UTIME_NOW];
  if (t === 'omit') return [0, UTIME_OMIT];
  return [t.sec, t.nsec];
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // closed already
  }
}

function readFully(fd: number, buf: Buffer, len: number, pos: number): number {
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, done, len - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function writeFully(fd: number, buf: Buffer, len: number, pos: number): number {
  let done = 0;
  while (done < len) done += writeSync(fd, buf, done, len - done, pos + done);
  return done;
}

/** Flags for opening the real file: access mode and sync flags; creation, truncation and append are ours to handle. */
function openFlags(flags: number): number {
  const strip = fsc.O_CREAT | fsc.O_EXCL | fsc.O_TRUNC | fsc.O_APPEND | fsc.O_NOCTTY | (fsc.O_DIRECT ?? 0);
  return flags & ~strip;
}

/** A `.wh.NAME` file in an upper dir (never written by us, but honoured). Names too long for one cannot have it. */
async function whFileExists(dir: string, name: string): Promise<boolean> {
  if (Buffer.byteLength(name) + WH_PREFIX.length > NAME_MAX) return false;
  return (await lstatOrNull(path.join(dir, WH_PREFIX + name))) !== null;
}

function hasXattr(p: string, name: string): boolean {
  try {
    native.lgetxattr(p, name);
    return true;
  } catch {
    return false;
  }
}

/** Data I/O and truncate are for regular files: EISDIR for a dir, EINVAL for anything else. */
function mustBeFile(n: Node): void {
  if (n.kind === 'dir') throw fsErr('EISDIR');
  if (n.kind !== 'file') throw fsErr('EINVAL');
}

function clearLowers(n: Node): void {
  n.lowerDirs = [];
  for (const c of n.children.values()) if (c && c.kind === 'dir') clearLowers(c);
}

/** Remove the whiteouts (both forms) of an upper tree that merges no lower dir any more. A dir's times stay as they
 *  were: its entries as seen through the mount did not change (kernel overlay's redirect leaves them too). */
async function dropWhiteouts(dir: string): Promise<void> {
  const before = lstatX(dir);
  let dropped = false;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await dropWhiteouts(p);
    else if (e.name.startsWith(WH_PREFIX)) {
      unlinkSync(p);
      dropped = true;
    } else if (e.isCharacterDevice()) {
      const st = await lstatOrNull(p);
      if (st && isWhiteoutStat(st)) {
        unlinkSync(p);
        dropped = true;
      }
    }
  }
  if (dropped) setTimes(dir, before);
}

async function clearDir(dir: string): Promise<void> {
  for (const name of await readdir(dir)) await rm(path.join(dir, name), { recursive: true, force: true });
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Is this child (as known already) a file with data, one a reader in listing order reads (readStarted)? */
function readable(m: Node | null | undefined): m is Node {
  if (!m || m.kind !== 'file') return false;
  return m.upper || (m.lowerStat !== null && m.lowerStat.size > 0);
}
