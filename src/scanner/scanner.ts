/**
 * The periodic refresh of a reader host (seed 000's refresh thread): scan the shared `overlay/`,
 * `overlay-layers/` and `overlay-images/` dirs in that order, diff the ids found with what this host
 * knows (its index), add what became ready, drop what left the store.
 *
 * What a scan costs: one stat per kind dir. A kind dir is listed again only when its mtime moved,
 * or once more after a change was first seen (a change in the same timestamp tick as our listing
 * would not move the mtime again; one confirming listing a full interval later closes that gap).
 * Records are read only for ids not known yet and for ids still waiting to be ready; a known image
 * is re-read only when its own dir changed (the writer renames a new image.json into it). So a scan
 * of an unchanged store does no per-layer I/O at all.
 *
 * State kept in the index's `meta` sublevel under `scanner`: the kind dirs' mtimes, the waiting
 * (not ready) ids, the image dir mtimes, the layers kept as missing, and the bad entries already
 * warned about (one warning per bad entry, not one per scan).
 */
import { readdir } from 'node:fs/promises';
import { LayerfsError, isErrno } from '../common/errors.js';
import { IO_PARALLEL, mapLimit } from '../common/limit.js';
import { logger } from '../common/log.js';
import type { Index, IndexedLayer } from '../index/index.js';
import { type ImageRecord, type LayerRecord, type Store, isLayerId } from '../store/index.js';
import { type IoCounters, imageLayersReady, layerDataPresent, newCounters, readImageRecord, readLayerRecord, resolveLayerChains, statCb } from './readiness.js';

const KINDS = ['overlay', 'overlay-layers', 'overlay-images'] as const;
type Kind = (typeof KINDS)[number];

export const SCANNER_STATE_KEY = 'scanner';
/** Index meta: `{ storeId }` of the store this index was built from (set by a rebuild or the first scan). */
export const STORE_META_KEY = 'store';

/**
 * Before a scan or rebuild changes anything: the shared store must be there (its marker: an empty
 * dir, e.g. an NFS mount point with nothing mounted, would look like every image was removed) and,
 * for a scan, be the store this index follows. Returns the marker's storeId.
 */
export async function checkStoreIdentity(store: Store, index: Index, what: string): Promise<string> {
  const marker = await store.requireMarker(what);
  const known = await index.getMeta<{ storeId: string }>(STORE_META_KEY);
  if (known && known.storeId !== marker.storeId) {
    throw new LayerfsError(
      'ENOSTORE',
      what,
      `the shared store at ${store.shared} is another store (storeId ${marker.storeId}) than this index follows (${known.storeId}): is the right one mounted? (\`layerfs index rebuild\` follows the new one)`,
    );
  }
  if (!known) await index.putMeta(STORE_META_KEY, { storeId: marker.storeId });
  return marker.storeId;
}

interface DirState {
  mtime: number;
  /** A listing was taken while the mtime was already this value at the previous scan. */
  confirmed: boolean;
}

export interface ScannerState {
  v: 1;
  dirs: Record<Kind, DirState>;
  /** Ids present (in any kind dir) but not ready yet: re-checked every scan. */
  waitingLayers: string[];
  waitingImages: string[];
  /** mtime of each known image's dir (a changed image.json is renamed into it). */
  imageMtimes: Record<string, number>;
  /** Layers gone from the store but kept in the index (missing: true) because a local RW layer uses them. */
  missing: string[];
  /** Bad entries already warned about: `<kind>/<name>` -> why. */
  warned: Record<string, string>;
}

export interface ScanResult {
  /** True when the kind dirs were listed (false: nothing moved, only waiting ids were re-checked). */
  listed: boolean;
  added: { layers: string[]; images: string[] };
  /** Image records that changed in place (e.g. names moved). */
  updated: { images: string[] };
  removed: { layers: string[]; images: string[] };
  /** Layers gone from the store and marked missing this scan (still used by a local RW layer). */
  missing: string[];
  waiting: { layers: string[]; images: string[] };
  /** Bad entries warned about this scan (each only once). */
  warnings: { entry: string; why: string }[];
  /** `--full` only: names whose index entry disagreed with the image records, and where they point now. */
  repairedNames: { name: string; was: string | null; now: string | null }[];
  io: IoCounters & { ms: number };
}

