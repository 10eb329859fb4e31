/**
 * Mount records recovered from the mount table, for an index rebuilt while mounts are live (the records live only in
 * the index; the mounts outlive it). Each driver's mount leaves its own trace:
 *  - kernel overlay (`mount`, `mount --ro`): an `overlay` mount whose lowerdirs are this store's short `l/` names
 *    (plus the `empty` dir) and, RW, whose upperdir is an RW layer's diff dir in this root; the kernel shows the
 *    paths as the driver gave them, relative to `<root>/overlay` (absolute forms are read too);
 *  - FUSE (`--driver fuse`): a `fuse.layerfs` mount says nothing of its dirs: its server process's arguments do
 *    (src/fuse/servers.ts);
 *  - `layer mount`: a bind mount whose root (the path inside its filesystem) ends in `/overlay/<id>/diff` and whose
 *    root dir is that RO layer's diff dir (same device and inode).
 * The parsers of each format sit with what writes it (overlay/mountdata.ts, fuse/servers.ts, the Store's paths);
 * what a trace means as a record, and which traces are not ours, is decided here, in one place.
 * Only this root's and its shared store's dirs are claimed, so another root on the host keeps its mounts. Not
 * ours either: the overlays containerd makes from our snapshotter's answers (lowers named by their diff dirs, not
 * by `l/` names) and its one-layer view binds (a view snapshot of a base layer). Two roots sharing one shared store
 * on one host cannot tell their read-only views apart (both name the same `l/` links and diff dirs): both claim them.
 */
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { logger } from '../common/log.js';
import { readMountTable, type MountEntry } from '../common/mountinfo.js';
import { parseOverlayMountData } from '../drivers/index.js';
import { listServers, type ServerProcess } from '../fuse/index.js';
import type { Index, MountRecord } from '../index/index.js';
import { isLayerId, type Store } from '../store/index.js';

type Recovered = Omit<MountRecord, 'refs' | 'created'>;

/**
 * The records of this root's live mounts that the index lacks (refs 1, created now); the caller stores them.
 * Mount points the index already has are left alone. Reads the mount table and /proc; touches no mount (a FUSE
 * mount's server may be slow or gone).
 */
export async function recoverMountRecords(store: Store, index: Index): Promise<MountRecord[]> {
  const known = new Set((await index.listMounts()).map((m) => m.mountpoint));
  // the last entry of a mount point is the one on top: what a path there reaches
  const top = new Map<string, MountEntry>();
  for (const e of await readMountTable()) top.set(e.mountpoint, e);
  const found: Recovered[] = [];
  const fuse: MountEntry[] = [];
  for (const e of top.values()) {
    if (known.has(e.mountpoint)) continue;
    let rec: Recovered | null = null;
    if (e.fstype === 'overlay') rec = await overlayMount(store, index, e);
    else if (e.fstype === 'fuse.layerfs') fuse.push(e);
    else if (e.root !== '/') rec = await layerView(store, index, e);
    if (rec) found.push(rec);
  }
  if (fuse.length) {
    const servers = await listServers();
    for (const e of fuse) {
      const s = await serverOf(e, servers);
      if (!s || known.has(s.mountpoint)) continue;
      const rec = await fuseMount(store, index, s);
      if (rec) found.push(rec);
    }
  }
  const created = new Date().toISOString();
  const out = found.map((r) => ({ ...r, refs: 1, created }));
  if (out.length) logger().info({ mounts: out.map((m) => m.mountpoint) }, 'index rebuild: recovered mount records from the mount table');
  return out;
}

/**
 * Layer ids of lower dirs (the `empty` dir dropped), or null at the first one that is not ours (most mounts on a
 * host are not: one look each). `linksOnly`: a lower named by its diff dir is not ours either.
 */
async function lowerIds(store: Store, lowers: string[], linksOnly: boolean): Promise<string[] | null> {
  const ids: string[] = [];
  for (const p of lowers) {
    const l = await store.layerOfMountPath(p);
    if (!l || (linksOnly && l.kind === 'diff')) return null;
    if (l.kind !== 'empty') ids.push(l.id);
  }
  return ids;
}

