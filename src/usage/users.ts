/**
 * Who uses a layer on this host, from what the index records: RW layers (their parent chains), mounts (an RW
 * layer's, a read-only view of a chain, a view of one layer alone) and containerd snapshots. The index rebuild
 * restores all three from the disk and the mount table, so this answer survives an index loss.
 */
import type { Index, IndexedLayer } from '../index/index.js';

export type UserKind = 'image' | 'layer' | 'container' | 'mount' | 'snapshot' | 'host';

export interface LayerUser {
  kind: UserKind;
  /** Image name, child layer id, RW layer name or id, mount point, snapshot key, or host. */
  ref: string;
  /** host users: what the host's lease says it runs, e.g. "2 mounts, 1 container". */
  detail?: string;
}

/** "image a:1, mount /mnt/x, host h2 (2 mounts)" */
export function describeUsers(users: LayerUser[]): string {
  const name: Record<UserKind, string> = { image: 'image', layer: 'layer', container: 'RW layer', mount: 'mount', snapshot: 'containerd snapshot', host: 'host' };
  return users.map((u) => `${name[u.kind]} ${u.ref}${u.detail ? ` (${u.detail})` : ''}`).join(', ');
}

/** A layer's chain (itself first, then its parents) through a map of known layers. */
export function chainIds(byId: Map<string, IndexedLayer>, top: string | null): string[] {
  const out: string[] = [];
  for (let cur = top, d = 0; cur && d < 10_000; d++) {
    out.push(cur);
    cur = byId.get(cur)?.parent ?? null;
  }
  return out;
}

/** Every local user of every layer (RO layers and RW layers alike), keyed by layer id. */
export async function localUsers(index: Index): Promise<Map<string, LayerUser[]>> {
  const layers = await index.listLayers();
  const byId = new Map(layers.map((l) => [l.id, l] as const));
  const out = new Map<string, LayerUser[]>();
  const add = (ids: string[], u: LayerUser): void => {
    for (const id of ids) {
      const list = out.get(id);
      if (list) list.push(u);
      else out.set(id, [u]);
    }
  };
  for (const l of layers) if (l.rw) add(chainIds(byId, l.parent), { kind: 'container', ref: l.name ?? l.id });
  for (const m of await index.listMounts()) add(m.rw ? [m.layer] : m.alone ? [m.layer] : chainIds(byId, m.layer), { kind: 'mount', ref: m.mountpoint });
  for (const s of await index.listSnapshots()) {
    if (!s.layer) continue;
    add(s.kind === 'view' ? chainIds(byId, s.layer) : [s.layer], { kind: 'snapshot', ref: s.key });
  }
  return out;
}
