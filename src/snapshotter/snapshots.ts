/**
 * containerd snapshots on layerfs (issue #8), with the semantics of containerd's overlayfs
 * snapshotter:
 *  - Active snapshot = a layerfs RW layer (created through the driver base, so quota and metadata
 *    work); its upper dir is `<root>/overlay/<rw-id>/diff`.
 *  - Committed snapshot = a layerfs RO layer on the shared store. containerd names commits by
 *    chainID (the metadata layer prefixes `<namespace>/<n>/`), so the layer id is that chainID and
 *    a reader host scanning the store sees the layer under the id `layerfs image import` would give
 *    it. Commit renames the upper dir into a staged layer dir and publishes it (no copy); across
 *    filesystems (EXDEV), or while the snapshot is still mounted (containerd allows that), it
 *    copies (exportDiff + apply) and the RW layer goes once unmounted.
 *  - View = a record only (its parent's layers, read-only).
 * Records live in the index's `snapshot` sublevel (key -> kind, parent, labels, times, layer).
 */
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, realpath, rename, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { applyLayer, exportDiff } from '../archive/index.js';
import { isoNs } from '../common/clock.js';
import { contentSize } from '../common/du.js';
import { LayerfsError, isErrno } from '../common/errors.js';
import { logger } from '../common/log.js';
import { readMountTable } from '../common/mountinfo.js';
import { driverFor, isMountpoint, type LayeredDriver } from '../drivers/index.js';
import type { SnapshotRecord } from '../index/index.js';
import { Service } from '../service/index.js';
import { Store, type LayerRecord, type Role } from '../store/index.js';
import { ApiClient } from '../api/index.js';
import { matchesAny } from './filters.js';

/** Snapshot records are written through to the local root (the index is only a cache of them). */
async function saveSnapshot(svc: Service, rec: SnapshotRecord): Promise<void> {
  await svc.store.writeSnapshotRecord(rec);
  await svc.index.putSnapshot(rec);
}

async function dropSnapshot(svc: Service, key: string): Promise<void> {
  await svc.index.delSnapshot(key);
  await svc.store.removeSnapshotRecord(key);
}

export type GrpcCodeName = 'NotFound' | 'AlreadyExists' | 'FailedPrecondition' | 'InvalidArgument' | 'Unavailable' | 'Internal' | 'Unimplemented';

/** An error the gRPC layer returns with the code containerd maps back to its errdefs. */
export class SnapshotError extends Error {
  constructor(
    readonly grpc: GrpcCodeName,
    message: string,
  ) {
    super(message);
    this.name = 'SnapshotError';
  }
}

export function grpcCodeOf(err: unknown): GrpcCodeName {
  if (err instanceof SnapshotError) return err.grpc;
  if (err instanceof LayerfsError) {
    switch (err.code) {
      case 'ELAYERNOTFOUND':
      case 'EIMAGENOTFOUND':
        return 'NotFound';
      case 'EEXIST':
        return 'AlreadyExists';
      case 'EINUSE':
        return 'FailedPrecondition';
      case 'EUSAGE':
      case 'EQUOTA':
        return 'InvalidArgument';
      case 'ELOCKED':
        return 'Unavailable';
      default:
        return 'Internal';
    }
  }
  return 'Internal';
}

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: 'VIEW' | 'ACTIVE' | 'COMMITTED';
  /** RFC 3339 with nanoseconds (src/common/clock.ts). */
  created: string;
  updated: string;
  labels: Record<string, string>;
}

export interface SnapshotterOptions {
  root: string;
  shared?: string;
  role?: Role;
  /** How long a commit waits for the shared store's writer lock (waits are logged through pino). */
  lockTimeoutMs?: number;
  driver: 'overlay' | 'fuse';
  /** How long the index stays open after the last request (ms). */
  idleMs?: number;
}

/** Name prefix of the RW layers the snapshotter creates (so Cleanup leaves `layerfs mount`'s alone). */
const RW_NAME_PREFIX = 'containerd:';
const CHAIN_RE = /(?:^|\/)sha256:([0-9a-f]{64})$/;

/** The RO layer id of a committed snapshot name: its chainID when it ends in one. */
export function layerIdForName(name: string): string {
  const m = CHAIN_RE.exec(name);
  if (m) return m[1]!;
  return createHash('sha256').update(`layerfs-snapshot\0${name}`).digest('hex');
}

const kindName = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' } as const;