/** The RW layer of this root whose diff dir `upper` is, as the index knows it. */
async function rwLayerOf(store: Store, index: Index, upper: string) {
  const up = await store.layerOfMountPath(upper);
  if (up?.kind !== 'diff' || !up.rw) return null;
  const rec = await index.getLayer(up.id);
  return rec?.rw ? rec : null;
}

/** Whether `ids` (top first) is the chain of RO layers from `top` down, as the index knows it. */
async function isChain(index: Index, ids: string[], top: string | null): Promise<boolean> {
  let cur = top;
  for (const id of ids) {
    if (cur !== id) return false;
    const rec = await index.getLayer(id);
    if (!rec || rec.rw) return false;
    cur = rec.parent;
  }
  return cur === null;
}

/** A kernel overlay of ours: lowers by `l/` name (or `empty`), an RW layer's diff dir as upper. */
async function overlayMount(store: Store, index: Index, e: MountEntry): Promise<Recovered | null> {
  const o = parseOverlayMountData(e.superOptions);
  const rw = o.upper ? await rwLayerOf(store, index, o.upper) : null;
  if (o.upper && !rw) return null;
  // the driver names RO lowers by their short links: a lower given as a diff dir is someone else's overlay
  const ids = await lowerIds(store, o.lowers, true);
  if (!ids) return null;
  if (rw) return (await isChain(index, ids, rw.parent)) ? { mountpoint: e.mountpoint, layer: rw.id, rw: true, driver: 'overlay' } : null;
  if (!ids.length || !(await isChain(index, ids, ids[0]!))) return null;
  return { mountpoint: e.mountpoint, layer: ids[0]!, rw: false, driver: 'overlay' };
}

/** A FUSE server serving this store's dirs: the driver gives it the chain's diff dirs and the RW layer's upper. */
async function fuseMount(store: Store, index: Index, s: ServerProcess): Promise<Recovered | null> {
  const rw = s.upperdir ? await rwLayerOf(store, index, s.upperdir) : null;
  if (s.upperdir && !rw) return null;
  const ids = await lowerIds(store, s.lowerdirs, false);
  if (!ids) return null;
  if (rw) return (await isChain(index, ids, rw.parent)) ? { mountpoint: s.mountpoint, layer: rw.id, rw: true, driver: 'fuse', pid: s.pid } : null;
  if (!ids.length || !(await isChain(index, ids, ids[0]!))) return null;
  return { mountpoint: s.mountpoint, layer: ids[0]!, rw: false, driver: 'fuse', pid: s.pid };
}

/** The live server of a `fuse.layerfs` mount: the newest one given that mount point (or a path to it through symlinks). */
async function serverOf(e: MountEntry, servers: ServerProcess[]): Promise<ServerProcess | null> {
  const hits: ServerProcess[] = [];
  for (const s of servers) {
    if (s.mountpoint === e.mountpoint) hits.push(s);
    else if (path.basename(s.mountpoint) === path.basename(e.mountpoint)) {
      // resolve the parent only: a realpath of the mount point itself would ask its server
      const parent = await realpath(path.dirname(s.mountpoint)).catch(() => null);
      if (parent && path.join(parent, path.basename(s.mountpoint)) === e.mountpoint) hits.push(s);
    }
  }
  return hits.sort((a, b) => b.started - a.started)[0] ?? null;
}

/**
 * A `layer mount` view: a read-only bind of an RO layer's diff dir. The entry's root is the dir's path inside its
 * filesystem (the shared store may be a mount of its own), so the device and inode decide.
 */
async function layerView(store: Store, index: Index, e: MountEntry): Promise<Recovered | null> {
  const m = /\/overlay\/([0-9a-f]{64})\/diff$/.exec(e.root);
  if (!m || !isLayerId(m[1]!)) return null;
  const id = m[1]!;
  const rec = await index.getLayer(id);
  if (!rec || rec.rw) return null;
  const [mine, there] = await Promise.all([stat(store.diffDir(id)).catch(() => null), stat(e.mountpoint).catch(() => null)]);
  if (!mine || !there || mine.dev !== there.dev || mine.ino !== there.ino) return null;
  // containerd binds a view snapshot of one layer (a base layer) the same way, from our snapshotter's answer
  if (rec.parent === null && (await index.listSnapshots()).some((sn) => sn.kind === 'view' && sn.layer === id)) return null;
  return { mountpoint: e.mountpoint, layer: id, rw: false, alone: true, driver: 'overlay' };
}