export interface ScanOptions {
  /** List every kind dir whatever the mtimes say, re-read every known image record and repair the name index. */
  full?: boolean;
}

interface Listing {
  ids: Set<string>;
  junk: string[];
}

async function listKind(store: Store, kind: Kind, io: IoCounters): Promise<Listing> {
  io.readdirs++;
  let names: string[];
  try {
    names = await readdir(store.sharedPath(kind));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { ids: new Set(), junk: [] };
    throw err;
  }
  const ids = new Set<string>();
  const junk: string[] = [];
  for (const n of names) {
    if (n.startsWith('.') || (kind === 'overlay' && n === 'l')) continue; // .tmp-* (in-flight or aside), l/
    if (isLayerId(n)) ids.add(n);
    else junk.push(n);
  }
  return { ids, junk };
}

async function mtimeOf(p: string, io: IoCounters): Promise<number> {
  io.stats++;
  try {
    return (await statCb(p)).mtimeMs;
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return -1;
    throw err;
  }
}

function emptyState(): ScannerState {
  const d = (): DirState => ({ mtime: -2, confirmed: false });
  return { v: 1, dirs: { overlay: d(), 'overlay-layers': d(), 'overlay-images': d() }, waitingLayers: [], waitingImages: [], imageMtimes: {}, missing: [], warned: {} };
}

