import { Level } from 'level';
import { access, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { LayerfsError } from '../common/errors.js';
import { INDEX_BATCH, chunks } from '../common/limit.js';
import { processAlive } from '../common/proc.js';
import { type ImageRecord, type LayerRecord, type LockHolder, type LockWait, describeHolder } from '../store/index.js';

export interface IndexOpenOptions {
  /** How long to wait while another process holds the index (default 30 s, env LAYERFS_INDEX_WAIT_MS). */
  waitMs?: number;
  /**
   * `<root>/index.holder` (the Store names it): written (`{pid, host, since, command}`) while this process holds the
   * index, removed at close; read by a waiter to say who holds it. Without it the holder is not recorded.
   */
  holderFile?: string;
  /** What this process is doing, for waiters (default: `layerfs <its arguments>`). */
  purpose?: string;
  /** Told who holds the index when a wait starts (at once), then every `noticeEveryMs` (default 10 s). */
  onWait?: (w: LockWait) => void;
  noticeEveryMs?: number;
}

/** The recorded holder of the index, or null when there is none or it is a dead process of this host. */
export async function readIndexHolder(file: string): Promise<LockHolder | null> {
  let h: LockHolder;
  try {
    h = JSON.parse(await readFile(file, 'utf8')) as LockHolder;
  } catch {
    return null;
  }
  if (typeof h?.pid !== 'number' || typeof h.host !== 'string') return null;
  if (h.host === os.hostname() && !processAlive(h.pid)) return null; // left by a crashed holder
  return h;
}

/** A layer as the index knows it: the on-disk record plus what this host knows about it. */
export interface IndexedLayer extends LayerRecord {
  /** Set by the scanner when the layer left the shared store while still used here. */
  missing?: boolean;
}

/** A mount made by a driver: what is mounted where, and how many users hold it. */
export interface MountRecord {
  mountpoint: string;
  /** The RW layer mounted, or for a read-only view the top RO layer. */
  layer: string;
  rw: boolean;
  driver: 'overlay' | 'fuse';
  refs: number;
  /** FUSE: the pid of the server process. */
  pid?: number;
  /** A view of `layer` alone (`layer mount`: a read-only bind of its diff dir), not of its chain. */
  alone?: boolean;
  created: string;
}

/** A containerd snapshot (the `layerfs snapshotter` gRPC service), keyed by its snapshotter key. */
export interface SnapshotRecord {
  key: string;
  kind: 'view' | 'active' | 'committed';
  /** The parent snapshot's key (a committed snapshot), or null. */
  parent: string | null;
  labels: Record<string, string>;
  created: string;
  updated: string;
  /** active: its RW layer; committed: its RO layer; view: the parent's RO layer (null without parent). */
  layer: string | null;
}

const UNKNOWN_HOLDER = 'another process (no live holder recorded)';
const INDEX_VERSION_KEY = 'index.v';
const INDEX_VERSION = 3;

type Sub = ReturnType<Level<string, unknown>['sublevel']>;
type SubName = 'layer' | 'image' | 'name' | 'meta' | 'mount' | 'snapshot' | 'rw' | 'missing' | 'child' | 'ref';
type BatchOp = { type: 'put'; sub: SubName; key: string; value: unknown } | { type: 'del'; sub: SubName; key: string };

/**
 * The LevelDB index under `<root>/index`: a cache of the disk so listings and lookups never walk
 * the (NFS) store. Sublevels: `layer` (id -> IndexedLayer), `image` (id -> ImageRecord),
 * `name` (name -> image id), `meta` (scanner state and the like).
 */
export class Index {
  private constructor(
    private readonly db: Level<string, unknown>,
    /** True when the database did not exist before this open (callers rebuild it from the store). */
    readonly created: boolean,
    private readonly holderFile?: string,
  ) {}

  /**
   * Open the index. LevelDB lets one process at a time have it open (its LOCK file); when another
   * layerfs process holds it (the daemon mid-scan, another CLI command), wait for it up to `waitMs`
   * (default 30 s, env LAYERFS_INDEX_WAIT_MS), polling, instead of failing at once; `onWait` is told who
   * holds it (from `holderFile`) at once and every 10 s, and a timeout names the holder.
   */
  static async open(dir: string, opts: IndexOpenOptions = {}): Promise<Index> {
    const existed = await access(dir).then(
      () => true,
      () => false,
    );
    const envWait = process.env.LAYERFS_INDEX_WAIT_MS;
    const waitMs = opts.waitMs ?? (envWait !== undefined && envWait !== '' ? Number(envWait) : 30_000);
    const noticeEvery = opts.noticeEveryMs ?? 10_000;
    const t0 = Date.now();
    const deadline = t0 + waitMs;
    const lockName = `the index ${dir}`;
    let nextNotice = t0;
    for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
      const db = new Level<string, unknown>(dir, { valueEncoding: 'json' });
      try {
        await db.open();
        const index = new Index(db, !existed, opts.holderFile);
        if (opts.holderFile) await index.writeHolder(opts.holderFile, opts.purpose ?? `layerfs ${process.argv.slice(2).join(' ')}`.trim());
        await index.upgrade();
        return index;
      } catch (err) {
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        const msg = `${(err as Error).message} ${cause?.message ?? ''}`;
        const locked = (err as { code?: string }).code === 'LEVEL_DATABASE_NOT_OPEN' && /lock/i.test(msg);
        if (!locked) throw new LayerfsError('ELOCKED', dir, `cannot open the index: ${msg.trim()}`, { cause: err });
        const now = Date.now();
        const holder = opts.holderFile ? await readIndexHolder(opts.holderFile) : null;
        if (now >= deadline) {
          throw new LayerfsError('ELOCKED', dir, `gave up after ${Math.round(waitMs / 1000)} s waiting for ${lockName}, held by ${describeHolder(holder, UNKNOWN_HOLDER)}`, { cause: err });
        }
        // at once (a holder that has just opened it gets a second to write its file), then every noticeEvery
        if (opts.onWait && (holder !== null || now - t0 >= 1000) && now >= nextNotice) {
          opts.onWait({ lock: lockName, holder, waitedMs: now - t0, timeoutMs: waitMs, unknownHolder: UNKNOWN_HOLDER });
          nextNotice += noticeEvery;
          while (nextNotice <= now) nextNotice += noticeEvery;
        }
        await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(1, deadline - now))));
      }
    }
  }

  /** Say who holds the index (temp + rename: a waiter never reads half of it). */
  private async writeHolder(file: string, command: string): Promise<void> {
    const h: LockHolder & { command: string } = { pid: process.pid, host: os.hostname(), since: new Date().toISOString(), purpose: command, command };
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(h) + '\n');
    await rename(tmp, file);
  }

  /** Build what an index of an older layout lacks (the reverse maps), once. */
  private async upgrade(): Promise<void> {
    if ((await this.getMeta<number>(INDEX_VERSION_KEY)) === INDEX_VERSION) return;
    for (const s of ['rw', 'missing', 'child', 'ref'] as const) await this.sub(s).clear();
    await this.putLayers(await this.listLayers());
    await this.batch((await this.listImages()).flatMap((i) => i.layers.map((l): BatchOp => ({ type: 'put', sub: 'ref', key: `${l}/${i.id}`, value: 1 }))));
    await this.putMeta(INDEX_VERSION_KEY, INDEX_VERSION);
  }

  async close(): Promise<void> {
    // the holder file goes first: once the LOCK is free, the next holder writes its own
    if (this.holderFile) await rm(this.holderFile, { force: true });
    await this.db.close();
  }

  /**
   * Reverse maps, derived from the layer and image records and kept with them, so that "who uses this layer"
   * costs O(its users), not a walk of every record: `rw` (RW layer ids), `missing` (layers kept as missing), `child` (`<parent>/<child>`), `ref`
   * (`<layer>/<image>`). An index made before them gets them built once at open (`meta` key `index.v`).
   */
  private sub(name: SubName): Sub {
    let s = this.subs.get(name);
    if (!s) this.subs.set(name, (s = this.db.sublevel<string, unknown>(name, { valueEncoding: 'json' }) as unknown as Sub));
    return s;
  }
  private readonly subs = new Map<SubName, Sub>();

  /** One LevelDB batch of operations across sublevels, `INDEX_BATCH` at a time (a write each, not one per key). */
  private async batch(ops: BatchOp[]): Promise<void> {
    for (const part of chunks(ops, INDEX_BATCH)) {
      await this.db.batch(part.map((o) => (o.type === 'put' ? { type: 'put', sublevel: this.sub(o.sub), key: o.key, value: o.value } : { type: 'del', sublevel: this.sub(o.sub), key: o.key })) as never);
    }
  }

  private layerOps(rec: IndexedLayer): BatchOp[] {
    const ops: BatchOp[] = [{ type: 'put', sub: 'layer', key: rec.id, value: rec }];
    if (rec.rw) ops.push({ type: 'put', sub: 'rw', key: rec.id, value: 1 });
    ops.push(rec.missing ? { type: 'put', sub: 'missing', key: rec.id, value: 1 } : { type: 'del', sub: 'missing', key: rec.id });
    if (rec.parent) ops.push({ type: 'put', sub: 'child', key: `${rec.parent}/${rec.id}`, value: 1 });
    return ops;
  }

  /** putLayer of many records, in batched writes (a scan or index build of thousands of layers). */
  async putLayers(recs: readonly IndexedLayer[]): Promise<void> {
    await this.batch(recs.flatMap((r) => this.layerOps(r)));
  }

  /**
   * putImage of many records, in batched writes; the same result as putImage of each in turn (names moved between
   * records of one call included: a later record's claim wins, and a dropped name goes only if it still points here).
   */
  async putImages(recs: readonly ImageRecord[]): Promise<void> {
    if (!recs.length) return;
    const olds = (await this.sub('image').getMany(recs.map((r) => r.id))) as (ImageRecord | undefined)[];
    const pending = new Map<string, string | null>(); // name -> image id (null: deleted) by earlier records of this call
    const ops: BatchOp[] = [];
    for (const [i, rec] of recs.entries()) {
      const old = olds[i];
      for (const n of old?.names ?? []) {
        if (rec.names.includes(n)) continue;
        const cur = pending.has(n) ? pending.get(n) : await this.sub('name').get(n);
        if (cur === rec.id) {
          ops.push({ type: 'del', sub: 'name', key: n });
          pending.set(n, null);
        }
      }
      for (const n of rec.names) {
        ops.push({ type: 'put', sub: 'name', key: n, value: rec.id });
        pending.set(n, rec.id);
      }
      ops.push({ type: 'put', sub: 'image', key: rec.id, value: rec });
      for (const l of old?.layers ?? []) if (!rec.layers.includes(l)) ops.push({ type: 'del', sub: 'ref', key: `${l}/${rec.id}` });
      for (const l of rec.layers) ops.push({ type: 'put', sub: 'ref', key: `${l}/${rec.id}`, value: 1 });
    }
    await this.batch(ops);
  }

  // ---- layers
  async putLayer(rec: IndexedLayer): Promise<void> {
    await this.batch(this.layerOps(rec));
  }
  async getLayer(id: string): Promise<IndexedLayer | undefined> {
    return (await this.sub('layer').get(id)) as IndexedLayer | undefined;
  }
  async delLayer(id: string): Promise<void> {
    const rec = await this.getLayer(id);
    await this.sub('layer').del(id);
    await this.sub('rw').del(id);
    await this.sub('missing').del(id);
    if (rec?.parent) await this.sub('child').del(`${rec.parent}/${id}`);
  }
  /** Every layer id (keys only: much cheaper than the records). */
  async layerIds(): Promise<Set<string>> {
    return new Set((await this.sub('layer').keys().all()) as string[]);
  }
  async imageIds(): Promise<Set<string>> {
    return new Set((await this.sub('image').keys().all()) as string[]);
  }
  /** Up to `limit` layers whose id starts with `prefix` (a key range: O(hits), not a walk). */
  async layersByPrefix(prefix: string, limit = 2): Promise<IndexedLayer[]> {
    return (await this.sub('layer').values({ gte: prefix, lt: `${prefix}\uffff`, limit }).all()) as IndexedLayer[];
  }
  /** Up to `limit` images whose id starts with `prefix`. */
  async imagesByPrefix(prefix: string, limit = 2): Promise<ImageRecord[]> {
    return (await this.sub('image').values({ gte: prefix, lt: `${prefix}\uffff`, limit }).all()) as ImageRecord[];
  }
  /** RW layers (this host's containers): O(their number). */
  async listRWLayers(): Promise<IndexedLayer[]> {
    const out: IndexedLayer[] = [];
    for (const id of (await this.sub('rw').keys().all()) as string[]) {
      const rec = await this.getLayer(id);
      if (rec) out.push(rec);
    }
    return out;
  }
  /** Ids of the layers kept as missing (gone from the shared store, still used here). */
  async missingLayerIds(): Promise<string[]> {
    return (await this.sub('missing').keys().all()) as string[];
  }
  /** Ids of the layers (RO and RW) whose parent is `id`. */
  async childrenOf(id: string): Promise<string[]> {
    return ((await this.sub('child').keys({ gt: `${id}/`, lt: `${id}0` }).all()) as string[]).map((k) => k.slice(id.length + 1));
  }
  /** Ids of the images whose layers include `id`. */
  async imagesUsing(id: string): Promise<string[]> {
    return ((await this.sub('ref').keys({ gt: `${id}/`, lt: `${id}0` }).all()) as string[]).map((k) => k.slice(id.length + 1));
  }
  async listLayers(): Promise<IndexedLayer[]> {
    return (await this.sub('layer').values().all()) as IndexedLayer[];
  }

  // ---- images and names
  async putImage(rec: ImageRecord): Promise<void> {
    const names = this.sub('name');
    const old = (await this.getImage(rec.id)) ?? null;
    const ops: { type: 'put' | 'del'; key: string; value?: unknown }[] = [];
    // a name this record dropped goes only if it still points here: when a tag moved to another
    // image that was indexed first (a scanner can apply the two records in either order), the name
    // is the other image's now
    for (const n of old?.names ?? []) if (!rec.names.includes(n) && (await names.get(n)) === rec.id) ops.push({ type: 'del', key: n });
    for (const n of rec.names) ops.push({ type: 'put', key: n, value: rec.id });
    await this.sub('image').put(rec.id, rec);
    if (ops.length) await names.batch(ops as never);
    const refs = [...(old?.layers ?? []).filter((l) => !rec.layers.includes(l)).map((l) => ({ type: 'del', key: `${l}/${rec.id}` })), ...rec.layers.map((l) => ({ type: 'put', key: `${l}/${rec.id}`, value: 1 }))];
    if (refs.length) await this.sub('ref').batch(refs as never);
  }
  async getImage(id: string): Promise<ImageRecord | undefined> {
    return (await this.sub('image').get(id)) as ImageRecord | undefined;
  }
  async delImage(id: string): Promise<void> {
    const rec = await this.getImage(id);
    if (!rec) return;
    const names = this.sub('name');
    for (const n of rec.names) if ((await names.get(n)) === id) await names.del(n);
    await this.sub('image').del(id);
    if (rec.layers.length) await this.sub('ref').batch(rec.layers.map((l) => ({ type: 'del', key: `${l}/${id}` })) as never);
  }
  async listImages(): Promise<ImageRecord[]> {
    return (await this.sub('image').values().all()) as ImageRecord[];
  }
  async imageIdByName(name: string): Promise<string | undefined> {
    return (await this.sub('name').get(name)) as string | undefined;
  }

  /**
   * Bring the `name` sublevel in line with the image records: every name an image lists points to
   * an image listing it, and no other name is left. When several records list one name (the
   * writer moves a name with two record writes, a reader can see one of them), the name keeps its
   * current image if that one lists it, else goes to the newest. Returns the names changed.
   */
  async repairNames(): Promise<{ name: string; was: string | null; now: string | null }[]> {
    const names = this.sub('name');
    const claims = new Map<string, ImageRecord[]>();
    for (const img of await this.listImages()) {
      for (const n of img.names) claims.set(n, [...(claims.get(n) ?? []), img]);
    }
    const current = new Map((await names.iterator().all()) as [string, string][]);
    const fixed: { name: string; was: string | null; now: string | null }[] = [];
    const ops: { type: 'put' | 'del'; key: string; value?: unknown }[] = [];
    for (const [n, holders] of claims) {
      const cur = current.get(n);
      if (cur !== undefined && holders.some((h) => h.id === cur)) continue;
      const pick = [...holders].sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id)).at(-1)!;
      ops.push({ type: 'put', key: n, value: pick.id });
      fixed.push({ name: n, was: cur ?? null, now: pick.id });
    }
    for (const [n, id] of current) {
      if (claims.has(n)) continue;
      ops.push({ type: 'del', key: n });
      fixed.push({ name: n, was: id, now: null });
    }
    if (ops.length) await names.batch(ops as never);
    return fixed;
  }

  // ---- mounts (keyed by mount point)
  async putMount(rec: MountRecord): Promise<void> {
    await this.sub('mount').put(rec.mountpoint, rec);
  }
  async getMount(mountpoint: string): Promise<MountRecord | undefined> {
    return (await this.sub('mount').get(mountpoint)) as MountRecord | undefined;
  }
  async delMount(mountpoint: string): Promise<void> {
    await this.sub('mount').del(mountpoint);
  }
  async listMounts(): Promise<MountRecord[]> {
    return (await this.sub('mount').values().all()) as MountRecord[];
  }

  // ---- containerd snapshots (keyed by snapshot key; kept by clear(): the disk cannot tell them)
  async putSnapshot(rec: SnapshotRecord): Promise<void> {
    await this.sub('snapshot').put(rec.key, rec);
  }
  async getSnapshot(key: string): Promise<SnapshotRecord | undefined> {
    return (await this.sub('snapshot').get(key)) as SnapshotRecord | undefined;
  }
  async delSnapshot(key: string): Promise<void> {
    await this.sub('snapshot').del(key);
  }
  async listSnapshots(): Promise<SnapshotRecord[]> {
    return (await this.sub('snapshot').values().all()) as SnapshotRecord[];
  }

  // ---- meta
  async getMeta<T>(key: string): Promise<T | undefined> {
    return (await this.sub('meta').get(key)) as T | undefined;
  }
  async putMeta(key: string, value: unknown): Promise<void> {
    await this.sub('meta').put(key, value);
  }
  async delMeta(key: string): Promise<void> {
    await this.sub('meta').del(key);
  }

  /** Drop everything derived from the store (before a rebuild); mount records are kept (refs, times: the mount table cannot tell them); the rebuild adds those of live mounts it lacks. */
  async clear(): Promise<void> {
    for (const s of ['layer', 'image', 'name', 'meta', 'rw', 'missing', 'child', 'ref'] as const) await this.sub(s).clear();
    await this.putMeta(INDEX_VERSION_KEY, INDEX_VERSION);
  }
}
