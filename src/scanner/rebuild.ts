import { access } from 'node:fs/promises';
import { IO_PARALLEL, mapLimit } from '../common/limit.js';
import { logger } from '../common/log.js';
import { STORE_META_KEY } from './scanner.js';
import type { Index, IndexedLayer, MountRecord, SnapshotRecord } from '../index/index.js';
import type { ImageRecord, LayerRecord, Store } from '../store/index.js';
import { imageLayersReady, layerDataPresent, readImageRecord, readLayerRecord, resolveLayerChains } from './readiness.js';

export interface StoreSnapshot {
  layers: Map<string, LayerRecord>;
  images: Map<string, ImageRecord>;
  /** Entries that are on the store but not usable yet (incomplete) or never (junk). */
  notReady: string[];
  junk: string[];
}

/**
 * Read what the store holds that is ready, in seed 000's order (overlay, overlay-layers,
 * overlay-images): a layer is ready when its layer.json parses, its data dir exists and its parent
 * is ready; an image when its record parses and all its layers are ready. RW layers are local.
 */
export async function readStore(store: Store): Promise<StoreSnapshot> {
  const notReady: string[] = [];
  const junk: string[] = [];
  const dataList = await store.listSharedIds('overlay');
  const dataIds = new Set(dataList.ids);
  junk.push(...dataList.junk.map((n) => `overlay/${n}`));
  const metaList = await store.listSharedIds('overlay-layers');
  junk.push(...metaList.junk.map((n) => `overlay-layers/${n}`));
  const candidates = new Map<string, LayerRecord>();
  // the records are read IO_PARALLEL at a time (one file read and one stat each), then judged in listing order
  const reads = await mapLimit(metaList.ids, IO_PARALLEL, async (id) => {
    const r = await readLayerRecord(store, id);
    return { id, r, data: r.kind === 'ok' && dataIds.has(id) && (await layerDataPresent(store, id)) };
  });
  for (const { id, r, data } of reads) {
    if (r.kind !== 'ok') {
      if (r.kind === 'bad') junk.push(`overlay-layers/${id} (${r.why})`);
      else notReady.push(`overlay-layers/${id}`);
      continue;
    }
    if (!data) {
      notReady.push(`overlay/${id}`);
      continue;
    }
    candidates.set(id, r.rec);
  }
  // parents first: a layer is ready only when its whole chain is (the rules are in src/scanner)
  const { ready, waiting } = resolveLayerChains(candidates, () => false);
  const layers = new Map<string, LayerRecord>(ready);
  for (const id of waiting) notReady.push(`overlay-layers/${id} (parent not ready)`);
  for (const id of await store.listLocalRWIds()) {
    const rec = await store.readLocalLayer(id);
    if (rec && rec.rw && rec.id === id) layers.set(id, rec);
    else junk.push(`local overlay-layers/${id}`);
  }
  const images = new Map<string, ImageRecord>();
  const imgList = await store.listSharedIds('overlay-images');
  junk.push(...imgList.junk.map((n) => `overlay-images/${n}`));
  const imgReads = await mapLimit(imgList.ids, IO_PARALLEL, async (id) => ({ id, r: await readImageRecord(store, id) }));
  for (const { id, r } of imgReads) {
    if (r.kind !== 'ok') {
      if (r.kind === 'bad') junk.push(`overlay-images/${id} (${r.why})`);
      else notReady.push(`overlay-images/${id}`);
      continue;
    }
    if (!imageLayersReady(r.rec, (l) => ready.has(l))) {
      notReady.push(`overlay-images/${id} (layers not ready)`);
      continue;
    }
    images.set(id, r.rec);
  }
  return { layers, images, notReady, junk };
}

/**
 * Before a new index is made (and built from the store): fail, making nothing, when the shared
 * store is not there. Call before `Index.open` creates the index dir.
 */
export async function checkStoreBeforeFirstBuild(store: Store): Promise<void> {
  const fresh = await access(store.indexDir).then(
    () => false,
    () => true,
  );
  if (fresh) await store.requireMarker('index');
}

/**
 * Rebuild the index from the disk; make (and prune) this host's RO symlinks to match. Fails,
 * changing nothing, when the shared store is not there (no marker); follows the store that is
 * (its storeId is remembered for the scanner's check). Mount records the index has are kept as they
 * are; those of this root's live mounts it lacks (a deleted index) are recovered from the mount table
 * (src/usage/mounttable.ts) and returned as `recoveredMounts`.
 */
export async function rebuildIndex(store: Store, index: Index): Promise<StoreSnapshot & { recoveredMounts: MountRecord[] }> {
  const marker = await store.requireMarker('index rebuild');
  const snap = await readStore(store);
  const old = new Map((await index.listLayers()).map((l) => [l.id, l] as const));
  await index.clear();
  await index.putMeta(STORE_META_KEY, { storeId: marker.storeId });
  // links first (IO_PARALLEL at a time), then the records in batched writes
  await store.linkLocalMany([...snap.layers.values()].filter((r) => !r.rw).map((r) => r.id), 'layer');
  await index.putLayers([...snap.layers.values()]);
  // RW layers whose RO parents vanished keep the parents listed, marked missing
  const missing = new Map<string, IndexedLayer>();
  for (const rec of snap.layers.values()) {
    let p = rec.parent;
    while (p && !snap.layers.has(p)) {
      const gone = old.get(p);
      if (!gone) break;
      missing.set(p, { ...gone, missing: true });
      p = gone.parent;
    }
  }
  await index.putLayers([...missing.values()]);
  await store.linkLocalMany([...snap.images.keys()], 'image');
  await index.putImages([...snap.images.values()]);
  // containerd snapshot records live as files in the root; the index only caches them
  for (const rec of await store.listSnapshotRecords<SnapshotRecord>()) await index.putSnapshot(rec);
  for (const id of await store.listLocalLinks('overlay-layers')) if (!snap.layers.has(id)) await store.unlinkLocal(id, 'layer');
  for (const id of await store.listLocalLinks('overlay-images')) if (!snap.images.has(id)) await store.unlinkLocal(id, 'image');
  if (snap.junk.length) logger().warn({ junk: snap.junk }, 'ignored entries that are not layerfs records');
  // after the layers and snapshots: a mount is told ours by its layers' chains and the snapshotter's records
  const { recoverMountRecords } = await import('../usage/mounttable.js'); // the mount table, the FUSE servers: only here
  const recoveredMounts = await recoverMountRecords(store, index);
  for (const rec of recoveredMounts) await index.putMount(rec);
  return { ...snap, recoveredMounts };
}