export function toInfo(r: SnapshotRecord): SnapshotInfo {
  return { name: r.key, parent: r.parent ?? '', kind: kindName[r.kind], created: r.created, updated: r.updated, labels: r.labels };
}

/** Sum of allocated bytes (st_blocks * 512, hard links once) and inodes under a dir, as containerd's fs.DiskUsage. */
export async function diskUsage(dir: string): Promise<{ size: number; inodes: number }> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  async function walk(p: string): Promise<void> {
    let st;
    try {
      st = await lstat(p);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw err;
    }
    const k = `${st.dev}:${st.ino}`;
    if (!seen.has(k)) {
      seen.add(k);
      inodes++;
      size += st.blocks * 512;
    }
    if (st.isDirectory()) for (const n of await readdir(p)) await walk(path.join(p, n));
  }
  await walk(dir);
  return { size, inodes };
}

/**
 * Mount points (other than `own`) that use a snapshot's dirs: an overlay with one of `dirs` as
 * upperdir/lowerdir, a bind mount of one of them, or a bind of one of the `own` mounts (our FUSE
 * views, which containerd binds into the container).
 */
export async function mountUsers(dirs: string[], own: string[]): Promise<string[]> {
  const table = await readMountTable();
  const real = new Set<string>();
  const devs: { dev: string; rel: string }[] = [];
  for (const d of dirs) {
    const r = await realpath(d).catch(() => null);
    real.add(d);
    if (!r) continue;
    real.add(r);
    const st = await stat(r);
    devs.push({ dev: `${Math.floor(st.dev / 256) & 0xfff}:${(st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)}`, rel: r });
  }
  const ownSet = new Set(own.map((o) => path.resolve(o)));
  const ownDevs = new Set(table.filter((m) => ownSet.has(m.mountpoint)).map((m) => m.dev));
  const out: string[] = [];
  for (const { mountpoint: mp, fstype, superOptions, root, dev } of table) {
    if (ownSet.has(mp)) continue;
    if (fstype === 'overlay' && superOptions.some((o) => (o.startsWith('upperdir=') && real.has(o.slice(9))) || (o.startsWith('lowerdir=') && o.slice(9).split(':').some((l) => real.has(l))))) {
      out.push(mp);
      continue;
    }
    if (ownDevs.has(dev)) {
      out.push(mp);
      continue;
    }
    // a bind mount: same device, and its root (a path inside that filesystem) is the tail of our dir
    if (root.length > 1 && devs.some((d) => d.dev === dev && d.rel.endsWith(root))) {
      out.push(mp);
    }
  }
  return out;
}

/**
 * The snapshotter. Every request runs with the root's Service (store + index) open; requests are
 * serialised (one mutex) and the index is closed once no request came for `idleMs`, so CLI
 * commands on the same root get it between bursts (Index.open waits while we hold it).
 */
export class Snapshotter {
  private queue: Promise<unknown> = Promise.resolve();
  private svc: Service | null = null;
  /** The daemon's connection while its index is lent to us. */
  private loan: ApiClient | null = null;
  private pending = 0;
  private idle: NodeJS.Timeout | undefined;
  private readonly idleMs: number;
  /** RW layers of snapshots committed while mounted, removed once unmounted (reapRetired). */
  private readonly retired = new Set<string>();

  constructor(readonly opts: SnapshotterOptions) {
    this.idleMs = opts.idleMs ?? 100;
  }

  /** Run `fn` with the service open, one request at a time. */
  run<T>(fn: (svc: Service) => Promise<T>, opts: { changesUsers?: boolean } = {}): Promise<T> {
    this.pending++;
    const p = this.queue.then(async () => {
      clearTimeout(this.idle);
      try {
        if (!this.svc) await this.borrowDaemonIndex();
        this.svc ??= await Service.open({ root: this.opts.root, ...(this.opts.shared ? { shared: this.opts.shared } : {}), ...(this.opts.role ? { role: this.opts.role } : {}), ...(this.opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: this.opts.lockTimeoutMs } : {}) });
        try {
          const res = await fn(this.svc);
          if (opts.changesUsers && this.retired.size) await this.reapRetired(this.svc);
          return res;
        } finally {
          // the layers this host's snapshots use are leased on the shared store (src/usage)
          if (opts.changesUsers) await this.svc.lifetime.usersChanged();
        }
      } finally {
        if (--this.pending === 0) this.idle = setTimeout(() => void this.release(), this.idleMs);
      }
    });
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** When `layerfs daemon` holds the root's index, borrow it (the daemon closes it until we give it back). */
  private async borrowDaemonIndex(): Promise<void> {
    const client = await ApiClient.connect(Store.apiSocketOf(this.opts.root));
    if (!client) return;
    try {
      await client.borrowIndex();
    } catch (err) {
      client.close();
      throw err;
    }
    this.loan = client;
  }

