/**
 * `image pull`: resolve a reference on a registry to the host platform's manifest, fetch the
 * config (so the diff ids, hence the chainIDs, are known before any layer), skip layers the store
 * already has, and stream the others from the registry straight into the layer applier.
 *
 * Two ways to apply (measured in scripts/bench-pull.sh):
 *  - 'parallel' (default): up to `maxConnections` layers download and apply at once, each into its
 *    own staged dir; they are published strictly bottom-up (a layer only after its parent), so the
 *    store never shows a layer whose parent is missing.
 *  - 'ordered': one layer at a time through addROLayer (download and apply of a layer overlap, the
 *    layers do not).
 * Either way a failure aborts every other download, discards every staged dir, and writes no image
 * record; layers published before the failure are complete and are reused by the next run.
 */
import type { IncomingMessage } from 'node:http';
import { Transform, pipeline } from 'node:stream';
import { applyLayer, type ApplyResult } from '../../archive/index.js';
import { LayerfsError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import type { Index } from '../../index/index.js';
import type { ImageRecord, LayerRecord, Store } from '../../store/index.js';
import { chainIds, checkDigest, hexOf } from '../digest.js';
import { addROLayer, publishApplied, publishImageOf } from '../import.js';
import { MT_INDEX, choosePlatform, configDiffIds, type Descriptor } from '../source.js';
import { dockerConfigCreds, parseCreds, type Credentials } from './auth.js';
import { RegistryClient } from './client.js';
import { parseRef, type ImageRef } from './reference.js';

export type PullMode = 'parallel' | 'ordered';

export interface PullOptions {
  /** Plain HTTP (default HTTPS). */
  insecure?: boolean;
  /** `user:pass` or parsed credentials; default: docker config.json for the registry, else none. */
  creds?: string | Credentials | null;
  /** Connections to the registry, and layers applied at once in 'parallel' mode (default 3). */
  maxConnections?: number;
  mode?: PullMode;
  /** Extra names for the image (the reference itself is always one). */
  names?: string[];
  onProgress?: (ev: PullEvent) => void;
}

export interface PullLayerInfo {
  digest: string;
  size: number;
  exists: boolean;
}

export type PullEvent =
  | { type: 'resolved'; name: string; manifestDigest: string; layers: PullLayerInfo[] }
  | { type: 'layer'; index: number; digest: string; state: 'exists' | 'downloading' | 'applying' | 'done' | 'failed'; bytes: number; total: number };

export interface PullResult {
  image: ImageRecord;
  ref: ImageRef;
  /** Per layer: downloaded and extracted now (false: it was already in the store). */
  fetched: boolean[];
  /** Layer bytes downloaded. */
  bytes: number;
}

interface Manifest {
  mediaType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
}

/** At most n holders at once (FIFO). */
export class Semaphore {
  private waiters: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiters.push(r));
  }
  release(): void {
    const w = this.waiters.shift();
    if (w) w();
    else this.free++;
  }
}

function parseManifest(body: Buffer, what: string): Manifest {
  try {
    return JSON.parse(body.toString('utf8')) as Manifest;
  } catch {
    throw new LayerfsError('EBADIMAGE', what, 'not valid JSON');
  }
}

/** Resolve tag/digest -> (index ->)* the host platform's manifest. */
async function resolveManifest(client: RegistryClient, ref: ImageRef): Promise<{ body: Buffer; digest: string; doc: Manifest }> {
  let m = await client.getManifest(ref.reference);
  for (let depth = 0; depth < 4; depth++) {
    const doc = parseManifest(m.body, `manifest ${m.digest}`);
    if (MT_INDEX.includes(m.mediaType) || (Array.isArray(doc.manifests) && !doc.layers)) {
      const d = choosePlatform(doc.manifests ?? [], `image index ${ref.name} (${m.digest})`);
      checkDigest(d.digest, `image index ${m.digest}`);
      logger().debug({ digest: d.digest, platform: d.platform }, 'chose a platform manifest');
      m = await client.getManifest(d.digest);
      continue;
    }
    if (!doc.config || !Array.isArray(doc.layers)) throw new LayerfsError('EBADIMAGE', `manifest ${m.digest}`, 'has no config or layers');
    return { body: m.body, digest: m.digest, doc };
  }
  throw new LayerfsError('EBADIMAGE', ref.name, 'image index nested too deeply');
}

