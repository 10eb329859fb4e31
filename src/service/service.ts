import { createReadStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { driverFor, selectDriver, type FuseDriver, type DriverName, type LayeredDriver, type LayerMetadata } from '../drivers/index.js';
import { publishImageOf, sha256Digest } from '../image/index.js';
import { LayerfsError } from '../common/errors.js';
import { Index, type IndexedLayer, type MountRecord } from '../index/index.js';
import { addROLayer, idPrefix, importImage, normalizeName, type ImportResult } from '../image/index.js';
import { Store, type ImageRecord, type LayerRecord, type Role } from '../store/index.js';
import { rebuildIndex, type StoreSnapshot } from './rebuild.js';

export interface ServiceOptions {
  root: string;
  shared?: string;
  role?: Role;
}

/** Who uses a layer: images listing it, and layers (RO children or RW layers) on top of it. */
export interface LayerUsers {
  images: string[];
  children: string[];
}

/**
 * The store, its index and the operations on them. One process at a time holds a root's index
 * (LevelDB's LOCK); the CLI opens a Service per command.
 */
export class Service {
  private constructor(
    readonly store: Store,
    readonly index: Index,
  ) {}

  static async open(opts: ServiceOptions): Promise<Service> {
    const store = await Store.open(opts);
    const index = await Index.open(store.indexDir);
    const svc = new Service(store, index);
    try {
      // we hold the root's index, so no other local process is mid-write in the root
      await store.removeStaleTemps(store.root);
      if (index.created) await rebuildIndex(store, index);
    } catch (err) {
      await index.close();
      throw err;
    }
    return svc;
  }

  async close(): Promise<void> {
    await this.index.close();
  }

  async rebuildIndex(): Promise<StoreSnapshot & { recoveredMounts: MountRecord[] }> {
    return rebuildIndex(this.store, this.index);
  }

  // ---- images
  async importImage(input: string, names: string[] = []): Promise<ImportResult> {
    return importImage(this.store, this.index, input, names);
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
      const hits = (await this.index.listImages()).filter((i) => i.id.startsWith(prefix));
      if (hits.length === 1) return hits[0]!;
      if (hits.length > 1) throw new LayerfsError('EUSAGE', `image ${ref}`, `ambiguous: matches ${hits.length} images`);
    }
    throw new LayerfsError('EIMAGENOTFOUND', `image ${ref}`, 'no such image');
  }

  /** `image inspect`: the record plus the layer chain and the kernel-overlay lowerdir list. */
  async inspectImage(ref: string): Promise<ImageRecord & { lowerDirs: string[] }> {
    const rec = await this.resolveImage(ref);
    return { ...rec, lowerDirs: [...rec.layers].reverse().map((l) => this.store.diffDir(l)) };
  }

  /** Remove an image, then every layer of it that nothing else uses. Returns the removed layer ids. */
  async removeImage(ref: string): Promise<{ image: string; layers: string[] }> {
    const rec = await this.resolveImage(ref);
    return this.store.withWriteLock(`image rm ${ref}`, async () => {
      await this.store.removeImage(rec.id);
      await this.index.delImage(rec.id);
      const removed: string[] = [];
      const sharedUsed = await this.layersUsedBySharedImages();
      for (const id of [...rec.layers].reverse()) {
        const users = await this.layerUsers(id);
        if (users.images.length || users.children.length || sharedUsed.has(id)) break;
        await this.store.removeROLayer(id);
        await this.index.delLayer(id);
        removed.push(id);
      }
      return { image: rec.id, layers: removed };
    });
  }

  /**
   * Layers used by the image records on the shared store. Another writer host may have imported
   * images this host's index does not know; call with the writer lock held.
   */
  private async layersUsedBySharedImages(): Promise<Set<string>> {
    const used = new Set<string>();
    for (const id of (await this.store.listSharedIds('overlay-images')).ids) {
      for (const l of (await this.store.readSharedImage(id))?.layers ?? []) used.add(l);
    }
    return used;
  }

  // ---- layers
  async listLayers(): Promise<IndexedLayer[]> {
    return (await this.index.listLayers()).sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  async resolveLayer(ref: string): Promise<IndexedLayer> {
    const prefix = idPrefix(ref);
    if (prefix) {
      const exact = await this.index.getLayer(prefix);
      if (exact) return exact;
      const hits = (await this.index.listLayers()).filter((l) => l.id.startsWith(prefix));
      if (hits.length === 1) return hits[0]!;
      if (hits.length > 1) throw new LayerfsError('EUSAGE', `layer ${ref}`, `ambiguous: matches ${hits.length} layers`);
    }
    const byName = (await this.index.listLayers()).find((l) => l.name === ref);
    if (byName) return byName;
    throw new LayerfsError('ELAYERNOTFOUND', `layer ${ref}`, 'no such layer');
  }

  async layerUsers(id: string): Promise<LayerUsers> {
    const images = (await this.index.listImages()).filter((i) => i.layers.includes(id)).map((i) => i.names[0] ?? i.id);
    const children = (await this.index.listLayers()).filter((l) => l.parent === id).map((l) => l.id);
    return { images, children };
  }

  /** Fail with EINUSE naming the users of a layer, if any. */
  async assertLayerUnused(id: string): Promise<void> {
    const u = await this.layerUsers(id);
    const who = [...u.images.map((i) => `image ${i}`), ...u.children.map((c) => `layer ${c}`)];
    if (who.length) throw new LayerfsError('EINUSE', `layer ${id}`, `still used by ${who.join(', ')}`);
  }

  /** Remove an RO layer that nothing uses (RW layers are removed by their driver). */
  async removeROLayer(ref: string): Promise<string> {
    const rec = await this.resolveLayer(ref);
    if (rec.rw) throw new LayerfsError('EUSAGE', `layer ${rec.id}`, 'is an RW layer: remove it with `layerfs umount --rm` or its driver');
    await this.assertLayerUnused(rec.id);
    await this.store.withWriteLock(`layer rm ${rec.id}`, async () => {
      if ((await this.layersUsedBySharedImages()).has(rec.id)) throw new LayerfsError('EINUSE', `layer ${rec.id}`, 'still used by an image on the shared store');
      await this.store.removeROLayer(rec.id);
      await this.index.delLayer(rec.id);
    });
    return rec.id;
  }

  /** `layer create --tar TAR [--parent ID]`: a new RO layer from a tar file. */
  async createLayerFromTar(tar: string, parentRef?: string): Promise<{ layer: LayerRecord; created: boolean }> {
    const parent = parentRef ? await this.resolveLayer(parentRef) : null;
    if (parent?.rw) throw new LayerfsError('EUSAGE', `layer ${parent.id}`, 'an RO layer cannot have an RW parent');
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
    const d = await selectDriver(name, this.store, this.index);
    await d.init();
    return d;
  }

  /**
   * `layerfs mount REF MNT`: a new RW layer on top of image REF mounted at MNT (or, with `ro`, a
   * read-only merged view of the image). Returns the RW layer id (ro: the image's top layer).
   */
  async mountImage(ref: string, target: string, opts: { driver?: DriverName; ro?: boolean; quota?: number; name?: string } = {}): Promise<{ layer: string; mountpoint: string; driver: string }> {
    const img = await this.resolveImage(ref);
    await this.cleanStaleMounts();
    const d = await this.driver(opts.driver);
    if (opts.ro) {
      if (opts.quota !== undefined) throw new LayerfsError('EQUOTA', `image ${ref}`, 'a read-only mount takes no quota (RO layers never do)');
      if (!img.topLayer) throw new LayerfsError('EMOUNT', `image ${ref}`, 'has no layers to show');
      const mountpoint = await d.mountRO(img.topLayer, target);
      return { layer: img.topLayer, mountpoint, driver: d.name };
    }
    const id = randomBytes(32).toString('hex');
    await d.createRW(id, img.topLayer, { ...(opts.quota !== undefined ? { quota: opts.quota } : {}), ...(opts.name ? { name: opts.name } : {}) });
    try {
      const mountpoint = await d.mount(id, { target });
      return { layer: id, mountpoint, driver: d.name };
    } catch (err) {
      await d.remove(id).catch(() => undefined);
      throw err;
    }
  }

  /** `layerfs layer mount ID MNT`: a read-only view of one RO layer alone. */
  async mountLayer(ref: string, target: string, driver: DriverName = 'auto'): Promise<string> {
    const rec = await this.resolveLayer(ref);
    const d = await this.driver(driver);
    return d.mountLayerAlone(rec.id, target);
  }

  /** `layerfs umount MNT [--rm]`. */
  async umount(target: string, opts: { rm?: boolean; force?: boolean } = {}): Promise<{ layer: string; removed: boolean }> {
    const abs = path.resolve(target);
    const rec = await this.index.getMount(abs);
    if (!rec) throw new LayerfsError('EMOUNT', abs, 'not a layerfs mount');
    const d = driverFor(rec.driver, this.store, this.index);
    await d.unmount(abs, { force: opts.force || opts.rm });
    let removed = false;
    if (opts.rm && rec.rw) {
      await d.remove(rec.layer);
      removed = true;
    }
    return { layer: rec.layer, removed };
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
    const d = driverFor(m?.driver ?? 'overlay', this.store, this.index);
    return { ...(await d.metadata(rec.id)), layer: rec.id, driver: m?.driver ?? null, mounted: !!m };
  }

  /** What an RW layer changed, as an OCI layer tar stream. */
  async layerDiff(ref: string): Promise<Readable> {
    const rec = await this.rwLayerOf(ref);
    if (!rec.rw) throw new LayerfsError('EUSAGE', `layer ${rec.id}`, 'is an RO layer: only RW layers have a diff to export');
    return driverFor('overlay', this.store, this.index).diff(rec.id);
  }

  /**
   * `layerfs commit MNT|ID --name REF`: the RW layer's changes become a new RO layer (by chainID)
   * and a new image whose config extends the parent image's.
   */
  async commit(ref: string, names: string[]): Promise<ImageRecord> {
    const rw = await this.rwLayerOf(ref);
    if (!rw.rw) throw new LayerfsError('EUSAGE', `layer ${rw.id}`, 'is an RO layer: commit takes an RW layer or its mount point');
    const base = rw.parent ? (await this.index.listImages()).find((i) => i.topLayer === rw.parent) : undefined;
    const baseConfig = base ? JSON.parse((await this.store.readImageBlob(base.id, 'config')).toString('utf8')) : { architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] } };
    return this.store.withWriteLock(`commit ${rw.id}`, async () => {
      const { layer } = await addROLayer(this.store, this.index, { parent: rw.parent, open: () => driverFor('overlay', this.store, this.index).diff(rw.id) });
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
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256Digest(configBuf), size: configBuf.length },
          layers: chain.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l.diffDigest, size: l.compressedSize ?? 0 })),
        }),
      );
      return publishImageOf(this.store, this.index, { config: configBuf, configDigest: sha256Digest(configBuf), manifest, layers: chain, names });
    });
  }

  /** FUSE mounts of ours whose server died (kill -9): unmounted, records dropped. Run at start of mount/status. */
  async cleanStaleMounts(): Promise<string[]> {
    try {
      return await (driverFor('fuse', this.store, this.index) as FuseDriver).cleanStale();
    } catch {
      return [];
    }
  }

  async status(): Promise<Record<string, unknown>> {
    const staleMountsRemoved = await this.cleanStaleMounts();
    const layers = await this.index.listLayers();
    const out: Record<string, unknown> = {
      root: this.store.root,
      shared: this.store.shared,
      role: this.store.role,
      images: (await this.index.listImages()).length,
      roLayers: layers.filter((l) => !l.rw).length,
      rwLayers: layers.filter((l) => l.rw).length,
      mounts: (await this.index.listMounts()).length,
      missingLayers: layers.filter((l) => l.missing).map((l) => l.id),
      ...(staleMountsRemoved.length ? { staleMountsRemoved } : {}),
    };
    try {
      out.defaultDriver = (await selectDriver('auto', this.store, this.index)).name;
      out.drivers = { overlay: await driverFor('overlay', this.store, this.index).status(), fuse: await driverFor('fuse', this.store, this.index).status() };
    } catch (err) {
      out.drivers = { error: (err as Error).message };
    }
    return out;
  }

}