  /** Close the index if no request is waiting (and give it back to the daemon, if it was borrowed). */
  release(): Promise<void> {
    const p = this.queue.then(async () => {
      if (this.pending === 0 && this.svc) {
        const s = this.svc;
        this.svc = null;
        await s.close();
        this.loan?.close();
        this.loan = null;
      }
    });
    this.queue = p.catch(() => undefined);
    return p;
  }

  async close(): Promise<void> {
    clearTimeout(this.idle);
    this.pending = 0;
    await this.release();
  }

  private driver(svc: Service): LayeredDriver {
    return driverFor(this.opts.driver, svc.store, svc.index);
  }

  private viewDir(svc: Service, key: string): string {
    return path.join(svc.store.root, 'snapshotter', 'views', createHash('sha256').update(key).digest('hex').slice(0, 32));
  }

  private async emptyDir(svc: Service): Promise<string> {
    const d = path.join(svc.store.root, 'snapshotter', 'empty');
    await mkdir(d, { recursive: true, mode: 0o755 });
    return d;
  }

  private async get(svc: Service, key: string): Promise<SnapshotRecord> {
    if (!key) throw new SnapshotError('InvalidArgument', 'snapshot key is empty');
    const r = await svc.index.getSnapshot(key);
    if (!r) throw new SnapshotError('NotFound', `snapshot ${key} does not exist`);
    return r;
  }

  private async committedParent(svc: Service, parent: string): Promise<SnapshotRecord | null> {
    if (!parent) return null;
    const p = await svc.index.getSnapshot(parent);
    if (!p) throw new SnapshotError('NotFound', `parent snapshot ${parent} does not exist`);
    if (p.kind !== 'committed') throw new SnapshotError('InvalidArgument', `parent ${parent} is not a committed snapshot`);
    if (!p.layer || !(await svc.index.getLayer(p.layer))) throw new SnapshotError('NotFound', `layer ${p.layer} of parent snapshot ${parent} is gone`);
    return p;
  }

  // ---- the ten methods -------------------------------------------------------------------------
  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('active', key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  private create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.run(async (svc) => {
      if (!key) throw new SnapshotError('InvalidArgument', 'snapshot key is empty');
      if (await svc.index.getSnapshot(key)) throw new SnapshotError('AlreadyExists', `snapshot ${key} already exists`);
      const p = await this.committedParent(svc, parent);
      if (p?.layer) await svc.lifetime.claim((await svc.chain(p.layer)).map((l) => l.id).reverse());
      const now = isoNs();
      const rec: SnapshotRecord = { key, kind, parent: p ? p.key : null, labels: { ...labels }, created: now, updated: now, layer: p?.layer ?? null };
      if (kind === 'active') {
        const id = randomBytes(32).toString('hex');
        await this.driver(svc).createRW(id, p?.layer ?? null, { name: `${RW_NAME_PREFIX}${key}` });
        rec.layer = id;
      }
      await saveSnapshot(svc, rec);
      try {
        return await this.mountsOf(svc, rec);
      } catch (err) {
        await this.removeRecord(svc, rec).catch(() => undefined);
        throw err;
      }
    }, { changesUsers: true });
  }

  mounts(key: string): Promise<Mount[]> {
    return this.run(async (svc) => this.mountsOf(svc, await this.get(svc, key)));
  }

  /** The mounts containerd makes for a snapshot (the FUSE driver mounts its view first). */
  private async mountsOf(svc: Service, rec: SnapshotRecord): Promise<Mount[]> {
    const store = svc.store;
    if (rec.kind === 'committed') throw new SnapshotError('FailedPrecondition', `snapshot ${rec.key} is committed: it has no mounts (view or prepare on top of it)`);
    const chain = rec.kind === 'active' ? ((await svc.index.getLayer(rec.layer!))?.parent ?? null) : rec.layer;
    const layers = chain ? (await svc.chain(chain)).map((l) => l.id).reverse() : [];
    if (rec.kind === 'view') {
      if (layers.length === 0) return [bind(await this.emptyDir(svc), 'ro')];
      if (layers.length === 1) return [bind(store.diffDir(layers[0]!), 'ro')];
      if (this.opts.driver === 'fuse') return [bind(await this.fuseView(svc, rec), 'ro')];
      return [{ type: 'overlay', source: 'overlay', target: '', options: ['index=off', `lowerdir=${(await this.shortLowers(svc, layers)).join(':')}`] }];
    }
    const dir = store.layerDir(rec.layer!);
    if (layers.length === 0) return [bind(path.join(dir, 'diff'), 'rw')];
    if (this.opts.driver === 'fuse') return [bind(await this.fuseActive(svc, rec), 'rw')];
    return [{ type: 'overlay', source: 'overlay', target: '', options: ['index=off', `workdir=${path.join(dir, 'work')}`, `upperdir=${path.join(dir, 'diff')}`, `lowerdir=${(await this.shortLowers(svc, layers)).join(':')}`] }];
  }

