import { mkdir, readdir, readFile, readlink, realpath, rename, rm, symlink, writeFile, lstat, stat, open, utimes } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { LayerfsError, isErrno } from '../common/errors.js';
import { logger } from '../common/log.js';
import { FileLock } from './lock.js';
import { type ImageRecord, type LayerRecord, isLayerId, parseImageRecord, parseLayerRecord } from './records.js';

export type Role = 'writer' | 'reader';

export interface StoreOptions {
  /** Local root (per host). */
  root: string;
  /** Shared store (NFS in production). Default: `<root>/shared`. */
  shared?: string;
  role?: Role;
}

/** The three kinds of dirs, in the order seed 000 scans them. */
const KINDS = ['overlay', 'overlay-layers', 'overlay-images'] as const;
type Kind = (typeof KINDS)[number];

const TMP_PREFIX = '.tmp-';
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
 */
export class Store {
  readonly root: string;
  readonly shared: string;
  readonly role: Role;
  /** realBases(), once. */
  private bases?: { roots: string[]; shareds: string[] };

  private constructor(opts: StoreOptions) {
    this.root = path.resolve(opts.root);
    this.shared = path.resolve(opts.shared ?? path.join(this.root, 'shared'));
    this.role = opts.role ?? 'writer';
  }

  /** Open (and lay out, if new) a store. Makes no change to the shared store on a reader. */
  static async open(opts: StoreOptions): Promise<Store> {
    const s = new Store(opts);
    for (const kind of KINDS) {
      if (s.role === 'writer') await mkdir(path.join(s.shared, kind), { recursive: true });
      await mkdir(path.join(s.root, kind), { recursive: true });
      await ensureSymlink(path.join(s.shared, kind), path.join(s.root, kind, 'RO'));
    }
    if (s.role === 'writer') await mkdir(path.join(s.shared, 'overlay', 'l'), { recursive: true });
    return s;
  }

  // ---- paths ---------------------------------------------------------------------------------
  get indexDir(): string {
    return path.join(this.root, 'index');
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
   * stale temp dirs (a crashed import's leftovers) are removed first.
   */
  async withWriteLock<T>(purpose: string, fn: () => Promise<T>, waitMs = 600_000): Promise<T> {
    if (this.role !== 'writer') throw new LayerfsError('EROLE', purpose, 'this host is a reader: only the writer host changes the shared store');
    const lock = await FileLock.acquire(this.writerLockFile, purpose, { waitMs });
    try {
      await this.removeStaleTemps(this.shared);
      return await fn();
    } finally {
      await lock.release();
    }
  }

  /** Remove `.tmp-*` entries under a store's kind dirs (shared: with the writer lock held; root: at start). */
  async removeStaleTemps(base: string = this.root): Promise<void> {
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
      if (kind === 'overlay-layers' || kind === 'overlay-images') {
        // atomic-write leftovers inside record dirs
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
    for (const kind of kinds) await ensureSymlink(`RO/${id}`, path.join(this.root, kind, id));
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

  /** Remove an RO layer from the shared store: layer.json first (readers stop seeing it), then the data. */
  async removeROLayer(id: string): Promise<void> {
    await this.unlinkLocal(id, 'layer');
    const metaDir = this.sharedPath('overlay-layers', id);
    if (await exists(metaDir)) await this.moveAsideAndRemove(metaDir);
    const dataDir = this.sharedPath('overlay', id);
    const short = await readFile(path.join(dataDir, 'link'), 'utf8').catch(() => null);
    if (short) await rm(this.sharedPath('overlay', 'l', short.trim()), { force: true });
    if (await exists(dataDir)) await this.moveAsideAndRemove(dataDir);
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
    const dir = this.sharedPath('overlay-images', id);
    if (await exists(dir)) await this.moveAsideAndRemove(dir);
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
    for (const n of await readdir(path.join(this.root, 'overlay-layers'))) {
      if (!isLayerId(n)) continue;
      const st = await lstat(path.join(this.root, 'overlay-layers', n));
      if (st.isDirectory()) out.push(n);
    }
    return out;
  }

  /** Local symlinks `<root>/<kind>/<id>` that point into RO (what this host has linked). */
  async listLocalLinks(kind: Kind): Promise<string[]> {
    const out: string[] = [];
    for (const n of await readdir(path.join(this.root, kind))) {
      if (!isLayerId(n)) continue;
      const st = await lstat(path.join(this.root, kind, n));
      if (st.isSymbolicLink()) out.push(n);
    }
    return out;
  }

  /** Modification time of a shared kind dir (a cheap "did anything change" probe for the scanner). */
  async sharedDirMtime(kind: Kind): Promise<number> {
    return (await stat(this.sharedPath(kind))).mtimeMs;
  }
}