/** Pull `refStr` into the shared store; returns the image record. Takes the writer lock for the layer phase only. */
export async function pullImage(store: Store, index: Index, refStr: string, opts: PullOptions = {}): Promise<PullResult> {
  const ref = parseRef(refStr);
  const creds = typeof opts.creds === 'string' ? parseCreds(opts.creds) : opts.creds === undefined ? await dockerConfigCreds(ref.registry) : opts.creds;
  const maxConnections = Math.max(1, opts.maxConnections ?? 3);
  const mode: PullMode = opts.mode ?? 'parallel';
  const emit = opts.onProgress ?? (() => undefined);
  const client = new RegistryClient(ref, { insecure: opts.insecure ?? false, creds, maxConnections });
  try {
    const man = await resolveManifest(client, ref);
    const configDigest = checkDigest(man.doc.config!.digest, `manifest ${man.digest} config`);
    const config = await client.readBlob(configDigest, 'image config');
    const diffIds = configDiffIds(config);
    const descs = man.doc.layers!.map((l, i) => ({ digest: checkDigest(l.digest, `manifest ${man.digest} layer ${i}`), size: typeof l.size === 'number' ? l.size : -1, mediaType: l.mediaType ?? '' }));
    if (diffIds.length !== descs.length) {
      throw new LayerfsError('EBADIMAGE', ref.name, `config lists ${diffIds.length} diff ids but the manifest has ${descs.length} layers`);
    }
    for (const d of descs) {
      if (/encrypted/.test(d.mediaType)) throw new LayerfsError('EBADIMAGE', `layer ${d.digest}`, `media type ${d.mediaType} is not supported (encrypted layers)`);
    }
    const chain = chainIds(diffIds).map(hexOf);

    return await store.withWriteLock(`image pull ${ref.name}`, async () => {
      const n = descs.length;
      const records: (LayerRecord | null)[] = new Array<LayerRecord | null>(n).fill(null);
      const fetched: boolean[] = new Array<boolean>(n).fill(false);
      for (let i = 0; i < n; i++) {
        if (!(await store.roLayerComplete(chain[i]!))) continue;
        const rec = await store.readSharedLayer(chain[i]!);
        if (!rec) continue;
        await store.linkLocal(rec.id, 'layer');
        await index.putLayer(rec);
        records[i] = rec;
      }
      emit({ type: 'resolved', name: ref.name, manifestDigest: man.digest, layers: descs.map((d, i) => ({ digest: d.digest, size: d.size, exists: records[i] !== null })) });
      records.forEach((r, i) => r && emit({ type: 'layer', index: i, digest: descs[i]!.digest, state: 'exists', bytes: 0, total: descs[i]!.size }));

      const ac = new AbortController();
      let firstErr: unknown = null;
      const fail = (err: unknown) => {
        if (firstErr === null) {
          firstErr = err;
          ac.abort();
        }
      };
      let downloaded = 0;

      /** Open layer i's blob and hand the counted, size-limited stream to `use`; errors name the blob. */
      const withBlob = async <T>(i: number, use: (s: NodeJS.ReadableStream & import('node:stream').Readable) => Promise<T>): Promise<T> => {
        const d = descs[i]!;
        const what = `layer ${i + 1}/${n} blob ${d.digest}`;
        let res: IncomingMessage | null = null;
        let bytes = 0;
        let last = 0;
        try {
          if (ac.signal.aborted) throw new LayerfsError('EREGISTRY', what, 'pull aborted');
          emit({ type: 'layer', index: i, digest: d.digest, state: 'downloading', bytes: 0, total: d.size });
          res = await client.openBlob(d.digest, what, ac.signal);
          const counter = new Transform({
            highWaterMark: 1 << 20,
            transform(chunk: Buffer, _enc, cb) {
              bytes += chunk.length;
              downloaded += chunk.length;
              if (d.size >= 0 && bytes > d.size) return cb(new Error(`the registry sent more than the ${d.size} bytes the manifest gives`));
              if (bytes - last >= 256 << 10) {
                last = bytes;
                emit({ type: 'layer', index: i, digest: d.digest, state: 'downloading', bytes, total: d.size });
              }
              cb(null, chunk);
            },
          });
          pipeline(res, counter, () => undefined);
          const out = await use(counter);
          emit({ type: 'layer', index: i, digest: d.digest, state: 'done', bytes, total: d.size });
          return out;
        } catch (err) {
          emit({ type: 'layer', index: i, digest: d.digest, state: 'failed', bytes, total: d.size });
          if (firstErr !== null || (err as Error).name === 'AbortError') throw err;
          if (res && !res.complete && !(err instanceof LayerfsError && err.code === 'EDIGEST')) {
            const cause = err instanceof LayerfsError ? err.message : (err as Error).message;
            throw new LayerfsError('EREGISTRY', what, `download interrupted after ${bytes} of ${d.size} bytes (${cause})`, { cause: err });
          }
          if (err instanceof LayerfsError) {
            if (err.what.startsWith(`layer ${i + 1}/`)) throw err;
            throw new LayerfsError(err.code, what, err.message, { cause: err });
          }
          throw new LayerfsError('EREGISTRY', what, (err as Error).message, { cause: err });
        } finally {
          res?.destroy();
        }
      };

      if (mode === 'ordered') {
        for (let i = 0; i < n; i++) {
          if (records[i]) continue;
          const { layer, created } = await withBlob(i, (s) =>
            addROLayer(store, index, { parent: i ? chain[i - 1]! : null, open: () => s, diffDigest: diffIds[i]!, compressedDigest: descs[i]!.digest }),
          );
          records[i] = layer;
          fetched[i] = created;
        }
      } else {
        const sem = new Semaphore(maxConnections);
        const published: Promise<void>[] = [];
        const task = async (i: number, prev: Promise<void>): Promise<void> => {
          let tmp: string | null = null;
          try {
            let res: ApplyResult;
            await sem.acquire();
            try {
              if (ac.signal.aborted) throw new Error('aborted');
              tmp = await store.stageLayer();
              const diffDir = `${tmp}/diff`;
              res = await withBlob(i, (s) => applyLayer(s, diffDir, { expectDiffDigest: diffIds[i]!, expectCompressedDigest: descs[i]!.digest }));
            } finally {
              sem.release();
            }
            await prev; // publish bottom-up: the parent first
            if (ac.signal.aborted) throw new Error('aborted');
            const { layer: stored, created } = await publishApplied(store, index, tmp!, chain[i]!, i ? chain[i - 1]! : null, res);
            tmp = null;
            records[i] = stored;
            fetched[i] = created;
          } catch (err) {
            fail(err);
            throw err;
          } finally {
            if (tmp) await store.discardStaged(tmp).catch(() => undefined);
          }
        };
        for (let i = 0; i < n; i++) {
          const prev = i > 0 ? published[i - 1]! : Promise.resolve();
          const p = records[i] ? prev : task(i, prev);
          p.catch(() => undefined); // handled: awaited below and by the next layer
          published.push(p);
        }
        await Promise.allSettled(published);
        if (firstErr !== null) throw firstErr;
      }
      if (firstErr !== null) throw firstErr;

      const layers = records as LayerRecord[];
      const rec = await publishImageOf(store, index, { config, configDigest, manifest: man.body, layers, names: [ref.name, ...(opts.names ?? [])] });
      return { image: rec, ref, fetched, bytes: downloaded };
    });
  } finally {
    client.close();
  }
}