  /**
   * Lower dirs as absolute paths of the layers' short links, `<root>/overlay/RO/l/<10 chars>`
   * (top first). containerd's mount code (mount.Mount on Linux), when an overlay's options come
   * near a page, chdirs to the parent of the lowerdirs' longest common prefix and passes them
   * relative to it: that is `<root>/overlay/RO/l`, leaving 11 bytes a layer, so 128 and more
   * layers fit in the page (`<root>/overlay/<64 hex>/diff` would leave 70: 55 layers at most).
   */
  private async shortLowers(svc: Service, layers: string[]): Promise<string[]> {
    return Promise.all(layers.map(async (id) => path.join(svc.store.mountBase, await svc.store.shortLowerPath(id))));
  }

  /** FUSE: the RW layer's merged view, mounted once (kept across snapshotter restarts: the servers are their own processes). */
  private async fuseActive(svc: Service, rec: SnapshotRecord): Promise<string> {
    const m = (await svc.index.listMounts()).find((x) => x.layer === rec.layer && x.rw);
    if (m && (await isMountpoint(m.mountpoint))) return m.mountpoint;
    return this.driver(svc).mount(rec.layer!);
  }

  private async fuseView(svc: Service, rec: SnapshotRecord): Promise<string> {
    const target = this.viewDir(svc, rec.key);
    const m = await svc.index.getMount(target);
    if (m && (await isMountpoint(target))) return target;
    if (m) await svc.index.delMount(target);
    return this.driver(svc).mountRO(rec.layer!, target);
  }

  /** Our own FUSE mounts of a snapshot (unmounted before commit/remove). */
  private async ownMounts(svc: Service, rec: SnapshotRecord): Promise<string[]> {
    if (rec.kind === 'view') return (await svc.index.getMount(this.viewDir(svc, rec.key))) ? [this.viewDir(svc, rec.key)] : [];
    if (rec.kind === 'active') return (await svc.index.listMounts()).filter((m) => m.layer === rec.layer && m.rw).map((m) => m.mountpoint);
    return [];
  }

  /** Mount points (not ours) using a snapshot: an overlay over its upper dir, binds of it or of our FUSE mount of it. */
  private async usersOf(svc: Service, rec: SnapshotRecord): Promise<string[]> {
    const own = await this.ownMounts(svc, rec);
    if (rec.kind !== 'active') return own.length ? mountUsers([], own) : [];
    return mountUsers([svc.store.diffDir(rec.layer!)], own);
  }

  private async assertNotInUse(svc: Service, rec: SnapshotRecord): Promise<void> {
    const users = await this.usersOf(svc, rec);
    if (users.length) throw new SnapshotError('FailedPrecondition', `snapshot ${rec.key} is in use: mounted at ${users.join(', ')}`);
  }

  /**
   * RW layers of snapshots committed while mounted (their upper was copied): removed, with our
   * FUSE mounts of them, once nothing mounts them any more. Runs after requests that change
   * snapshots; Cleanup finds the ones a restart forgot (orphan RW layers).
   */
  private async reapRetired(svc: Service): Promise<void> {
    for (const id of [...this.retired]) {
      try {
        if (!(await svc.index.getLayer(id))) {
          this.retired.delete(id);
          continue;
        }
        const own = (await svc.index.listMounts()).filter((m) => m.layer === id);
        if ((await mountUsers([svc.store.diffDir(id)], own.map((m) => m.mountpoint))).length) continue;
        for (const m of own) await driverFor(m.driver, svc.store, svc.index).unmount(m.mountpoint, { force: true });
        await this.driver(svc).remove(id);
        this.retired.delete(id);
      } catch (err) {
        logger().warn({ err, layer: id }, 'cannot remove the RW layer of a snapshot committed while mounted (yet)');
      }
    }
  }