/** Run one scan: bring the index and this host's RO symlinks in line with the shared store. */
export async function scanOnce(store: Store, index: Index, opts: ScanOptions = {}): Promise<ScanResult> {
  const t0 = performance.now();
  const io = newCounters();
  const log = logger();
  io.filesRead++; // the store marker
  await checkStoreIdentity(store, index, 'scan');
  const prev = (await index.getMeta<ScannerState>(SCANNER_STATE_KEY)) ?? null;
  const bootstrap = prev === null || prev.v !== 1;
  const state: ScannerState = bootstrap ? emptyState() : structuredClone(prev);
  const res: ScanResult = {
    listed: false,
    added: { layers: [], images: [] },
    updated: { images: [] },
    removed: { layers: [], images: [] },
    missing: [],
    waiting: { layers: [], images: [] },
    warnings: [],
    repairedNames: [],
    io: { ...io, ms: 0 },
  };

  // 1. has anything moved? one stat per kind dir
  const newDirs = {} as Record<Kind, DirState>;
  let listAll = bootstrap || opts.full === true;
  for (const kind of KINDS) {
    const m = await mtimeOf(store.sharedPath(kind), io);
    const was = state.dirs[kind];
    newDirs[kind] = { mtime: m, confirmed: was.mtime === m };
    if (was.mtime !== m || !was.confirmed) listAll = true;
  }
  const imagesDirMoved = newDirs['overlay-images'].mtime !== state.dirs['overlay-images'].mtime || !state.dirs['overlay-images'].confirmed || bootstrap || opts.full === true;

  if (!listAll && state.waitingLayers.length === 0 && state.waitingImages.length === 0 && state.missing.length === 0) {
    res.io = { ...io, ms: performance.now() - t0 };
    return res; // nothing moved, nothing waiting: no index reads, no writes
  }

  const warnOnce = (entry: string, why: string): void => {
    if (state.warned[entry] === why) return;
    state.warned[entry] = why;
    res.warnings.push({ entry, why });
    log.warn({ entry, why }, 'ignoring a bad entry in the shared store');
  };

  // 2. what this host knows
  const known = new Map<string, IndexedLayer>();
  for (const l of await index.listLayers()) known.set(l.id, l);
  const knownImages = new Map<string, ImageRecord>();
  for (const i of await index.listImages()) knownImages.set(i.id, i);
  const isKnownReady = (id: string): boolean => {
    const l = known.get(id);
    return l !== undefined && !l.rw && !l.missing;
  };

  // 3. layers: overlay/ then overlay-layers/
  let candidateIds: string[];
  let present: ((id: string) => boolean) | null = null; // null: not listed this scan
  let imageIds: Set<string> | null = null;
  if (listAll) {
    res.listed = true;
    const data = await listKind(store, 'overlay', io);
    const meta = await listKind(store, 'overlay-layers', io);
    const imgs = await listKind(store, 'overlay-images', io);
    for (const [kind, l] of [['overlay', data], ['overlay-layers', meta], ['overlay-images', imgs]] as const) for (const n of l.junk) warnOnce(`${kind}/${n}`, 'not a layerfs entry');
    // forget warnings about entries that left the store (if they come back bad, warn again)
    const junkNow = new Set([...data.junk.map((n) => `overlay/${n}`), ...meta.junk.map((n) => `overlay-layers/${n}`), ...imgs.junk.map((n) => `overlay-images/${n}`)]);
    for (const entry of Object.keys(state.warned)) {
      const [kind, name] = entry.split('/') as [Kind, string];
      const still = isLayerId(name) ? (kind === 'overlay-images' ? imgs.ids.has(name) : meta.ids.has(name)) : junkNow.has(entry);
      if (!still) delete state.warned[entry];
    }
    present = (id) => data.ids.has(id) && meta.ids.has(id);
    const ids = new Set<string>([...data.ids, ...meta.ids]);
    candidateIds = [...ids].filter((id) => !isKnownReady(id));
    // removed: known RO layers (ready or missing) no longer both in overlay/ and overlay-layers/
    for (const l of known.values()) if (!l.rw && !l.missing && !present(l.id)) res.removed.layers.push(l.id);
    imageIds = imgs.ids;
  } else {
    candidateIds = [...state.waitingLayers];
  }

  const removedSet = new Set(res.removed.layers);
  const candidates = new Map<string, LayerRecord>();
  const waitingLayers: string[] = [];
  // records read IO_PARALLEL at a time (a first scan reads thousands), then judged in listing order
  const reads = await mapLimit(candidateIds, IO_PARALLEL, async (id) => {
    if (present && !present(id)) return { id, r: null, data: false }; // data dir without layer.json (being published) or the reverse
    const r = await readLayerRecord(store, id, io);
    return { id, r, data: r.kind === 'ok' && (await layerDataPresent(store, id, io)) };
  });
  for (const { id, r, data } of reads) {
    if (r?.kind === 'bad') warnOnce(`overlay-layers/${id}`, r.why);
    if (r?.kind !== 'ok' || !data) {
      waitingLayers.push(id);
      continue;
    }
    candidates.set(id, r.rec);
  }
  const { ready, waiting } = resolveLayerChains(candidates, (id) => isKnownReady(id) && !removedSet.has(id));
  waitingLayers.push(...waiting);
  // make the symlinks first, then index (batched writes): a crash in between leaves links the next scan re-makes
  await store.linkLocalMany([...ready.keys()], 'layer');
  await index.putLayers([...ready.values()]);
  const wasMissing = new Set([...ready.keys()].filter((id) => known.get(id)?.missing));
  if (wasMissing.size) state.missing = state.missing.filter((m) => !wasMissing.has(m));
  for (const rec of ready.values()) {
    known.set(rec.id, rec);
    res.added.layers.push(rec.id);
  }

  // 4. layers that left the store: drop them, unless a local RW layer still sits on them
  if (res.removed.layers.length || state.missing.length) {
    const used = new Set<string>();
    for (const l of known.values()) {
      if (!l.rw) continue;
      let p = l.parent;
      for (let d = 0; p && d < 1000; d++) {
        used.add(p);
        p = known.get(p)?.parent ?? null;
      }
    }
    for (const id of res.removed.layers) {
      const rec = known.get(id)!;
      if (used.has(id)) {
        await index.putLayer({ ...rec, missing: true });
        known.set(id, { ...rec, missing: true });
        state.missing.push(id);
        res.missing.push(id);
        log.warn({ layer: id }, 'layer left the shared store but a local RW layer still uses it: kept as missing');
      } else {
        await store.unlinkLocal(id, 'layer'); // link first, then index (see above)
        await index.delLayer(id);
        known.delete(id);
      }
    }
    for (const id of [...state.missing]) {
      if (!known.get(id)?.missing) {
        state.missing = state.missing.filter((m) => m !== id); // back in the store, or gone from the index
        continue;
      }
      if (used.has(id)) continue;
      await store.unlinkLocal(id, 'layer');
      await index.delLayer(id);
      known.delete(id);
      state.missing = state.missing.filter((m) => m !== id);
      res.removed.layers.push(id);
      log.info({ layer: id }, 'missing layer no longer used: dropped');
    }
    res.removed.layers = res.removed.layers.filter((id) => !res.missing.includes(id));
  }
  const layerReady = (id: string): boolean => isKnownReady(id);

  // 5. images: overlay-images/
  const waitingImages: string[] = [];
  let imageCandidates: string[];
  if (imageIds) {
    for (const id of knownImages.keys()) {
      if (!imageIds.has(id)) {
        await store.unlinkLocal(id, 'image');
        await index.delImage(id);
        knownImages.delete(id);
        delete state.imageMtimes[id];
        res.removed.images.push(id);
      }
    }
    imageCandidates = [...imageIds].filter((id) => !knownImages.has(id));
    if (imagesDirMoved) {
      // a known image whose dir changed had its image.json replaced: re-read it
      const ids = [...knownImages.keys()];
      const mtimes = await mapLimit(ids, IO_PARALLEL, (id) => mtimeOf(store.sharedPath('overlay-images', id), io));
      for (const [i, id] of ids.entries()) {
        const m = mtimes[i]!;
        if (bootstrap && !opts.full) state.imageMtimes[id] = m; // just read by the rebuild that made this index
        else if (opts.full || state.imageMtimes[id] !== m) imageCandidates.push(id);
      }
    }
  } else {
    imageCandidates = [...state.waitingImages];
  }
  // known images whose layers left the store are not ready any more
  for (const [id, rec] of knownImages) {
    if (imageLayersReady(rec, layerReady)) continue;
    await store.unlinkLocal(id, 'image');
    await index.delImage(id);
    knownImages.delete(id);
    res.removed.images.push(id);
    if (!imageCandidates.includes(id)) imageCandidates.push(id);
  }
  const imgReads = await mapLimit(imageCandidates, IO_PARALLEL, async (id) => {
    const mtime = await mtimeOf(store.sharedPath('overlay-images', id), io);
    return { id, mtime, r: await readImageRecord(store, id, io) };
  });
  const changed: ImageRecord[] = [];
  for (const { id, mtime, r } of imgReads) {
    if (r.kind === 'bad') warnOnce(`overlay-images/${id}`, r.why);
    if (r.kind !== 'ok' || !imageLayersReady(r.rec, layerReady)) {
      waitingImages.push(id);
      continue;
    }
    const was = knownImages.get(id);
    state.imageMtimes[id] = mtime;
    if (was && JSON.stringify(was) === JSON.stringify(r.rec)) continue;
    changed.push(r.rec);
    knownImages.set(id, r.rec);
    if (was) res.updated.images.push(id);
    else res.added.images.push(id);
  }
  // links first, then the records (batched writes, in the order read: a name two records claim ends where
  // putImage of each in turn would leave it)
  await store.linkLocalMany(changed.map((r) => r.id), 'image');
  await index.putImages(changed);
  for (const id of Object.keys(state.imageMtimes)) if (!knownImages.has(id)) delete state.imageMtimes[id];
  // an image dropped then re-added in the same scan (layers came back) is neither
  res.removed.images = res.removed.images.filter((id) => !knownImages.has(id));
  if (opts.full) {
    res.repairedNames = await index.repairNames();
    if (res.repairedNames.length) log.warn({ names: res.repairedNames }, 'repaired names that disagreed with the image records');
  }

  // 6. remember
  state.dirs = newDirs;
  state.waitingLayers = waitingLayers;
  state.waitingImages = waitingImages;
  res.waiting = { layers: waitingLayers, images: waitingImages };
  await index.putMeta(SCANNER_STATE_KEY, state);
  res.io = { ...io, ms: performance.now() - t0 };
  return res;
}

/** Forget the scanner's state (the next scan lists everything and re-checks links). */
export async function resetScannerState(index: Index): Promise<void> {
  await index.delMeta(SCANNER_STATE_KEY);
}

export function scanChanged(r: ScanResult): boolean {
  return r.added.layers.length + r.added.images.length + r.removed.layers.length + r.removed.images.length + r.updated.images.length + r.missing.length + r.repairedNames.length > 0;
}
