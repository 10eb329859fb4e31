/**
 * One model of who uses a layer, and every removal goes through it. A layer's data is deleted only when no image,
 * child layer, local user (RW layer, mount, containerd snapshot) or live lease of another host references it.
 *
 * Removal is two-phase: `image rm` drops the image record at once (no new mounts anywhere) and marks its layers
 * (`<shared>/gc/<id>`); a pass (right away, then the writer's daemon, or `layerfs prune`) deletes the marked layers
 * nothing uses and says why it kept the others. A deletion is crash-safe and race-free with mounts elsewhere:
 *  1. the record dir leaves its final name (`retireLayer`): no host sees the layer as ready any more;
 *  2. the leases are read again: a host that leased the layer before step 1 is seen, and the layer is restored;
 *     a host that leases it after step 1 finds it retired when it checks its chain (`claim`) and does not mount;
 *  3. the data dir leaves its final name, then everything is deleted (`destroyLayer`).
 * A crash after step 1 leaves a retired record: the next pass restores it and decides again.
 * Call the removing methods with the shared store's writer lock held.
 */
import { LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { testPoint } from '../common/proc.js';
import type { Index } from '../index/index.js';
import type { LayerRecord, Store } from '../store/index.js';
import { describeLease, Leases, type HostLease, type LeaseIo } from './leases.js';
import { describeUsers, localUsers, type LayerUser } from './users.js';

export interface KeptLayer {
  id: string;
  users: LayerUser[];
}

export interface RemovalReport {
  removed: string[];
  kept: KeptLayer[];
  dryRun: boolean;
}

/** "kept 3 layers: used by host h2 (2 mounts)" — one line per distinct reason. */
export function describeKept(kept: KeptLayer[]): string[] {
  const byWhy = new Map<string, number>();
  for (const k of kept) {
    const why = describeUsers(k.users);
    byWhy.set(why, (byWhy.get(why) ?? 0) + 1);
  }
  return [...byWhy].map(([why, n]) => `kept ${n} layer${n === 1 ? '' : 's'}: used by ${why}`);
}

/**
 * What a pass knows, asked per layer: O(a layer's users), never a walk of every record. Images and child layers
 * come from the layer's refs on the shared store (`shared`: what every writer published, checked against the
 * records; a removal pass) or from the index's reverse maps (a look on any host); local users from the index;
 * other hosts' uses from their leases.
 */
class World {
  private readonly layerCache = new Map<string, LayerRecord | null>();
  private readonly childCache = new Map<string, string[]>();
  private readonly refCache = new Map<string, { images: string[]; children: string[] }>();
  /** Refs whose image or child is gone (a crash between its two steps): the pass drops them. */
  readonly stale: { layer: string; ref: string }[] = [];

  constructor(
    private readonly store: Store,
    private readonly index: Index,
    private readonly shared: boolean,
    readonly local: Map<string, LayerUser[]>,
    readonly remote: Map<string, HostLease[]>,
    private readonly io: LeaseIo,
  ) {}

  async layer(id: string): Promise<LayerRecord | null> {
    let rec = this.layerCache.get(id);
    if (rec === undefined) {
      rec = (await this.index.getLayer(id)) ?? (this.shared ? await this.store.readSharedLayer(id) : null) ?? null;
      this.layerCache.set(id, rec);
    }
    return rec;
  }

  private async refs(id: string): Promise<{ images: string[]; children: string[] }> {
    let r = this.refCache.get(id);
    if (!r) {
      r = { images: [], children: [] };
      this.io.readdirs++;
      for (const ref of await this.store.listRefs(id)) {
        this.io.stats++;
        const live = ref.kind === 'image' ? await this.store.imagePublished(ref.id) : await this.store.layerPublished(ref.id);
        if (!live) this.stale.push({ layer: id, ref: ref.ref });
        else (ref.kind === 'image' ? r.images : r.children).push(ref.id);
      }
      this.refCache.set(id, r);
    }
    return r;
  }

  /** The layer and its parents, top first. */
  async chain(id: string): Promise<string[]> {
    const out: string[] = [];
    for (let cur: string | null = id, d = 0; cur && d < 10_000; d++) {
      out.push(cur);
      cur = (await this.layer(cur))?.parent ?? null;
    }
    return out;
  }

  /** RO layers on top of `id` (RW layers are local users, "RW layer ..."). */
  async children(id: string): Promise<string[]> {
    let list = this.childCache.get(id);
    if (!list) {
      list = [];
      if (this.shared) list.push(...(await this.refs(id)).children);
      else for (const c of await this.index.childrenOf(id)) if (!(await this.layer(c))?.rw) list.push(c);
      this.childCache.set(id, list);
    }
    return list;
  }

  async images(id: string): Promise<string[]> {
    const out: string[] = [];
    for (const i of this.shared ? (await this.refs(id)).images : await this.index.imagesUsing(id)) {
      const rec = (await this.index.getImage(i)) ?? (this.shared ? await this.store.readSharedImage(i) : null);
      out.push(rec?.names[0] ?? i);
    }
    return out;
  }
}

const hostUsers = (leases: HostLease[] | undefined): LayerUser[] => (leases ?? []).map((l) => ({ kind: 'host', ref: `${l.hostname} (${l.host})`, detail: describeLease(l) }));

export class Lifetime {
  readonly leases: Leases;
  /** Shared-store I/O of this object's passes, leases included (scripts/bench-lifetime.ts reports it). */
  get io(): LeaseIo {
    return this.leases.io;
  }

  constructor(
    private readonly store: Store,
    private readonly index: Index,
  ) {
    this.leases = new Leases(store, index);
  }

  // ---- users ------------------------------------------------------------------------------------------------
  /** What keeps a layer. `remote`: also other hosts' leases (renews this host's lease to read the store's clock). */
  async usersOf(id: string, opts: { remote?: boolean } = {}): Promise<LayerUser[]> {
    return this.usersIn(await this.world({ remote: opts.remote ?? false, shared: false }), id);
  }

  private async usersIn(w: World, id: string, ignoreChildren: Set<string> = new Set()): Promise<LayerUser[]> {
    const out: LayerUser[] = (await w.images(id)).map((ref) => ({ kind: 'image', ref }));
    for (const c of await w.children(id)) if (!ignoreChildren.has(c)) out.push({ kind: 'layer', ref: c });
    out.push(...(w.local.get(id) ?? []), ...hostUsers(w.remote.get(id)));
    return out;
  }

  private async world(opts: { remote: boolean; shared: boolean }): Promise<World> {
    const local = await localUsers(this.index);
    let remote = new Map<string, HostLease[]>();
    if (opts.remote) remote = await this.leases.othersByLayer((await this.leases.renew({ force: true }))!);
    return new World(this.store, this.index, opts.shared, local, remote, this.io);
  }

  // ---- mounts ------------------------------------------------------------------------------------------------
  /**
   * Before mounting RO layers (a chain, top first): lease them, then check each still has its record on the
   * shared store. A writer retiring one of them either sees our lease and restores it, or we see it retired here.
   */
  async claim(chain: string[]): Promise<void> {
    if (!chain.length) return;
    await this.leases.renew({ force: true, extra: chain });
    for (const id of chain) {
      if (!(await this.store.layerPublished(id))) {
        await this.leases.renew();
        throw new LayerfsError('ELAYERNOTFOUND', `layer ${id}`, 'is being removed from the shared store (its image was removed)');
      }
    }
  }

  /** After local users changed (a mount, an unmount, an RW layer made or removed): renew if the set moved. */
  async usersChanged(): Promise<void> {
    try {
      await this.leases.renew();
    } catch (err) {
      // a host that cannot write its lease (store unreachable) keeps working; the daemon retries
      logger().warn({ err }, 'cannot renew this host\'s lease on the shared store');
    }
  }

  // ---- removal ------------------------------------------------------------------------------------------------
  /**
   * Delete what nothing uses among `candidates` (default: the layers marked for removal; `all`: every RO layer on
   * the store, as `prune` does). Children go before parents; a candidate whose child stays, stays. Layers kept for
   * an image or an unmarked child lose their mark (the image's removal marks them again); layers kept for users
   * that come and go (mounts, leases) keep it, for the next pass.
   */
  async collect(opts: { candidates?: string[]; all?: boolean; dryRun?: boolean } = {}): Promise<RemovalReport> {
    const dryRun = opts.dryRun ?? false;
    if (!dryRun) await this.finishRetired();
    const w = await this.world({ remote: true, shared: true });
    this.io.readdirs++;
    const marked = new Set(await this.store.markedLayers());
    let all: string[] = [];
    if (opts.all) {
      // every RO layer: the index's, and any on the store it does not know (another writer's; prune may be O(store))
      const known = await this.index.layerIds();
      all = [...(await this.index.listLayers()).filter((l) => !l.rw).map((l) => l.id), ...(await this.store.listSharedIds('overlay-layers')).ids.filter((id) => !known.has(id))];
    }
    const cands = new Set<string>(opts.all ? all : (opts.candidates ?? [...marked]));
    for (const id of [...cands]) {
      const l = await w.layer(id);
      if (!l || l.rw) {
        cands.delete(id);
        if (!l && !dryRun && marked.has(id) && !(await this.store.layerPublished(id))) await this.store.unmark(id); // already gone
      }
    }
    // removable: candidates used by nothing but other removable candidates (their children), to a fixpoint
    const removable = new Set<string>();
    for (const id of cands) if ((await this.usersIn(w, id, cands)).length === 0) removable.add(id);
    for (let changed = true; changed; ) {
      changed = false;
      for (const id of removable) {
        if ((await w.children(id)).some((c) => !removable.has(c))) {
          removable.delete(id);
          changed = true;
        }
      }
    }
    testPoint('removal:checked');
    let kept: KeptLayer[] = [];
    // a kept layer's users as people need them: what keeps it from outside the candidates (its kept children
    // only where nothing else does)
    for (const id of cands) {
      if (removable.has(id)) continue;
      const outside = await this.usersIn(w, id, cands);
      kept.push({ id, users: outside.length ? outside : await this.usersIn(w, id, removable) });
    }
    // prune looks at every layer: those an image holds are not news
    if (opts.all) kept = kept.filter((k) => !k.users.some((u) => u.kind === 'image'));
    // deepest first, so no layer is ever left without its parent
    const depth = new Map<string, number>();
    for (const id of removable) depth.set(id, (await w.chain(id)).length);
    const order = [...removable].sort((a, b) => depth.get(b)! - depth.get(a)!);
    const removed: string[] = [];
    if (dryRun) removed.push(...order);
    else {
      for (const st of w.stale) await this.store.dropRefs([st.layer], st.ref);
      const retired: string[] = [];
      for (const id of order) if (await this.store.retireLayer(id)) retired.push(id);
      this.io.writes += order.length;
      testPoint('removal:retired');
      // leases again, after the records left their names: a host that leased a layer meanwhile keeps it
      const late = await this.leases.othersByLayer((await this.leases.renew({ force: true }))!);
      const restore = new Set(retired.filter((id) => late.has(id)));
      // a restored layer keeps its parents (a `layer mount` view leases one layer, not its chain)
      const retiredSet = new Set(retired);
      for (const id of [...restore]) for (const p of (await w.chain(id)).slice(1)) if (retiredSet.has(p)) restore.add(p);
      for (const id of restore) {
        await this.store.restoreRetired(id);
        kept.push({ id, users: late.has(id) ? hostUsers(late.get(id)) : (await w.children(id)).filter((c) => restore.has(c)).map((c) => ({ kind: 'layer' as const, ref: c })) });
        logger().info({ layer: id }, 'removal: a host leased the layer meanwhile: restored');
      }
      for (const id of order) {
        if (restore.has(id)) continue;
        await this.store.destroyLayer(id);
        testPoint('removal:destroyed-one');
        await this.index.delLayer(id);
        await this.store.unmark(id);
        this.io.writes += 2; // the layer's data (its names: data dir, short link, record, the tree), its mark
        removed.push(id);
      }
      for (const k of kept) {
        const transient = k.users.length > 0 && k.users.every((u) => u.kind !== 'image' && !(u.kind === 'layer' && !marked.has(u.ref)));
        if (!transient && marked.has(k.id)) await this.store.unmark(k.id);
        else if (transient && !marked.has(k.id)) await this.store.markForRemoval([k.id]);
      }
    }
    if (removed.length || kept.length) logger().info({ removed, kept: describeKept(kept), dryRun }, 'removal pass');
    return { removed, kept, dryRun };
  }

  /**
   * A removal pass over the marked layers, when there are some and the writer lock is free: it never waits (the
   * lock's holder, or the next pass, will do it). For the writer's daemon and after an unmount on the writer.
   */
  async collectMarked(): Promise<RemovalReport | null> {
    if (this.store.role !== 'writer') return null;
    this.io.readdirs++;
    if (!(await this.store.markedLayers()).length) return null;
    try {
      return await this.store.withWriteLock('removal pass', () => this.collect(), 0);
    } catch (err) {
      if (err instanceof LayerfsError && err.code === 'ELOCKED') return null;
      throw err;
    }
  }

  /** Removals a crash interrupted: a retired record whose layer was published again is dropped; others restored. */
  private async finishRetired(): Promise<void> {
    for (const id of await this.store.retiredLayers()) {
      if (await this.store.layerPublished(id)) await this.store.destroyRetiredRecord(id);
      else if (await this.store.hasLayerData(id)) {
        await this.store.restoreRetired(id);
        await this.store.markForRemoval([id]);
      } else await this.store.destroyLayer(id);
    }
  }

  /** Remove one RO layer now, refusing (naming them) if anything uses it. */
  async removeLayer(rec: LayerRecord): Promise<RemovalReport> {
    const w = await this.world({ remote: true, shared: true });
    const users = await this.usersIn(w, rec.id);
    if (users.length) throw new LayerfsError('EINUSE', `layer ${rec.id}`, `still used by ${describeUsers(users)}`);
    const r = await this.collect({ candidates: [rec.id] });
    if (!r.removed.includes(rec.id)) throw new LayerfsError('EINUSE', `layer ${rec.id}`, `still used by ${describeUsers(r.kept.find((k) => k.id === rec.id)?.users ?? [])}`);
    return r;
  }
}