  private async unmountOwn(svc: Service, rec: SnapshotRecord): Promise<void> {
    for (const mp of await this.ownMounts(svc, rec)) {
      const m = await svc.index.getMount(mp);
      if (!m) continue;
      await driverFor(m.driver, svc.store, svc.index).unmount(mp, { force: true });
    }
  }

  commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    return this.run(async (svc) => {
      if (!name) throw new SnapshotError('InvalidArgument', 'commit name is empty');
      const a = await this.get(svc, key);
      if (a.kind !== 'active') throw new SnapshotError('FailedPrecondition', `snapshot ${key} is not active`);
      if (await svc.index.getSnapshot(name)) throw new SnapshotError('AlreadyExists', `snapshot ${name} already exists`);
      const rw = await svc.index.getLayer(a.layer!);
      if (!rw) throw new SnapshotError('NotFound', `RW layer ${a.layer} of snapshot ${key} is gone`);
      const id = layerIdForName(name);
      // containerd's overlayfs snapshotter commits a snapshot that is still mounted (its own test
      // suite does: prepare, mount, write, commit, unmount); so do we: while something mounts the
      // upper dir, it is copied, and the RW layer (and our FUSE mount of it) stays until nothing
      // uses it (reaped by later requests and by Cleanup); when unused, it is renamed (no copy)
      const users = await this.usersOf(svc, a);
      if (users.length) {
        await this.commitLayer(svc, rw, id, { copy: true });
        this.retired.add(rw.id);
        logger().debug({ key, layer: rw.id, users }, 'commit of a mounted snapshot: upper copied; the RW layer stays until unmounted');
      } else {
        await this.unmountOwn(svc, a);
        await this.commitLayer(svc, rw, id);
        await this.driver(svc).remove(rw.id);
      }
      const now = isoNs();
      await dropSnapshot(svc, key);
      await saveSnapshot(svc, { key: name, kind: 'committed', parent: a.parent, labels: { ...a.labels, ...labels }, created: now, updated: now, layer: id });
    }, { changesUsers: true });
  }

  /** The RW layer's upper dir becomes RO layer `id` on the shared store (renamed, or copied across filesystems). */
  private async commitLayer(svc: Service, rw: LayerRecord, id: string, opts: { copy?: boolean } = {}): Promise<void> {
    const store = svc.store;
    const upper = store.diffDir(rw.id);
    await store.withWriteLock(`snapshot commit ${id}`, async () => {
      if (await store.roLayerComplete(id)) {
        // same chainID already in the store (another namespace, or `layerfs image import`): share it
        const existing = await store.readSharedLayer(id);
        await store.linkLocal(id, 'layer');
        if (existing) await svc.index.putLayer(existing);
        return;
      }
      const tmp = await store.stageLayer();
      try {
        let moved = false;
        if (!opts.copy && process.env.LAYERFS_SNAPSHOT_COMMIT !== 'copy') {
          await rmdir(path.join(tmp, 'diff'));
          try {
            await rename(upper, path.join(tmp, 'diff'));
            moved = true;
          } catch (err) {
            if (!isErrno(err, 'EXDEV')) throw err;
            await mkdir(path.join(tmp, 'diff'), { mode: 0o755 });
          }
        }
        if (!moved) await applyLayer(exportDiff(upper), path.join(tmp, 'diff'));
        const rec: LayerRecord = {
          id,
          parent: rw.parent,
          diffDigest: null,
          compressedDigest: null,
          size: await contentSize(path.join(tmp, 'diff')),
          rw: false,
          created: new Date().toISOString(),
        };
        await store.publishLayer(tmp, rec);
        await svc.index.putLayer((await store.readSharedLayer(id)) ?? rec);
      } catch (err) {
        await store.discardStaged(tmp).catch(() => undefined);
        throw err;
      }
    });
  }

  remove(key: string): Promise<void> {
    return this.run(async (svc) => {
      const rec = await this.get(svc, key);
      const children = (await svc.index.listSnapshots()).filter((s) => s.parent === key);
      if (children.length) throw new SnapshotError('FailedPrecondition', `cannot remove snapshot ${key}: it has ${children.length} child snapshot(s) (${children.map((c) => c.key).join(', ')})`);
      await this.assertNotInUse(svc, rec);
      await this.removeRecord(svc, rec);
    }, { changesUsers: true });
  }

  /** Release a snapshot's disk space and drop its record. */
  private async removeRecord(svc: Service, rec: SnapshotRecord): Promise<void> {
    await this.unmountOwn(svc, rec);
    if (rec.kind === 'active' && rec.layer && (await svc.index.getLayer(rec.layer))) await this.driver(svc).remove(rec.layer);
    await dropSnapshot(svc, rec.key);
    if (rec.kind === 'committed' && rec.layer) await this.dropLayerIfUnused(svc, rec.layer);
  }

  /** Remove a committed snapshot's RO layer unless another snapshot, an image or a layer still uses it. */
  private async dropLayerIfUnused(svc: Service, id: string): Promise<boolean> {
    if ((await svc.index.listSnapshots()).some((s) => s.layer === id && s.kind !== 'active')) return false;
    if (!(await svc.index.getLayer(id))) return false;
    try {
      await svc.removeLayer(id);
      return true;
    } catch (err) {
      if (err instanceof LayerfsError && err.code === 'EINUSE') {
        logger().info({ layer: id, why: err.message }, 'snapshot removed; its layer stays for its other users');
        return false;
      }
      throw err;
    }
  }

  stat(key: string): Promise<SnapshotInfo> {
    return this.run(async (svc) => toInfo(await this.get(svc, key)));
  }

  update(info: { name: string; labels: Record<string, string> }, paths: string[]): Promise<SnapshotInfo> {
    return this.run(async (svc) => {
      const rec = await this.get(svc, info.name);
      let labels = { ...rec.labels };
      if (paths.length === 0) labels = { ...info.labels };
      for (const p of paths) {
        if (p === 'labels') labels = { ...info.labels };
        else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          const v = info.labels[k];
          if (v === undefined || v === '') delete labels[k];
          else labels[k] = v;
        } else throw new SnapshotError('InvalidArgument', `cannot update ${JSON.stringify(p)} field on snapshot ${info.name}`);
      }
      for (const k of Object.keys(labels)) if (labels[k] === '') delete labels[k];
      rec.labels = labels;
      rec.updated = isoNs();
      await saveSnapshot(svc, rec);
      return toInfo(rec);
    });
  }

  list(filters: string[]): Promise<SnapshotInfo[]> {
    return this.run(async (svc) => {
      const all = (await svc.index.listSnapshots()).map(toInfo);
      return filters.length ? all.filter((i) => matchesAny(filters, i)) : all;
    });
  }

  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.run(async (svc) => {
      const rec = await this.get(svc, key);
      if (rec.kind === 'view' || !rec.layer) return { size: 0, inodes: 0 };
      return diskUsage(svc.store.diffDir(rec.layer));
    });
  }

  /**
   * Release what no snapshot references: RW layers this snapshotter made whose snapshot is gone
   * (a crash between createRW and the record), FUSE views of removed snapshots.
   */
  cleanup(): Promise<void> {
    return this.run(async (svc) => {
      const snaps = await svc.index.listSnapshots();
      const used = new Set(snaps.filter((s) => s.kind === 'active').map((s) => s.layer));
      for (const l of await svc.index.listLayers()) {
        if (!l.rw || !l.name?.startsWith(RW_NAME_PREFIX) || used.has(l.id)) continue;
        const mounted = (await svc.index.listMounts()).filter((m) => m.layer === l.id);
        // still mounted by someone (e.g. a snapshot committed while mounted: its upper was copied)
        if ((await mountUsers([svc.store.diffDir(l.id)], mounted.map((m) => m.mountpoint))).length) continue;
        for (const m of mounted) await driverFor(m.driver, svc.store, svc.index).unmount(m.mountpoint, { force: true }).catch(() => undefined);
        logger().info({ layer: l.id }, 'cleanup: removing orphan RW layer');
        await this.driver(svc).remove(l.id).catch((err: unknown) => logger().warn({ err, layer: l.id }, 'cleanup: cannot remove'));
      }
      const views = new Set(snaps.filter((s) => s.kind === 'view').map((s) => this.viewDir(svc, s.key)));
      const vdir = path.join(svc.store.root, 'snapshotter', 'views');
      for (const n of await readdir(vdir).catch(() => [] as string[])) {
        const p = path.join(vdir, n);
        if (views.has(p)) continue;
        const m = await svc.index.getMount(p);
        if (m) await driverFor(m.driver, svc.store, svc.index).unmount(p, { force: true }).catch(() => undefined);
        if (!(await isMountpoint(p))) await rmdir(p).catch(() => undefined);
      }
    }, { changesUsers: true });
  }
}

function bind(source: string, mode: 'ro' | 'rw'): Mount {
  return { type: 'bind', source, target: '', options: [mode, 'rbind'] };
}
