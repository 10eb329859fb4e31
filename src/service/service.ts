import { createReadStream } from 'node:fs';
import { LayerfsError } from '../common/errors.js';
import { Index, type IndexedLayer } from '../index/index.js';
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

  async rebuildIndex(): Promise<StoreSnapshot> {
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
      for (const id of [...rec.layers].reverse()) {
        const users = await this.layerUsers(id);
        if (users.images.length || users.children.length) break;
        await this.store.removeROLayer(id);
        await this.index.delLayer(id);
        removed.push(id);
      }
      return { image: rec.id, layers: removed };
    });
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

  async status(): Promise<Record<string, unknown>> {
    const layers = await this.index.listLayers();
    return {
      root: this.store.root,
      shared: this.store.shared,
      role: this.store.role,
      images: (await this.index.listImages()).length,
      roLayers: layers.filter((l) => !l.rw).length,
      rwLayers: layers.filter((l) => l.rw).length,
      missingLayers: layers.filter((l) => l.missing).map((l) => l.id),
    };
  }
}
