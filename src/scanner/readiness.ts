/**
 * The readiness rules (DESIGN.md "Publication and readiness"), shared by the full read of the store
 * (`readStore`, `rebuildIndex`) and the incremental scanner:
 *  - a layer is ready when its layer.json parses (and names itself, RO), its data dir exists and its
 *    parent is ready;
 *  - an image is ready when its record parses (and names itself) and all its layers are ready.
 * What is not ready yet is retried later; what can never be ready (does not parse) is "bad".
 */
import { readFile, stat } from 'node:fs';
import { promisify } from 'node:util';
import { isErrno } from '../common/errors.js';
import { type ImageRecord, type LayerRecord, type Store, parseImageRecord, parseLayerRecord } from '../store/index.js';

// the callback API, not fs/promises: a record read is 4 syscalls on the pool either way, but without FileHandle
// objects and their promise chain; thousands of them (a first scan, an index build) take about half the time
const readFileCb = promisify(readFile) as (file: string, enc: 'utf8') => Promise<string>;
export const statCb = promisify(stat);

/** I/O counters, so the bench (and a curious operator) can see what a scan cost. */
export interface IoCounters {
  readdirs: number;
  stats: number;
  filesRead: number;
}

export const newCounters = (): IoCounters => ({ readdirs: 0, stats: 0, filesRead: 0 });

export type RecordRead<T> = { kind: 'ok'; rec: T } | { kind: 'absent' } | { kind: 'bad'; why: string };

async function readRecord<T>(file: string, parse: (t: string) => T | null, io?: IoCounters): Promise<RecordRead<T>> {
  let text: string;
  try {
    if (io) io.filesRead++;
    text = await readFileCb(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return { kind: 'absent' };
    if (isErrno(err, 'EISDIR')) return { kind: 'bad', why: 'is a directory' };
    throw err;
  }
  const rec = parse(text);
  return rec ? { kind: 'ok', rec } : { kind: 'bad', why: 'does not parse as a layerfs record' };
}

/** Read `<shared>/overlay-layers/<id>/layer.json` and check it names this RO layer. */
export async function readLayerRecord(store: Store, id: string, io?: IoCounters): Promise<RecordRead<LayerRecord>> {
  const r = await readRecord(store.sharedPath('overlay-layers', id, 'layer.json'), parseLayerRecord, io);
  if (r.kind !== 'ok') return r;
  if (r.rec.id !== id) return { kind: 'bad', why: `layer.json names another layer (${r.rec.id})` };
  if (r.rec.rw) return { kind: 'bad', why: 'an RW layer record on the shared store' };
  return r;
}

/** Read `<shared>/overlay-images/<id>/image.json` and check it names this image. */
export async function readImageRecord(store: Store, id: string, io?: IoCounters): Promise<RecordRead<ImageRecord>> {
  const r = await readRecord(store.sharedPath('overlay-images', id, 'image.json'), parseImageRecord, io);
  if (r.kind !== 'ok') return r;
  if (r.rec.id !== id) return { kind: 'bad', why: `image.json names another image (${r.rec.id})` };
  return r;
}

/** The layer's data dir (`<shared>/overlay/<id>/diff`) exists. */
export async function layerDataPresent(store: Store, id: string, io?: IoCounters): Promise<boolean> {
  try {
    if (io) io.stats++;
    return (await statCb(store.sharedPath('overlay', id, 'diff'))).isDirectory();
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return false;
    throw err;
  }
}

/**
 * Given complete candidates (record parsed, data present), the ones whose parent chain is ready:
 * a parent is ready when `isReady(parent)` (already known) or it is itself a ready candidate.
 */
export function resolveLayerChains(candidates: Map<string, LayerRecord>, isReady: (id: string) => boolean): { ready: Map<string, LayerRecord>; waiting: string[] } {
  const ready = new Map<string, LayerRecord>();
  const failed = new Set<string>();
  const check = (id: string, depth: number): boolean => {
    if (ready.has(id)) return true;
    if (failed.has(id)) return false;
    const rec = candidates.get(id);
    if (!rec || depth > 1000) return false;
    const ok = rec.parent === null || isReady(rec.parent) || check(rec.parent, depth + 1);
    if (ok) ready.set(id, rec);
    else failed.add(id);
    return ok;
  };
  const waiting: string[] = [];
  for (const id of candidates.keys()) if (!check(id, 0)) waiting.push(id);
  return { ready, waiting };
}

/** An image is ready when every one of its layers is. */
export function imageLayersReady(rec: ImageRecord, isLayerReady: (id: string) => boolean): boolean {
  return rec.layers.every(isLayerReady);
}
