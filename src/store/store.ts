import { mkdir, readdir, readFile, readlink, realpath, rename, rm, symlink, writeFile, lstat, stat, open, utimes, link, unlink } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { IO_PARALLEL, mapLimit } from '../common/limit.js';
import { LayerfsError, isErrno } from '../common/errors.js';
import { logger } from '../common/log.js';
import { FileLock, type LockWait, describeLockWait } from './lock.js';
import { type ImageRecord, type LayerRecord, isLayerId, parseImageRecord, parseLayerRecord } from './records.js';

export type Role = 'writer' | 'reader';

export interface StoreOptions {
  /** Local root (per host). */
  root: string;
  /** Shared store (NFS in production). Default: `<root>/shared`. */
  shared?: string;
  /** Given: honoured. Not given: see `Store.open` (writer of a local store or where the marker names this host). */
  role?: Role;
  /** How long a write waits for the shared store's writer lock (default 600 s). */
  lockTimeoutMs?: number;
  /** Told who holds the writer lock while a write waits for it (at once, then every 10 s). Default: a pino warning. */
  onLockWait?: (w: LockWait) => void;
}

/** `<shared>/.layerfs-store`: what store this is and which host is its writer. */
export interface StoreMarker {
  storeId: string;
  created: string;
  writer: { hostId: string; hostname: string; since: string };
  /** 1 once every layer's `refs/` holds its users (see `addRefs`); a writer builds them once for an older store. */
  refs?: 1;
}

/** `<root>/host.json`: this root's identity, made once. */
interface HostFile {
  hostId: string;
  hostname: string;
  created: string;
}

const MARKER = '.layerfs-store';
const HOST_FILE = 'host.json';

/** Create `file` with `data` unless it exists (temp file + link(2): never a half-written file, never an overwrite). */
async function createExclusive(file: string, data: string): Promise<boolean> {
  const tmp = path.join(path.dirname(file), `${TMP_PREFIX}${path.basename(file)}-${randomBytes(4).toString('hex')}`);
  await writeFileAtomic(tmp, data);
  try {
    await link(tmp, file);
    return true;
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return false;
    throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

async function readJson<T>(file: string): Promise<T | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new LayerfsError('ENOSTORE', file, 'is not valid JSON');
  }
}

function checkMarker(file: string, m: StoreMarker | null): StoreMarker | null {
  if (m === null) return null;
  if (typeof m !== 'object' || typeof m.storeId !== 'string' || typeof m.writer?.hostId !== 'string') throw new LayerfsError('ENOSTORE', file, 'is not a layerfs store marker');
  return m;
}

/** This root's host id, made (once, race-free) on first use. */
async function loadHostId(root: string): Promise<string> {
  const file = path.join(root, HOST_FILE);
  for (;;) {
    const h = await readJson<HostFile>(file);
    if (h && typeof h.hostId === 'string') return h.hostId;
    if (h) throw new LayerfsError('EUSAGE', file, 'has no hostId');
    await mkdir(root, { recursive: true });
    const mine: HostFile = { hostId: randomBytes(16).toString('hex'), hostname: os.hostname(), created: new Date().toISOString() };
    if (await createExclusive(file, JSON.stringify(mine, null, 2) + '\n')) return mine.hostId;
  }
}

/** The three kinds of dirs, in the order seed 000 scans them. */
const KINDS = ['overlay', 'overlay-layers', 'overlay-images'] as const;
type Kind = (typeof KINDS)[number];

const TMP_PREFIX = '.tmp-';
/** A removed RO layer's record dir while its removal is under way (see `retireLayer`). */
const RETIRE_PREFIX = '.retire-';
const SHORT_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0234567';
/** Short link names: 10 chars keep `RO/l/<short>:` at 16 bytes, so 200 lowers fit in one page of mount data. */
const SHORT_LEN = 10;

