/**
 * Who uses a layer on this host, from what the index records: RW layers (their parent chains), mounts (an RW
 * layer's, a read-only view of a chain, a view of one layer alone) and containerd snapshots. The index rebuild
 * restores all three from the disk and the mount table, so this answer survives an index loss.
 */
import type { Index } from '../index/index.js';

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

/** Every local user of every layer (RO layers and RW layers alike), keyed by layer id. O(local users x depth). */
export async function localUsers(index: Index): Promise<Map<string, LayerUser[]>> {
  const parents = new Map<string, string | null>();
  const chain = async (top: string | null): Promise<string[]> => {
    const out: string[] = [];
    for (let cur = top, d = 0; cur && d < 10_000; d++) {
      out.push(cur);
      let p = parents.get(cur);
      if (p === undefined) {
        p = (await index.getLayer(cur))?.parent ?? null;
        parents.set(cur, p);
      }
      cur = p;
    }
    return out;
  };
  const out = new Map<string, LayerUser[]>();
  const add = (ids: string[], u: LayerUser): void => {
    for (const id of ids) {
      const list = out.get(id);
      if (list) list.push(u);
      else out.set(id, [u]);
    }
  };
  for (const l of await index.listRWLayers()) add(await chain(l.parent), { kind: 'container', ref: l.name ?? l.id });
  for (const m of await index.listMounts()) add(m.rw || m.alone ? [m.layer] : await chain(m.layer), { kind: 'mount', ref: m.mountpoint });
  for (const s of await index.listSnapshots()) {
    if (!s.layer) continue;
    add(s.kind === 'view' ? await chain(s.layer) : [s.layer], { kind: 'snapshot', ref: s.key });
  }
  return out;
}
