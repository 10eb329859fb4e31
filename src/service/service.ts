import { createReadStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { FuseDriver, DriverName, LayeredDriver, LayerMetadata } from '../drivers/index.js';
import { contentSize } from '../common/du.js';
import { LayerfsError } from '../common/errors.js';
import { Index, type IndexedLayer, type MountRecord } from '../index/index.js';
import type { ImportResult } from '../image/index.js';
import { idPrefix, normalizeName } from '../image/refs.js';
import { Store, type ImageRecord, type LayerRecord, type StoreOptions } from '../store/index.js';
import { Lifetime, type KeptLayer, type RemovalReport } from '../usage/lifetime.js';
import type { HostLease } from '../usage/leases.js';
import { describeUsers, localUsers, type LayerUser } from '../usage/users.js';
import { checkStoreBeforeFirstBuild, rebuildIndex, type StoreSnapshot } from '../scanner/rebuild.js';
import type { ScanOptions, ScanResult } from '../scanner/scanner.js';
import type { ExportOptions, ExportResult } from '../image/export.js';
import type { PullOptions, PullResult } from '../image/registry/pull.js';

// loaded by the operations that use them, not at start-up: `image ls` or `status` needs no tar, registry or FUSE code
const drivers = () => import('../drivers/index.js');
const images = () => import('../image/index.js');

export type ServiceOptions = StoreOptions;

/**
 * The store, its index and the operations on them. One process at a time holds a root's index
 * (LevelDB's LOCK); the CLI opens a Service per command.
 */
export class Service {
  /** Who uses a layer; every removal goes through it. */
  readonly lifetime: Lifetime;

  private constructor(
    readonly store: Store,
    readonly index: Index,
  ) {
    this.lifetime = new Lifetime(store, index);
  }

  static async open(opts: ServiceOptions): Promise<Service> {
    const store = await Store.open(opts);
    await checkStoreBeforeFirstBuild(store);
    const index = await Index.open(store.indexDir, { holderFile: store.indexHolderFile, onWait: (w) => store.noticeLockWait(w) });
    const svc = new Service(store, index);
    try {
      // we hold the root's index, so no other local process is mid-write in the root
      await store.removeStaleTemps(store.root);
      if (index.created) svc.built = await rebuildIndex(store, index);
    } catch (err) {
      await index.close();
      throw err;
    }
    return svc;
  }

  async close(): Promise<void> {
    await this.index.close();
  }

  /** The rebuild that made a new index at open, if this open made one. */
  private built?: StoreSnapshot & { recoveredMounts: MountRecord[] };

  async rebuildIndex(): Promise<StoreSnapshot & { recoveredMounts: MountRecord[] }> {
    // a new index was just built from the disk by open: a second full read would find the same
    if (this.built) return this.built;
    return rebuildIndex(this.store, this.index);
  }

  // ---- images
  async importImage(input: string, names: string[] = [], onProgress?: Parameters<typeof import('../image/index.js').importImage>[4]): Promise<ImportResult> {
    return (await images()).importImage(this.store, this.index, input, names, onProgress);
  }

  async listImages(): Promise<ImageRecord[]> {
    return (await this.index.listImages()).sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  /** Resolve an image by name, id, `sha256:` id, or unique id prefix. */
  async resolveImage(ref: string): Promise<ImageRecord> {
    let byName: string | undefined;
    try {
      byName = await this.index.imageIdByName(normalizeName(ref));
    } catch {
      byName = undefined;
    }
    if (byName) {
      const rec = await this.index.getImage(byName);
      if (rec) return rec;
    }
    const prefix = idPrefix(ref);
    if (prefix) {
      const hits = await this.index.imagesByPrefix(prefix);
      if (hits.length === 1) return hits[0]!;
      if (hits.length > 1) throw new LayerfsError('EUSAGE', `image ${ref}`, 'ambiguous: matches several images');
    }
    throw new LayerfsError('EIMAGENOTFOUND', `image ${ref}`, 'no such image');
  }

  /** `image inspect`: the record plus the layer chain and the kernel-overlay lowerdir list. */
  async inspectImage(ref: string): Promise<ImageRecord & { lowerDirs: string[] }> {
    const rec = await this.resolveImage(ref);
    return { ...rec, lowerDirs: [...rec.layers].reverse().map((l) => this.store.diffDir(l)) };
  }

  /**
   * `image rm`: the image record goes at once (no new mounts of it anywhere), its layers are marked for removal,
   * and those nothing uses are deleted now; the others wait for a later pass (the writer's daemon, `prune`).
   */
  async removeImage(ref: string): Promise<{ image: string; layers: string[]; kept: KeptLayer[] }> {
    const rec = await this.resolveImage(ref);
    return this.store.withWriteLock(`image rm ${ref}`, async () => {
      await this.store.removeImage(rec.id);
      await this.index.delImage(rec.id);
      await this.store.markForRemoval(rec.layers);
      const r = await this.lifetime.collect({ candidates: rec.layers });
      return { image: rec.id, layers: r.removed, kept: r.kept };
    });
  }

  /**
   * `layerfs prune`: RO layers nothing uses (no image, child, local user or live lease), temp leftovers; with
   * `rwOlderThanMs`, also RW layers not mounted, not a containerd snapshot's, unchanged for that long.
   */
  async prune(opts: { dryRun?: boolean; rwOlderThanMs?: number } = {}): Promise<RemovalReport & { rwRemoved: string[] }> {
    const dryRun = opts.dryRun ?? false;
    const rwRemoved: string[] = [];
    if (opts.rwOlderThanMs !== undefined) {
      const users = await localUsers(this.index);
      for (const l of await this.index.listRWLayers()) {
        if (users.has(l.id)) continue;
        if (Date.now() - (await this.store.rwLayerChangedAt(l.id)) < opts.rwOlderThanMs) continue;
        if (!dryRun) await (await drivers()).driverFor('overlay', this.store, this.index).remove(l.id);
        rwRemoved.push(l.id);
      }
    }
    const r = await this.store.withWriteLock(`prune${dryRun ? ' --dry-run' : ''}`, async () => {
      if (!dryRun) for (const base of [this.store.shared, this.store.root]) await this.store.removeStaleTemps(base, { deep: true });
      return this.lifetime.collect({ all: true, dryRun });
    });
    if (!dryRun) await this.lifetime.usersChanged();
    return { ...r, rwRemoved };
  }

  /** Every host's lease (`host ls`), ages on the shared store's clock. */
  async hosts(): Promise<HostLease[]> {
    const now = await this.lifetime.leases.renew({ force: true });
    return this.lifetime.leases.all(now!);
  }

  /** `host forget ID`: drop a (dead) host's lease; its layers are no longer protected by it. */
  async forgetHost(host: string): Promise<void> {
    if (!(await this.lifetime.leases.forget(host))) throw new LayerfsError('EUSAGE', `host ${host}`, 'has no lease on the shared store');
  }

  // ---- layers
  async listLayers(): Promise<IndexedLayer[]> {
    return (await this.index.listLayers()).sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  /** `layer ls`: every layer, RW layers with their real size (bytes in the upper) and where they are mounted. */
  async layerRows(): Promise<(IndexedLayer & { mountpoint: string | null })[]> {
    const mounts = await this.index.listMounts();
    const out: (IndexedLayer & { mountpoint: string | null })[] = [];
    for (const l of await this.listLayers()) {
      const m = mounts.find((x) => x.layer === l.id && x.rw === l.rw && !x.alone) ?? null;
      const size = l.rw ? await contentSize(this.store.diffDir(l.id)).catch(() => 0) : l.size;
      out.push({ ...l, size, mountpoint: m?.mountpoint ?? null });
    }
    return out;
  }

  async resolveLayer(ref: string): Promise<IndexedLayer> {
    const prefix = idPrefix(ref);
    if (prefix) {
      const exact = await this.index.getLayer(prefix);
      if (exact) return exact;
      const hits = await this.index.layersByPrefix(prefix);
      if (hits.length === 1) return hits[0]!;
      if (hits.length > 1) throw new LayerfsError('EUSAGE', `layer ${ref}`, 'ambiguous: matches several layers');
    }
    // names are RW layers' (`--name`)
    const byName = (await this.index.listRWLayers()).find((l) => l.name === ref);
    if (byName) return byName;
    throw new LayerfsError('ELAYERNOTFOUND', `layer ${ref}`, 'no such layer');
  }

  /** What keeps a layer: images, child layers, local users, and (`remote`) other hosts' leases. */
  async layerUsers(id: string, opts: { remote?: boolean } = {}): Promise<LayerUser[]> {
    return this.lifetime.usersOf(id, opts);
  }

  /**
   * `layer rm`: an RO layer nothing uses (else EINUSE naming its users), or an RW layer that is not mounted and
   * not a containerd snapshot's.
   */
  async removeLayer(ref: string): Promise<string> {
    const rec = await this.resolveLayer(ref);
    if (rec.rw) {
      const users = (await localUsers(this.index)).get(rec.id) ?? [];
      if (users.length) throw new LayerfsError('EINUSE', `layer ${rec.id}`, `still used by ${describeUsers(users)}${users.some((u) => u.kind === 'mount') ? ': unmount it first' : ''}`);
      await (await drivers()).driverFor('overlay', this.store, this.index).remove(rec.id);
      await this.lifetime.usersChanged();
      return rec.id;
    }
    await this.store.withWriteLock(`layer rm ${rec.id}`, () => this.lifetime.removeLayer(rec));
    return rec.id;
  }

  /** `layer create --tar TAR [--parent ID]`: a new RO layer from a tar file. */
  async createLayerFromTar(tar: string, parentRef?: string): Promise<{ layer: LayerRecord; created: boolean }> {
    const parent = parentRef ? await this.resolveLayer(parentRef) : null;
    if (parent?.rw) throw new LayerfsError('EUSAGE', `layer ${parent.id}`, 'an RO layer cannot have an RW parent');
    const { addROLayer } = await images();
    return this.store.withWriteLock(`layer create ${tar}`, () =>
      addROLayer(this.store, this.index, { parent: parent?.id ?? null, open: () => createReadStream(tar, { highWaterMark: 1 << 20 }) }),
    );
  }

  /** Layer chain, bottom first, of a layer (itself included). */
  async chain(id: string): Promise<IndexedLayer[]> {
    const out: IndexedLayer[] = [];
    let cur: string | null = id;
    while (cur) {
      const rec: IndexedLayer | undefined = await this.index.getLayer(cur);
      if (!rec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${cur}`, `parent of ${out[0]?.id ?? id} is not in the index`);
      out.unshift(rec);
      cur = rec.parent;
    }
    return out;
  }

  // ---- mounts (graph drivers)
  async driver(name: DriverName = 'auto'): Promise<LayeredDriver> {
    const d = await (await drivers()).selectDriver(name, this.store, this.index);
    await d.init();
    return d;
  }

  /**
   * `layerfs mount REF MNT`: REF is an image (a new RW layer on top of it, or with `name` the RW layer of that
   * name on it if there is one, not mounted), or an existing RW layer (id, unique prefix or name), mounted at
   * MNT. With `ro`: a read-only merged view of the image. Returns the RW layer id (ro: the image's top layer).
   * The RO layers under the mount are leased (and checked) before it is made.
   */
  async mountImage(ref: string, target: string, opts: { driver?: DriverName; ro?: boolean; quota?: number; name?: string; transport?: string } = {}): Promise<{ layer: string; mountpoint: string; driver: string; reused?: boolean }> {
    const img = await this.resolveImage(ref).catch(async (err: unknown) => {
      // not an image: an existing RW layer?
      const rw = await this.resolveLayer(ref).catch(() => null);
      if (rw?.rw && !opts.ro) return rw;
      throw err;
    });
    await this.cleanStaleMounts();
    const d = await this.driver(opts.driver);
    try {
      if ('rw' in img) return await this.mountRW(d, img, target, opts);
      if (opts.ro) {
        if (opts.quota !== undefined) throw new LayerfsError('EQUOTA', `image ${ref}`, 'a read-only mount takes no quota (RO layers never do)');
        if (!img.topLayer) throw new LayerfsError('EMOUNT', `image ${ref}`, 'has no layers to show');
        await this.lifetime.claim(await this.roChain(img.topLayer));
        const mountpoint = await d.mountRO(img.topLayer, target);
        return { layer: img.topLayer, mountpoint, driver: d.name };
      }
      const named = opts.name ? (await this.index.listRWLayers()).find((l) => l.name === opts.name) : undefined;
      if (named) {
        if (named.parent !== img.topLayer) throw new LayerfsError('EEXIST', `RW layer ${opts.name}`, `exists on another image (parent layer ${named.parent ?? 'none'}, not ${img.topLayer ?? 'none'}): choose another name, or remove it with \`layerfs layer rm ${named.id}\``);
        return await this.mountRW(d, named, target, opts);
      }
      if (img.topLayer) await this.lifetime.claim(await this.roChain(img.topLayer));
      const id = randomBytes(32).toString('hex');
      await d.createRW(id, img.topLayer, { ...(opts.quota !== undefined ? { quota: opts.quota } : {}), ...(opts.name ? { name: opts.name } : {}) });
      try {
        const mountpoint = await d.mount(id, { target });
        return { layer: id, mountpoint, driver: d.name };
      } catch (err) {
        await d.remove(id).catch(() => undefined);
        throw err;
      }
    } finally {
      await this.lifetime.usersChanged();
    }
  }

  /** Mount an existing RW layer again (it keeps its upper dir: a durable container). */
  private async mountRW(d: LayeredDriver, rw: IndexedLayer, target: string, opts: { quota?: number }): Promise<{ layer: string; mountpoint: string; driver: string; reused: boolean }> {
    if (opts.quota !== undefined) throw new LayerfsError('EQUOTA', `layer ${rw.id}`, 'an existing RW layer keeps the quota it was made with');
    const elsewhere = (await this.index.listMounts()).find((m) => m.layer === rw.id && m.rw && m.mountpoint !== path.resolve(target));
    if (elsewhere) throw new LayerfsError('EINUSE', `layer ${rw.name ?? rw.id}`, `is already mounted at ${elsewhere.mountpoint}`);
    if (rw.parent) await this.lifetime.claim(await this.roChain(rw.parent));
    const mountpoint = await d.mount(rw.id, { target });
    return { layer: rw.id, mountpoint, driver: d.name, reused: true };
  }

  /** RO layer ids of a chain, top first. */
  private async roChain(top: string): Promise<string[]> {
    return (await this.chain(top)).map((l) => l.id).reverse();
  }

  /** `layerfs layer mount ID MNT`: a read-only view of one RO layer alone. */
  async mountLayer(ref: string, target: string, driver: DriverName = 'auto'): Promise<string> {
    const rec = await this.resolveLayer(ref);
    const d = await this.driver(driver);
    try {
      if (!rec.rw) await this.lifetime.claim([rec.id]);
      return await d.mountLayerAlone(rec.id, target);
    } finally {
      await this.lifetime.usersChanged();
    }
  }

  /**
   * `layerfs umount MNT|RW-LAYER [--rm]`. An RW layer (id, prefix or name) is unmounted wherever it is mounted;
   * with `rm` an unmounted one is deleted. A writer then runs a removal pass if layers wait for one (a layer kept
   * for this mount after its image was removed goes now).
   */
  async umount(target: string, opts: { rm?: boolean; force?: boolean } = {}): Promise<{ layer: string; removed: boolean }> {
    const abs = path.resolve(target);
    let recs = [await this.index.getMount(abs)].filter((m) => m !== undefined);
    let layer: string;
    let rw: boolean;
    if (recs.length) {
      layer = recs[0]!.layer;
      rw = recs[0]!.rw;
    } else {
      const l = await this.resolveLayer(target).catch(() => null);
      if (!l?.rw) throw new LayerfsError('EMOUNT', abs, 'not a layerfs mount (nor an RW layer)');
      layer = l.id;
      rw = true;
      recs = (await this.index.listMounts()).filter((m) => m.layer === l.id && m.rw);
      if (!recs.length && !opts.rm) throw new LayerfsError('EMOUNT', `layer ${l.name ?? l.id}`, 'is not mounted (--rm deletes it)');
    }
    try {
      for (const rec of recs) await (await drivers()).driverFor(rec.driver, this.store, this.index).unmount(rec.mountpoint, { force: opts.force || opts.rm });
      let removed = false;
      if (opts.rm && rw) {
        await this.removeLayer(layer);
        removed = true;
      }
      return { layer, removed };
    } finally {
      await this.lifetime.usersChanged();
      if (this.store.role === 'writer') await this.lifetime.collectMarked();
    }
  }

  /** A mount point or layer id -> the RW layer behind it. */
  async rwLayerOf(ref: string): Promise<IndexedLayer> {
    const m = await this.index.getMount(path.resolve(ref));
    const rec = m ? await this.index.getLayer(m.layer) : await this.resolveLayer(ref);
    if (!rec) throw new LayerfsError('ELAYERNOTFOUND', ref, 'no such layer or mount');
    return rec;
  }

  async metadata(ref: string): Promise<LayerMetadata & { layer: string; driver: string | null; mounted: boolean }> {
    const rec = await this.rwLayerOf(ref);
    const m = (await this.index.listMounts()).find((x) => x.layer === rec.id);
    const d = (await drivers()).driverFor(m?.driver ?? 'overlay', this.store, this.index);
    return { ...(await d.metadata(rec.id)), layer: rec.id, driver: m?.driver ?? null, mounted: !!m };
  }

  /** The upper dir whose changes `layer diff` writes (a caller streams it with `exportDiff`: no index needed). */
  async layerDiffDir(ref: string): Promise<string> {
    const rec = await this.rwLayerOf(ref);
    if (!rec.rw) throw new LayerfsError('EUSAGE', `layer ${rec.id}`, 'is an RO layer: only RW layers have a diff to export');
    return this.store.diffDir(rec.id);
  }

  /** `layer inspect`: the record, its diff dir, its chain and what uses it (other hosts' leases included). */
  async inspectLayer(ref: string): Promise<IndexedLayer & { diffDir: string; chain: string[]; usedBy: LayerUser[] }> {
    const rec = await this.resolveLayer(ref);
    return { ...rec, diffDir: this.store.diffDir(rec.id), chain: (await this.chain(rec.id)).map((l) => l.id), usedBy: await this.layerUsers(rec.id, { remote: !rec.rw }) };
  }

  /** `image pull`. */
  async pullImage(ref: string, opts: PullOptions = {}): Promise<PullResult> {
    const { pullImage } = await import('../image/registry/pull.js');
    return pullImage(this.store, this.index, ref, opts);
  }

  /** `image export REF OUT` (OUT absolute: the caller's cwd is not ours when the daemon answers). */
  async exportImage(ref: string, out: string, opts: Pick<ExportOptions, 'gzip' | 'compression'> = {}): Promise<ExportResult> {
    const image = await this.resolveImage(ref);
    let name: string | undefined;
    try {
      const n = normalizeName(ref);
      if (image.names.includes(n)) name = n;
    } catch {
      name = undefined;
    }
    const { exportImage } = await images();
    return exportImage(this.store, image, out, { ...opts, ...(name ? { name } : {}) });
  }

  /** `layerfs scan`: one scan of the shared store now. */
  async scan(opts: ScanOptions = {}): Promise<ScanResult> {
    const { scanOnce } = await import('../scanner/scanner.js');
    return scanOnce(this.store, this.index, opts);
  }

  /** `index rebuild`, summed up. */
  async rebuildSummary(): Promise<{ layers: number; images: number; notReady: string[]; junk: string[]; mountsRecovered: MountRecord[] }> {
    const snap = await this.rebuildIndex();
    return { layers: snap.layers.size, images: snap.images.size, notReady: snap.notReady, junk: snap.junk, mountsRecovered: snap.recoveredMounts };
  }

  /**
   * `layerfs commit MNT|ID --name REF`: the RW layer's changes become a new RO layer (by chainID)
   * and a new image whose config extends the parent image's.
   */
  async commit(ref: string, names: string[]): Promise<ImageRecord> {
    const rw = await this.rwLayerOf(ref);
    if (!rw.rw) throw new LayerfsError('EUSAGE', `layer ${rw.id}`, 'is an RO layer: commit takes an RW layer or its mount point');
    let base: ImageRecord | undefined;
    for (const id of rw.parent ? await this.index.imagesUsing(rw.parent) : []) {
      const img = await this.index.getImage(id);
      if (img?.topLayer === rw.parent) base = img;
    }
    const baseConfig = base ? JSON.parse((await this.store.readImageBlob(base.id, 'config')).toString('utf8')) : { architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] } };
    const { driverFor } = await drivers();
    return this.store.withWriteLock(`commit ${rw.id}`, async () => {
      const { layer } = await (await images()).addROLayer(this.store, this.index, { parent: rw.parent, open: () => driverFor('overlay', this.store, this.index).diff(rw.id) });
      const chain = await this.chain(layer.id);
      const now = new Date().toISOString();
      const config = {
        ...baseConfig,
        created: now,
        rootfs: { type: 'layers', diff_ids: chain.map((l) => l.diffDigest) },
        history: [...(baseConfig.history ?? []), { created: now, created_by: `layerfs commit ${rw.id}` }],
      };
      const configBuf = Buffer.from(JSON.stringify(config));
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: (await images()).sha256Digest(configBuf), size: configBuf.length },
          layers: chain.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l.diffDigest, size: l.compressedSize ?? 0 })),
        }),
      );
      return (await images()).publishImageOf(this.store, this.index, { config: configBuf, configDigest: (await images()).sha256Digest(configBuf), manifest, layers: chain, names });
    });
  }

  /** FUSE mounts of ours whose server died (kill -9): unmounted, records dropped. Run at start of mount/status. */
  async cleanStaleMounts(): Promise<string[]> {
    try {
      return await ((await drivers()).driverFor('fuse', this.store, this.index) as FuseDriver).cleanStale();
    } catch {
      return [];
    }
  }

  async status(): Promise<Record<string, unknown>> {
    const staleMountsRemoved = await this.cleanStaleMounts();
    // counts from the keys, not the records; missing layers from their own map: no walk of the records
    const layerCount = (await this.index.layerIds()).size;
    const rwLayers = (await this.index.listRWLayers()).length;
    const missing = await this.index.missingLayerIds();
    const marker = await this.store.readMarker().catch((err: unknown) => ({ error: (err as Error).message }));
    const out: Record<string, unknown> = {
      root: this.store.root,
      shared: this.store.shared,
      role: this.store.role,
      roleReason: this.store.roleReason,
      hostId: this.store.hostId,
      storeId: marker && 'storeId' in marker ? marker.storeId : null,
      writer: marker === null ? 'no store marker (not mounted?)' : 'error' in marker ? marker.error : marker.writer,
      images: (await this.index.imageIds()).size,
      roLayers: layerCount - rwLayers,
      rwLayers,
      mounts: (await this.index.listMounts()).length,
      missingLayers: missing,
      markedForRemoval: (await this.store.markedLayers()).length,
      ...(staleMountsRemoved.length ? { staleMountsRemoved } : {}),
    };
    try {
      out.defaultDriver = (await (await drivers()).selectDriver('auto', this.store, this.index)).name;
      out.drivers = { overlay: await (await drivers()).driverFor('overlay', this.store, this.index).status(), fuse: await (await drivers()).driverFor('fuse', this.store, this.index).status() };
    } catch (err) {
      out.drivers = { error: (err as Error).message };
    }
    return out;
  }

}