/** Write a file atomically: temp name in the same dir, fsync, rename. */
export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const tmp = path.join(path.dirname(file), `${TMP_PREFIX}${path.basename(file)}-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

/** Make `link -> target` unless it already points there. */
async function ensureSymlink(target: string, link: string): Promise<void> {
  try {
    if ((await readlink(link)) === target) return;
    await rm(link);
  } catch (err) {
    if (isErrno(err, 'EINVAL')) throw new LayerfsError('EEXIST', link, 'exists and is not a symlink');
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  try {
    await symlink(target, link);
  } catch (err) {
    if (!isErrno(err, 'EEXIST')) throw err;
  }
}

/**
 * The on-disk layout (DESIGN.md, iSulad's split RO layout). The only code that builds store paths.
 *
 *   <shared>/overlay/<id>/{diff,link}      <shared>/overlay/l/<short> -> ../<id>/diff
 *   <shared>/overlay-layers/<id>/layer.json
 *   <shared>/overlay-images/<id>/{image.json,manifest,config}
 *   <root>/{overlay,overlay-layers,overlay-images}/RO -> <shared>/<same>
 *   <root>/<kind>/<ro-id> -> RO/<ro-id>
 *   <root>/overlay/<rw-id>/{diff,work,merged,link,lower}   <root>/overlay-layers/<rw-id>/layer.json
 *   <root>/index/   (LevelDB, src/index)
 *   <shared>/.layerfs-store   the store marker (storeId, recorded writer)   <root>/host.json   this root's host id
 */
export class Store {
  readonly root: string;
  readonly shared: string;
  readonly role: Role;
  /** Why this host has its role: `explicit`, `local store`, `recorded writer`, or why it is a reader. */
  readonly roleReason: string;
  /** This local root's id (`<root>/host.json`, random, made once): names this host in the store marker and per-host files. */
  readonly hostId: string;
  private lockTimeoutMs = 600_000;
  private onLockWait: (w: LockWait) => void = (w) => logger().warn({ holder: w.holder, waitedMs: w.waitedMs }, describeLockWait(w));
  /** realBases(), once. */
  private bases?: { roots: string[]; shareds: string[] };

  private constructor(root: string, shared: string, hostId: string, role: Role, roleReason: string) {
    this.root = root;
    this.shared = shared;
    this.hostId = hostId;
    this.role = role;
    this.roleReason = roleReason;
  }

  /**
   * Open (and lay out, if new) a store. Makes no change to the shared store on a reader.
   *
   * Role, when not given: writer for a local store (the shared dir is the default `<root>/shared`)
   * and where the store marker names this host as the writer; reader otherwise (a shared dir whose
   * marker names another host, or with no marker: not mounted, or not made yet). A writer adds the
   * marker to a shared dir that has none (a new store, or one made before markers existed); an
   * explicit writer that is not the recorded one is warned about.
   */
  static async open(opts: StoreOptions): Promise<Store> {
    const root = path.resolve(opts.root);
    const local = path.join(root, 'shared');
    const shared = path.resolve(opts.shared ?? local);
    const hostId = await loadHostId(root);
    const marker = checkMarker(path.join(shared, MARKER), await readJson<StoreMarker>(path.join(shared, MARKER)));
    let role: Role;
    let reason: string;
    if (opts.role) [role, reason] = [opts.role, 'explicit'];
    else if (shared === local) [role, reason] = ['writer', 'local store'];
    else if (marker?.writer.hostId === hostId) [role, reason] = ['writer', 'recorded writer'];
    else if (marker) [role, reason] = ['reader', `the store's recorded writer is another host (${marker.writer.hostname}, ${marker.writer.hostId})`];
    else [role, reason] = ['reader', `no ${MARKER} marker in the shared dir`];
    const s = new Store(root, shared, hostId, role, reason);
    if (opts.lockTimeoutMs !== undefined) s.lockTimeoutMs = opts.lockTimeoutMs;
    if (opts.onLockWait) s.onLockWait = opts.onLockWait;
    for (const kind of KINDS) {
      if (s.role === 'writer') await mkdir(path.join(s.shared, kind), { recursive: true });
      await mkdir(path.join(s.root, kind), { recursive: true });
      await ensureSymlink(path.join(s.shared, kind), path.join(s.root, kind, 'RO'));
    }
    if (s.role === 'writer') {
      await mkdir(path.join(s.shared, 'overlay', 'l'), { recursive: true });
      let m = marker ?? (await s.createMarker());
      if (!m.refs) m = await s.buildRefs(m);
      if (m.writer.hostId !== hostId) {
        logger().warn(
          { shared, hostId, recordedWriter: m.writer },
          `this host writes the shared store as --role writer but the store's recorded writer is ${m.writer.hostname} (${m.writer.hostId}); \`layerfs store take-writer\` makes this host the writer`,
        );
      }
    }
    return s;
  }

  // ---- who uses a layer, next to it: `overlay-layers/<id>/refs/{image-<id>,layer-<child>}` ------------------
  /**
   * Each RO layer's record dir holds an empty file per image that lists it and per RO layer on top of it, written
   * before that image or child is published and removed after it is gone. So a removal learns what uses a layer,
   * across writers, from one readdir of the layer's own dir (src/usage), never by reading every record.
   * A ref whose image or child is gone (a crash between the two steps) is stale: the reader checks and drops it.
   */
  private refsDir(layer: string): string {
    return this.sharedPath('overlay-layers', layer, 'refs');
  }

  async addRefs(layers: string[], ref: string): Promise<void> {
    for (const l of layers) {
      await mkdir(this.refsDir(l), { recursive: true });
      await writeFile(path.join(this.refsDir(l), ref), '');
    }
  }

  async dropRefs(layers: string[], ref: string): Promise<void> {
    for (const l of layers) await rm(path.join(this.refsDir(l), ref), { force: true });
  }

  /** A layer's refs: `{kind: 'image' | 'layer', id}` (one readdir). */
  async listRefs(layer: string): Promise<{ kind: 'image' | 'layer'; id: string; ref: string }[]> {
    const out: { kind: 'image' | 'layer'; id: string; ref: string }[] = [];
    for (const n of await readdir(this.refsDir(layer)).catch(() => [] as string[])) {
      const m = /^(image|layer)-([0-9a-f]{64})$/.exec(n);
      if (m) out.push({ kind: m[1] as 'image' | 'layer', id: m[2]!, ref: n });
    }
    return out;
  }

  /** Whether an image's record has its final name (one stat). */
  async imagePublished(id: string): Promise<boolean> {
    return exists(this.sharedPath('overlay-images', id, 'image.json'));
  }

  /** Refs for a store made before them (once, by a writer): every image's and every layer's, then the marker says so. */
  private async buildRefs(m: StoreMarker): Promise<StoreMarker> {
    for (const id of (await this.listSharedIds('overlay-images')).ids) {
      const rec = await this.readSharedImage(id).catch(() => null);
      if (rec) await this.addRefs(rec.layers.filter((l) => isLayerId(l)), `image-${id}`);
    }
    for (const id of (await this.listSharedIds('overlay-layers')).ids) {
      const rec = await this.readSharedLayer(id).catch(() => null);
      if (rec?.parent) await this.addRefs([rec.parent], `layer-${id}`);
    }
    const next: StoreMarker = { ...m, refs: 1 };
    await writeFileAtomic(this.markerFile, JSON.stringify(next, null, 2) + '\n');
    return next;
  }

  // ---- the store marker --------------------------------------------------------------------------
  get markerFile(): string {
    return path.join(this.shared, MARKER);
  }

  /** The store marker, or null when the shared dir has none (not mounted, not made yet, or made before markers). */
  async readMarker(): Promise<StoreMarker | null> {
    return checkMarker(this.markerFile, await readJson<StoreMarker>(this.markerFile));
  }

  /** The store marker; fails (ENOSTORE) when it is not there, so that nothing is changed on the word of an empty dir. */
  async requireMarker(what: string): Promise<StoreMarker> {
    const m = await this.readMarker();
    if (!m) throw new LayerfsError('ENOSTORE', what, `the shared store at ${this.shared} is not there (no ${MARKER} marker: is it mounted?)`);
    return m;
  }

  private async createMarker(): Promise<StoreMarker> {
    const now = new Date().toISOString();
    const m: StoreMarker = { storeId: randomBytes(16).toString('hex'), created: now, writer: { hostId: this.hostId, hostname: os.hostname(), since: now } };
    if (await createExclusive(this.markerFile, JSON.stringify(m, null, 2) + '\n')) {
      logger().info({ shared: this.shared, storeId: m.storeId }, 'store marker written');
      return m;
    }
    return (await this.readMarker())!; // another writer made it first
  }

  /**
   * `layerfs store take-writer`: record this host as the store's writer. A shared dir without a
   * marker must at least have the layerfs kind dirs (a store made before markers); an empty dir is
   * refused (not mounted?). Returns the marker written and the previous writer.
   */
  async takeWriter(): Promise<{ marker: StoreMarker; previous: StoreMarker['writer'] | null }> {
    const old = await this.readMarker();
    if (!old) {
      for (const kind of KINDS) {
        if (!(await exists(this.sharedPath(kind)))) throw new LayerfsError('ENOSTORE', 'store take-writer', `the shared store at ${this.shared} is not there (no ${MARKER} marker and no ${kind}/: is it mounted?)`);
      }
    }
    const now = new Date().toISOString();
    const writer = { hostId: this.hostId, hostname: os.hostname(), since: now };
    const marker: StoreMarker = old ? { ...old, writer } : { storeId: randomBytes(16).toString('hex'), created: now, writer };
    await writeFileAtomic(this.markerFile, JSON.stringify(marker, null, 2) + '\n');
    return { marker, previous: old?.writer ?? null };
  }

  // ---- paths ---------------------------------------------------------------------------------
  /** The daemon's API socket of a root (the CLI looks for it before opening anything). */
  static apiSocketOf(root: string): string {
    return path.join(path.resolve(root), 'api.sock');
  }
  get apiSocket(): string {
    return Store.apiSocketOf(this.root);
  }
  get indexDir(): string {
    return path.join(this.root, 'index');
  }
  /** `<root>/index.holder`: who holds the index now (`{pid, host, since, command}`), for a process waiting for it. */
  get indexHolderFile(): string {
    return path.join(this.root, 'index.holder');
  }
  /** Tell of a wait for a lock (the writer lock, the index) as this process was told to: stderr for a CLI command, the log otherwise. */
  noticeLockWait(w: LockWait): void {
    this.onLockWait(w);
  }
  /** A layer's dir as every consumer sees it: `<root>/overlay/<id>` (a symlink for RO layers). */
  layerDir(id: string): string {
    return path.join(this.root, 'overlay', id);
  }
  diffDir(id: string): string {
    return path.join(this.layerDir(id), 'diff');
  }
  /** Dir that kernel mounts chdir into so lowerdir can use short relative names. */
  get mountBase(): string {
    return path.join(this.root, 'overlay');
  }
  /** Relative (to mountBase) short path of an RO layer's diff, e.g. `RO/l/abcdefghij`. */
  async shortLowerPath(id: string): Promise<string> {
    const short = (await readFile(path.join(this.shared, 'overlay', id, 'link'), 'utf8')).trim();
    return `RO/l/${short}`;
  }

  /**
   * What a path given to a mount names in this root or its shared store, in any of the forms our
   * drivers pass (kernel overlay: relative to `mountBase`, e.g. `RO/l/<short>`, `<rw-id>/diff`,
   * `empty`; FUSE: absolute `<root>/overlay/<id>/diff`) or their absolute equivalents under the root
   * or the shared store (also through their real paths). `link`: a short `l/` name; `diff`: a layer's
   * diff dir (`rw`: an RW layer of this root); `empty`: the empty lower of one-layer views; null: a
   * path that is not ours, or names nothing that exists.
   */
  async layerOfMountPath(p: string): Promise<{ kind: 'link' | 'diff'; id: string; rw: boolean } | { kind: 'empty' } | null> {
    const abs = path.resolve(this.mountBase, p);
    const { roots, shareds } = await this.realBases();
    for (const r of roots) {
      const rel = path.relative(path.join(r, 'overlay'), abs);
      if (rel.startsWith('..') || path.isAbsolute(rel)) continue;
      const f = rel.split(path.sep);
      if (rel === 'empty') return { kind: 'empty' };
      if (f.length === 3 && f[0] === 'RO' && f[1] === 'l') return this.viaShortName(f[2]!);
      if (f.length === 3 && f[0] === 'RO' && isLayerId(f[1]!) && f[2] === 'diff') return this.roDiff(f[1]!);
      if (f.length === 2 && isLayerId(f[0]!) && f[1] === 'diff') {
        const st = await lstat(this.layerDir(f[0]!)).catch(() => null);
        if (st?.isSymbolicLink()) return this.roDiff(f[0]!);
        if (st?.isDirectory() && (await this.readLocalLayer(f[0]!))?.rw) return { kind: 'diff', id: f[0]!, rw: true };
        return null;
      }
    }
    for (const s of shareds) {
      const rel = path.relative(path.join(s, 'overlay'), abs);
      if (rel.startsWith('..') || path.isAbsolute(rel)) continue;
      const f = rel.split(path.sep);
      if (f.length === 2 && f[0] === 'l') return this.viaShortName(f[1]!);
      if (f.length === 2 && isLayerId(f[0]!) && f[1] === 'diff') return this.roDiff(f[0]!);
    }
    return null;
  }

  /** The RO layer a short `l/` name links to (`l/<short> -> ../<id>/diff`), if it is one of this store's. */
  async layerIdOfShortName(short: string): Promise<string | null> {
    if (!/^[a-z0-9]+$/.test(short)) return null;
    const target = await readlink(this.sharedPath('overlay', 'l', short)).catch(() => null);
    const m = target ? /^\.\.\/([0-9a-f]{64})\/diff$/.exec(target) : null;
    return m && isLayerId(m[1]!) ? m[1]! : null;
  }

  private async viaShortName(short: string): Promise<{ kind: 'link'; id: string; rw: false } | null> {
    const id = await this.layerIdOfShortName(short);
    return id ? { kind: 'link', id, rw: false } : null;
  }

  private async roDiff(id: string): Promise<{ kind: 'diff'; id: string; rw: false } | null> {
    return (await exists(this.sharedPath('overlay', id, 'diff'))) ? { kind: 'diff', id, rw: false } : null;
  }

  /** The root and the shared store, each as given and as its real path (a mount may name either). */
  private async realBases(): Promise<{ roots: string[]; shareds: string[] }> {
    if (!this.bases) {
      const both = async (p: string) => [...new Set([p, await realpath(p).catch(() => p)])];
      this.bases = { roots: await both(this.root), shareds: await both(this.shared) };
    }
    return this.bases;
  }
  layerMetaDir(id: string): string {
    return path.join(this.root, 'overlay-layers', id);
  }
  imageDir(id: string): string {
    return path.join(this.root, 'overlay-images', id);
  }
  sharedPath(kind: Kind, ...rest: string[]): string {
    return path.join(this.shared, kind, ...rest);
  }
  get writerLockFile(): string {
    return path.join(this.shared, '.writer.lock');
  }

  // ---- writer lock -----------------------------------------------------------------------------
  /**
   * Run `fn` holding the shared store's writer lock. With the lock held nobody else is writing, so
   * stale temp dirs (a crashed import's leftovers) are removed first. While another process holds
   * it, `onLockWait` is told who (at once, then every 10 s); after `lockTimeoutMs` the write fails
   * naming the holder.
   */
  async withWriteLock<T>(purpose: string, fn: () => Promise<T>, waitMs = this.lockTimeoutMs): Promise<T> {
    if (this.role !== 'writer') throw new LayerfsError('EROLE', purpose, 'this host is a reader: only the writer host changes the shared store');
    const lock = await FileLock.acquire(this.writerLockFile, purpose, { waitMs, lockName: "the shared store's writer lock", what: purpose, onWait: this.onLockWait });
    try {
      await this.removeStaleTemps(this.shared);
      return await fn();
    } finally {
      await lock.release();
    }
  }

  /**
   * Remove `.tmp-*` entries under a store's kind dirs (shared: with the writer lock held; root: at start); `deep`
   * (prune) also inside every record dir.
   */
  async removeStaleTemps(base: string = this.root, opts: { deep?: boolean } = {}): Promise<void> {
    for (const kind of KINDS) {
      let names: string[];
      try {
        names = await readdir(path.join(base, kind));
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        throw err;
      }
      for (const n of names) {
        if (n.startsWith(TMP_PREFIX)) {
          logger().info({ path: path.join(base, kind, n) }, 'removing stale temp dir');
          await rm(path.join(base, kind, n), { recursive: true, force: true });
        }
      }
      if (opts.deep && (kind === 'overlay-layers' || kind === 'overlay-images')) {
        // atomic-write leftovers inside record dirs: one readdir per record, so only `prune` looks (they are
        // harmless meanwhile: nothing reads a `.tmp-` name)
        // (real dirs only: the RO symlinks of a root lead to the shared store, one NFS readdir each)
        for (const d of await readdir(path.join(base, kind), { withFileTypes: true })) {
          const n = d.name;
          if (n.startsWith(TMP_PREFIX) || n === 'RO' || !d.isDirectory()) continue;
          const inner = await readdir(path.join(base, kind, n)).catch(() => [] as string[]);
          for (const f of inner) if (f.startsWith(TMP_PREFIX)) await rm(path.join(base, kind, n, f), { force: true });
        }
      }
    }
  }

  // ---- RO layers -------------------------------------------------------------------------------
  /** A fresh temp dir on the shared store with an empty `diff/`; apply into it, then `publishLayer`. */
  async stageLayer(): Promise<string> {
    const tmp = this.sharedPath('overlay', `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    await mkdir(path.join(tmp, 'diff'), { recursive: true, mode: 0o755 });
    return tmp;
  }

  async discardStaged(tmp: string): Promise<void> {
    if (!path.basename(tmp).startsWith(TMP_PREFIX)) throw new Error(`not a temp dir: ${tmp}`);
    await rm(tmp, { recursive: true, force: true });
  }

  /**
   * Publish a staged layer: data dir renamed into place, short link, then layer.json (atomic), then
   * the local symlinks. Returns false (and discards the staged dir) when the layer already exists.
   */
  async publishLayer(tmp: string, rec: LayerRecord): Promise<boolean> {
    if (rec.rw) throw new Error('publishLayer is for RO layers');
    const dataDir = this.sharedPath('overlay', rec.id);
    if (await this.roLayerComplete(rec.id)) {
      await this.discardStaged(tmp);
      await this.linkLocal(rec.id, 'layer');
      return false;
    }
    // a data dir without layer.json is a leftover of a crash between the two steps: replace it
    if (await exists(dataDir)) await this.moveAsideAndRemove(dataDir);
    if (rec.parent) await this.addRefs([rec.parent], `layer-${rec.id}`);
    const short = await this.makeShortLink(rec.id);
    await writeFile(path.join(tmp, 'link'), short);
    await rename(tmp, dataDir);
    await mkdir(this.sharedPath('overlay-layers', rec.id), { recursive: true });
    await writeFileAtomic(this.sharedPath('overlay-layers', rec.id, 'layer.json'), JSON.stringify(rec, null, 2));
    await this.linkLocal(rec.id, 'layer');
    return true;
  }

  private async makeShortLink(id: string): Promise<string> {
    for (;;) {
      const bytes = randomBytes(SHORT_LEN);
      let short = '';
      for (const b of bytes) short += SHORT_ALPHABET[b % SHORT_ALPHABET.length];
      try {
        await symlink(`../${id}/diff`, this.sharedPath('overlay', 'l', short));
        return short;
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
    }
  }

  /** True when the shared store holds a complete RO layer (data dir + parseable layer.json). */
  async roLayerComplete(id: string): Promise<boolean> {
    const rec = await this.readSharedLayer(id);
    return rec !== null && (await exists(path.join(this.sharedPath('overlay', id), 'diff')));
  }

  async readSharedLayer(id: string): Promise<LayerRecord | null> {
    try {
      return parseLayerRecord(await readFile(this.sharedPath('overlay-layers', id, 'layer.json'), 'utf8'));
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
      throw err;
    }
  }

  /** The local symlinks `<root>/<kind>/<id> -> RO/<id>` for an RO layer or image. */
  async linkLocal(id: string, what: 'layer' | 'image'): Promise<void> {
    const kinds: Kind[] = what === 'layer' ? ['overlay', 'overlay-layers'] : ['overlay-images'];
    for (const kind of kinds) {
      // a new id's link is made in one syscall; one that exists is checked (and fixed) as ensureSymlink does
      const link = path.join(this.root, kind, id);
      try {
        await symlink(`RO/${id}`, link);
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
        await ensureSymlink(`RO/${id}`, link);
      }
    }
  }

  /** linkLocal of many ids, `IO_PARALLEL` at a time (a scan or index build of thousands of layers). */
  async linkLocalMany(ids: readonly string[], what: 'layer' | 'image'): Promise<void> {
    await mapLimit(ids, IO_PARALLEL, (id) => this.linkLocal(id, what));
  }

  async unlinkLocal(id: string, what: 'layer' | 'image'): Promise<void> {
    const kinds: Kind[] = what === 'layer' ? ['overlay-layers', 'overlay'] : ['overlay-images'];
    for (const kind of kinds) {
      const p = path.join(this.root, kind, id);
      try {
        if ((await lstat(p)).isSymbolicLink()) await rm(p);
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
      }
    }
  }

  // ---- removal of RO layers (src/usage decides what may go; these are its steps) -------------------
  /**
   * Step 1 of removing an RO layer: its record dir leaves its final name (`overlay-layers/.retire-<id>`), so no
   * host sees the layer as ready any more, while its data stays whole. Returns false when there was no record.
   * A crash here leaves the retired record, which `retiredLayers` lists and the next pass restores or finishes.
   */
  async retireLayer(id: string): Promise<boolean> {
    await this.unlinkLocal(id, 'layer');
    try {
      await rename(this.sharedPath('overlay-layers', id), this.sharedPath('overlay-layers', `${RETIRE_PREFIX}${id}`));
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
  }

  /** Undo `retireLayer` (a user appeared meanwhile): the record takes its name back. */
  async restoreRetired(id: string): Promise<void> {
    await rename(this.sharedPath('overlay-layers', `${RETIRE_PREFIX}${id}`), this.sharedPath('overlay-layers', id));
  }

  /**
   * Step 2: delete a retired layer. The data dir leaves its final name first (then the short link, the retired
   * record, the data), so a layer dir with a final name is always whole. Also finishes a layer whose data dir is
   * left without a record (a crash between the steps of an older removal).
   */
  async destroyLayer(id: string): Promise<void> {
    const retired = await readFile(this.sharedPath('overlay-layers', `${RETIRE_PREFIX}${id}`, 'layer.json'), 'utf8').catch(() => null);
    const parent = retired ? parseLayerRecord(retired)?.parent : null;
    const dataDir = this.sharedPath('overlay', id);
    const short = await readFile(path.join(dataDir, 'link'), 'utf8').catch(() => null);
    let aside: string | null = null;
    if (await exists(dataDir)) {
      aside = path.join(path.dirname(dataDir), `${TMP_PREFIX}rm-${randomBytes(6).toString('hex')}`);
      await rename(dataDir, aside);
    }
    if (short) await rm(this.sharedPath('overlay', 'l', short.trim()), { force: true });
    await rm(this.sharedPath('overlay-layers', `${RETIRE_PREFIX}${id}`), { recursive: true, force: true });
    if (aside) await rm(aside, { recursive: true, force: true });
    if (parent) await this.dropRefs([parent], `layer-${id}`);
  }

  /** Drop a retired record whose layer was published again meanwhile (the new data dir stays). */
  async destroyRetiredRecord(id: string): Promise<void> {
    await rm(this.sharedPath('overlay-layers', `${RETIRE_PREFIX}${id}`), { recursive: true, force: true });
  }

  /** Layers left retired (a removal that did not finish). */
  async retiredLayers(): Promise<string[]> {
    const names = await readdir(this.sharedPath('overlay-layers')).catch(() => [] as string[]);
    return names.filter((n) => n.startsWith(RETIRE_PREFIX) && isLayerId(n.slice(RETIRE_PREFIX.length))).map((n) => n.slice(RETIRE_PREFIX.length));
  }

  /** Whether an RO layer's data dir has its final name (whole: see `destroyLayer`). */
  async hasLayerData(id: string): Promise<boolean> {
    return exists(path.join(this.sharedPath('overlay', id), 'diff'));
  }

  /** Whether an RO layer's record has its final name on the shared store (one stat; a mount checks its chain with it). */
  async layerPublished(id: string): Promise<boolean> {
    return exists(this.sharedPath('overlay-layers', id, 'layer.json'));
  }

  // ---- removal marks: `<shared>/gc/<layer-id>`, one empty file per layer waiting for removal ----------
  private get markDir(): string {
    return path.join(this.shared, 'gc');
  }

  async markForRemoval(ids: string[]): Promise<void> {
    if (!ids.length) return;
    await mkdir(this.markDir, { recursive: true });
    for (const id of ids) await writeFile(path.join(this.markDir, id), '');
  }

  async unmark(id: string): Promise<void> {
    await rm(path.join(this.markDir, id), { force: true });
  }

  /** Layers marked for removal (one readdir). */
  async markedLayers(): Promise<string[]> {
    return (await readdir(this.markDir).catch(() => [] as string[])).filter(isLayerId);
  }

  // ---- leases: `<shared>/leases/<host-id>.json`, each written by its own host only (temp + rename) ------------
  private get leaseDir(): string {
    return path.join(this.shared, 'leases');
  }

  /** Write this host's lease; returns its mtime as the shared store's clock set it (a skew-free "now"). */
  async writeLease(data: string): Promise<number> {
    await mkdir(this.leaseDir, { recursive: true });
    const file = path.join(this.leaseDir, `${this.hostId}.json`);
    await writeFileAtomic(file, data);
    return (await stat(file)).mtimeMs;
  }

  /** Every host's lease file with its mtime and size (one readdir, one stat a host). */
  async listLeases(): Promise<{ host: string; mtimeMs: number; size: number }[]> {
    const out: { host: string; mtimeMs: number; size: number }[] = [];
    for (const n of await readdir(this.leaseDir).catch(() => [] as string[])) {
      if (!n.endsWith('.json') || n.startsWith('.')) continue;
      const st = await stat(path.join(this.leaseDir, n)).catch(() => null);
      if (st) out.push({ host: n.slice(0, -'.json'.length), mtimeMs: st.mtimeMs, size: st.size });
    }
    return out;
  }

  async readLease(host: string): Promise<string | null> {
    return readFile(path.join(this.leaseDir, `${path.basename(host)}.json`), 'utf8').catch(() => null);
  }

  async removeLease(host: string): Promise<boolean> {
    const file = path.join(this.leaseDir, `${path.basename(host)}.json`);
    if (!(await exists(file))) return false;
    await rm(file, { force: true });
    return true;
  }

  private async moveAsideAndRemove(dir: string): Promise<void> {
    const aside = path.join(path.dirname(dir), `${TMP_PREFIX}rm-${randomBytes(6).toString('hex')}`);
    await rename(dir, aside);
    await rm(aside, { recursive: true, force: true });
  }

  // ---- images ----------------------------------------------------------------------------------
  /** Write an image record (with its manifest and config blobs) last, after all its layers. */
  async publishImage(rec: ImageRecord, manifest: Buffer, config: Buffer): Promise<void> {
    const dir = this.sharedPath('overlay-images', rec.id);
    await this.addRefs(rec.layers, `image-${rec.id}`);
    if (await exists(path.join(dir, 'image.json'))) {
      await writeFileAtomic(path.join(dir, 'image.json'), JSON.stringify(rec, null, 2));
      // readers' scanners look into image dirs only when overlay-images/ itself changed: tell them
      const now = new Date();
      await utimes(this.sharedPath('overlay-images'), now, now);
    } else {
      const tmp = this.sharedPath('overlay-images', `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
      await mkdir(tmp);
      await writeFile(path.join(tmp, 'manifest'), manifest);
      await writeFile(path.join(tmp, 'config'), config);
      await writeFile(path.join(tmp, 'image.json'), JSON.stringify(rec, null, 2));
      if (await exists(dir)) await this.moveAsideAndRemove(dir);
      await rename(tmp, dir);
    }
    await this.linkLocal(rec.id, 'image');
  }

  async readSharedImage(id: string): Promise<ImageRecord | null> {
    try {
      return parseImageRecord(await readFile(this.sharedPath('overlay-images', id, 'image.json'), 'utf8'));
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
      throw err;
    }
  }

  async readImageBlob(id: string, which: 'manifest' | 'config'): Promise<Buffer> {
    return readFile(path.join(this.imageDir(id), which));
  }

  async removeImage(id: string): Promise<void> {
    await this.unlinkLocal(id, 'image');
    const rec = await this.readSharedImage(id).catch(() => null);
    const dir = this.sharedPath('overlay-images', id);
    if (await exists(dir)) await this.moveAsideAndRemove(dir);
    if (rec) await this.dropRefs(rec.layers, `image-${id}`);
  }

  // ---- RW layers (local root only) ---------------------------------------------------------------
  /**
   * Create an RW layer dir `<root>/overlay/<id>/{diff,work,merged}` plus `lower` (the parent chain's
   * short paths, top first) and its layer.json. Hooks let a quota make the layer dir something
   * else (e.g. a btrfs subvolume) and limit it once it has its final name.
   */
  async createRWLayer(
    rec: LayerRecord,
    lowerShortPaths: string[],
    hooks: { makeDir?: (dir: string) => Promise<void>; afterCreate?: (dir: string) => Promise<void> } = {},
  ): Promise<void> {
    if (!rec.rw) throw new Error('createRWLayer is for RW layers');
    const final = this.layerDir(rec.id);
    if (await exists(final)) throw new LayerfsError('EEXIST', `layer ${rec.id}`, 'already exists');
    const tmp = path.join(this.root, 'overlay', `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    if (hooks.makeDir) await hooks.makeDir(tmp);
    else await mkdir(tmp);
    try {
      await mkdir(path.join(tmp, 'diff'), { mode: 0o755 });
      await mkdir(path.join(tmp, 'work'), { mode: 0o700 });
      await mkdir(path.join(tmp, 'merged'), { mode: 0o700 });
      await writeFile(path.join(tmp, 'lower'), lowerShortPaths.join(':'));
      await rename(tmp, final);
      if (hooks.afterCreate) await hooks.afterCreate(final);
    } catch (err) {
      await rm((await exists(final)) ? final : tmp, { recursive: true, force: true });
      throw err;
    }
    await mkdir(this.layerMetaDir(rec.id), { recursive: true });
    await writeFileAtomic(path.join(this.layerMetaDir(rec.id), 'layer.json'), JSON.stringify(rec, null, 2));
  }

  async readLocalLayer(id: string): Promise<LayerRecord | null> {
    try {
      return parseLayerRecord(await readFile(path.join(this.layerMetaDir(id), 'layer.json'), 'utf8'));
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
      throw err;
    }
  }

  /** When an RW layer last changed, as far as one stat tells (its upper dir's mtime, else its creation). */
  async rwLayerChangedAt(id: string): Promise<number> {
    const st = await stat(this.diffDir(id)).catch(() => null);
    const rec = await this.readLocalLayer(id);
    return Math.max(st?.mtimeMs ?? 0, rec ? Date.parse(rec.created) : 0);
  }

  /** Remove an RW layer: record first, then data (`removeDir` can delete e.g. a subvolume first). */
  async removeRWLayer(id: string, removeDir?: (dir: string) => Promise<void>): Promise<void> {
    const meta = this.layerMetaDir(id);
    if (await exists(meta)) await rm(meta, { recursive: true, force: true });
    const dir = this.layerDir(id);
    if (!(await exists(dir))) return;
    const aside = path.join(this.root, 'overlay', `${TMP_PREFIX}rm-${randomBytes(6).toString('hex')}`);
    await rename(dir, aside);
    if (removeDir) await removeDir(aside);
    await rm(aside, { recursive: true, force: true });
  }

  // ---- containerd snapshot records (local root; the index caches them) ---------------------------
  private snapshotFile(key: string): string {
    return path.join(this.root, 'snapshots', `${createHash('sha256').update(key).digest('hex')}.json`);
  }

  /** Persist a snapshot record (atomically), so an index rebuild can restore it. */
  async writeSnapshotRecord(rec: { key: string }): Promise<void> {
    await mkdir(path.join(this.root, 'snapshots'), { recursive: true });
    await writeFileAtomic(this.snapshotFile(rec.key), JSON.stringify(rec));
  }

  async removeSnapshotRecord(key: string): Promise<void> {
    await rm(this.snapshotFile(key), { force: true });
  }

  async listSnapshotRecords<T>(): Promise<T[]> {
    const dir = path.join(this.root, 'snapshots');
    const out: T[] = [];
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      if (!n.endsWith('.json') || n.startsWith(TMP_PREFIX)) continue;
      try {
        out.push(JSON.parse(await readFile(path.join(dir, n), 'utf8')) as T);
      } catch {
        logger().warn({ file: path.join(dir, n) }, 'ignoring an unreadable snapshot record');
      }
    }
    return out;
  }

  // ---- listing (used by index rebuild and the scanner) -------------------------------------------
  /** Ids in a shared kind dir (skipping temp dirs, `l`, and names that are not ids). */
  async listSharedIds(kind: Kind): Promise<{ ids: string[]; junk: string[] }> {
    let names: string[];
    try {
      names = await readdir(this.sharedPath(kind));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return { ids: [], junk: [] };
      throw err;
    }
    const ids: string[] = [];
    const junk: string[] = [];
    for (const n of names) {
      if (n.startsWith(TMP_PREFIX) || n === 'l' || n.startsWith('.')) continue;
      (isLayerId(n) ? ids : junk).push(n);
    }
    return { ids, junk };
  }

  /** RW layer ids in the local root (real dirs, not RO symlinks). */
  async listLocalRWIds(): Promise<string[]> {
    const out: string[] = [];
    for (const d of await readdir(path.join(this.root, 'overlay-layers'), { withFileTypes: true })) {
      if (isLayerId(d.name) && d.isDirectory()) out.push(d.name);
    }
    return out;
  }

  /** Local symlinks `<root>/<kind>/<id>` that point into RO (what this host has linked). */
  async listLocalLinks(kind: Kind): Promise<string[]> {
    const out: string[] = [];
    // the entry types from readdir (d_type; Node lstats only entries whose type the fs does not give)
    for (const d of await readdir(path.join(this.root, kind), { withFileTypes: true })) {
      if (isLayerId(d.name) && d.isSymbolicLink()) out.push(d.name);
    }
    return out;
  }

  /** Modification time of a shared kind dir (a cheap "did anything change" probe for the scanner). */
  async sharedDirMtime(kind: Kind): Promise<number> {
    return (await stat(this.sharedPath(kind))).mtimeMs;
  }
}
