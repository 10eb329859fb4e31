import type { Readable } from 'node:stream';
import { applyLayer, type ApplyResult } from '../archive/index.js';
import { applyLayerThreaded } from '../archive/apply-thread.js';
import { LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import type { Index } from '../index/index.js';
import type { ImageRecord, LayerRecord, Store } from '../store/index.js';
import { chainIds, hexOf, sha256Digest } from './digest.js';
import { normalizeName } from './refs.js';
import { configDiffIds, openImageSource } from './source.js';
import { Semaphore, type PullEvent } from './registry/pull.js';

/** Layers of one image applied at once by an import (env LAYERFS_IMPORT_PARALLEL; 1 = one after the other). */
const IMPORT_PARALLEL = Math.max(1, Number(process.env.LAYERFS_IMPORT_PARALLEL) || 3);
/** Apply on worker threads when several layers are applied at once (env LAYERFS_APPLY_THREADS=0: on the main thread). */
const THREADS = process.env.LAYERFS_APPLY_THREADS !== '0';

export interface AddLayerInput {
  parent: string | null;
  open: () => Readable;
  /** Known diff id (from the image config): lets an existing layer be reused without reading the tar. */
  diffDigest?: string;
  compressedDigest?: string;
  /** What errors name the layer by (default: its digest). */
  label?: string;
  onBytes?: (n: number) => void;
}

/**
 * Add one RO layer to the shared store: reuse it when its chainID is already there, else apply the
 * tar into a staged dir, verify digests, and publish. Call with the writer lock held.
 */
export async function addROLayer(store: Store, index: Index, input: AddLayerInput): Promise<{ layer: LayerRecord; created: boolean }> {
  const parentRec = input.parent ? await store.readSharedLayer(input.parent) : null;
  if (input.parent && !parentRec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${input.parent}`, 'parent layer is not in the shared store');
  const chainOf = (diff: string) => (parentRec ? chainIds([`sha256:${parentRec.id}`, diff])[1]! : diff);
  if (input.diffDigest) {
    const id = hexOf(chainOf(input.diffDigest));
    const existing = await store.readSharedLayer(id);
    if (existing && (await store.roLayerComplete(id))) {
      await store.linkLocal(id, 'layer');
      await index.putLayer(existing);
      return { layer: existing, created: false };
    }
  }
  const tmp = await store.stageLayer();
  try {
    const res = await applyLayer(input.open(), `${tmp}/diff`, {
      ...(input.diffDigest ? { expectDiffDigest: input.diffDigest } : {}),
      ...(input.compressedDigest ? { expectCompressedDigest: input.compressedDigest } : {}),
      label: input.label ?? `layer ${input.compressedDigest ?? input.diffDigest ?? '(tar)'}`,
      ...(input.onBytes ? { onBytes: input.onBytes } : {}),
    });
    return await publishApplied(store, index, tmp, hexOf(chainOf(res.diffDigest)), parentRec ? parentRec.id : null, res);
  } catch (err) {
    await store.discardStaged(tmp).catch(() => undefined);
    throw err;
  }
}

/**
 * Publish a staged, applied layer as `id` (its chainID) and record it in the index. When another
 * import published the same layer first, the stored record wins and `created` is false.
 */
export async function publishApplied(
  store: Store,
  index: Index,
  tmp: string,
  id: string,
  parent: string | null,
  res: ApplyResult,
): Promise<{ layer: LayerRecord; created: boolean }> {
  const rec: LayerRecord = {
    id,
    parent,
    diffDigest: res.diffDigest,
    compressedDigest: res.compressedDigest,
    size: res.size,
    compressedSize: res.compressedSize,
    ...(res.compression !== 'none' ? { compression: res.compression } : {}),
    rw: false,
    created: new Date().toISOString(),
  };
  const created = await store.publishLayer(tmp, rec);
  const stored = created ? rec : ((await store.readSharedLayer(rec.id)) ?? rec);
  await index.putLayer(stored);
  return { layer: stored, created };
}

/** The OCI media type of a layer blob compressed with c. */
export function layerMediaType(c: LayerRecord['compression']): string {
  return c === 'gzip' ? 'application/vnd.oci.image.layer.v1.tar+gzip' : c === 'zstd' ? 'application/vnd.oci.image.layer.v1.tar+zstd' : 'application/vnd.oci.image.layer.v1.tar';
}

export interface ImportResult {
  image: ImageRecord;
  /** Per layer: whether it was extracted now (false: already in the store). */
  extracted: boolean[];
}

/** Import an OCI layout dir, OCI archive or docker-save archive into the shared store. */
export async function importImage(store: Store, index: Index, input: string, names: string[], onProgress?: (ev: PullEvent) => void): Promise<ImportResult> {
  const emit = onProgress ?? (() => undefined);
  for (const n of names) normalizeName(n); // a bad --name fails before any work
  return store.withWriteLock(`image import ${input}`, async () => {
    const src = await openImageSource(input, store.sharedPath('overlay'));
    try {
      const diffIds = configDiffIds(src.config);
      if (diffIds.length !== src.layers.length) {
        throw new LayerfsError('EBADIMAGE', input, `config lists ${diffIds.length} diff ids but the manifest has ${src.layers.length} layers`);
      }
      // Layers are applied in parallel, each into its own staging dir (IMPORT_PARALLEL at once), and
      // published bottom-up as before: a layer's parent is always published first.
      const n = src.layers.length;
      const chain = chainIds(diffIds).map(hexOf);
      const records: (LayerRecord | null)[] = new Array<LayerRecord | null>(n).fill(null);
      const extracted: boolean[] = new Array<boolean>(n).fill(false);
      const label = (i: number) => src.layers[i]!.digest ?? diffIds[i]!;
      for (let i = 0; i < n; i++) {
        const existing = await store.readSharedLayer(chain[i]!);
        if (existing && (await store.roLayerComplete(chain[i]!))) {
          await store.linkLocal(chain[i]!, 'layer');
          await index.putLayer(existing);
          records[i] = existing;
        }
      }
      emit({ type: 'resolved', name: input, manifestDigest: src.manifest ? sha256Digest(src.manifest) : '', layers: src.layers.map((l, i) => ({ digest: label(i), size: l.size ?? -1, exists: records[i] !== null })) });
      records.forEach((r, i) => r && emit({ type: 'layer', index: i, digest: label(i), state: 'exists', bytes: 0, total: src.layers[i]!.size ?? -1 }));
      const toApply = records.filter((r) => r === null).length;
      const sem = new Semaphore(IMPORT_PARALLEL);
      let firstErr: unknown = null;
      let failedAt = Infinity; // the lowest layer that failed: layers above it are not applied or published
      const task = async (i: number, prev: Promise<void>): Promise<void> => {
        const l = src.layers[i]!;
        const total = l.size ?? -1;
        let bytes = 0;
        let shown = 0;
        let tmp: string | null = null;
        try {
          let res: ApplyResult;
          await sem.acquire();
          try {
            if (i > failedAt) throw firstErr;
            tmp = await store.stageLayer();
            emit({ type: 'layer', index: i, digest: label(i), state: 'applying', bytes: 0, total });
            // several layers to apply: each on its own thread, so their tar parsing runs on several cores
            res = await (toApply > 1 && THREADS ? applyLayerThreaded : applyLayer)(l.open(), `${tmp}/diff`, {
              expectDiffDigest: diffIds[i]!,
              ...(l.digest ? { expectCompressedDigest: l.digest } : {}),
              label: `layer ${label(i)}`,
              onBytes: (b) => {
                bytes = b;
                if (b - shown >= 256 << 10) {
                  shown = b;
                  emit({ type: 'layer', index: i, digest: label(i), state: 'applying', bytes: b, total });
                }
              },
            });
          } finally {
            sem.release();
          }
          // publish bottom-up: the parent first (a layer below a failed one is still published, as
          // one after the other did: a re-run reuses it)
          await prev;
          const { layer, created } = await publishApplied(store, index, tmp!, chain[i]!, i ? chain[i - 1]! : null, res);
          tmp = null;
          records[i] = layer;
          extracted[i] = created;
          emit({ type: 'layer', index: i, digest: label(i), state: created ? 'done' : 'exists', bytes, total: total >= 0 ? total : bytes });
          logger().info({ layer: layer.id, created }, created ? 'layer extracted' : 'layer already in store');
        } catch (err) {
          if (i < failedAt && (firstErr === null || err !== firstErr)) {
            failedAt = i;
            firstErr = err;
            emit({ type: 'layer', index: i, digest: label(i), state: 'failed', bytes, total });
          }
          throw err;
        } finally {
          if (tmp) await store.discardStaged(tmp).catch(() => undefined);
        }
      };
      const published: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        const prev = i > 0 ? published[i - 1]! : Promise.resolve();
        const p = records[i] ? prev : task(i, prev);
        p.catch(() => undefined); // handled: awaited below and by the next layer
        published.push(p);
      }
      await Promise.allSettled(published);
      if (firstErr !== null) throw firstErr;
      const layers = records as LayerRecord[];
      // docker-save has no manifest: synthesize the OCI one the layers would have had
      const manifest =
        src.manifest ??
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: src.configDigest, size: src.config.length },
            layers: layers.map((l) => ({ mediaType: layerMediaType(l.compression), digest: l.compressedDigest, size: l.compressedSize ?? 0 })),
          }),
        );
      const image = await publishImageOf(store, index, { config: src.config, configDigest: src.configDigest, manifest, layers, names: names.length ? names : src.names });
      return { image, extracted };
    } finally {
      await src.close();
    }
  });
}

/**
 * Write an image record for `layers` (bottom first) last, after its layers: names are added to an
 * existing record of the same config, and move away from any other image that held them.
 */
export async function publishImageOf(
  store: Store,
  index: Index,
  p: { config: Buffer; configDigest: string; manifest: Buffer; layers: LayerRecord[]; names: string[] },
): Promise<ImageRecord> {
  const id = hexOf(p.configDigest);
  const wanted = [...new Set(p.names.map(normalizeName))];
  const old = await store.readSharedImage(id);
  const rec: ImageRecord = {
    id,
    names: [...new Set([...(old?.names ?? []), ...wanted])],
    layers: p.layers.map((l) => l.id),
    topLayer: p.layers.length ? p.layers[p.layers.length - 1]!.id : null,
    manifestDigest: sha256Digest(p.manifest),
    configDigest: p.configDigest,
    size: p.layers.reduce((a, l) => a + l.size, 0),
    created: old?.created ?? new Date().toISOString(),
  };
  await moveNames(store, index, wanted, id);
  await store.publishImage(rec, p.manifest, p.config);
  await index.putImage(rec);
  return rec;
}

/** A name moves to the image that takes it (docker tag semantics): drop it from its old holder. */
export async function moveNames(store: Store, index: Index, names: string[], to: string): Promise<void> {
  for (const n of names) {
    const holder = await index.imageIdByName(n);
    if (!holder || holder === to) continue;
    const rec = await store.readSharedImage(holder);
    if (!rec) continue;
    rec.names = rec.names.filter((x) => x !== n);
    await store.publishImage(rec, await store.readImageBlob(holder, 'manifest'), await store.readImageBlob(holder, 'config'));
    await index.putImage(rec);
  }
}
