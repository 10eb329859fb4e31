/**
 * Leases across hosts. Each host publishes, in one small file of its own on the shared store
 * (`<shared>/leases/<host-id>.json`, written temp + rename, never over another host's file), the set of shared
 * RO layers it uses. The writer deletes no layer a live lease names.
 *
 * Time: a lease's age is measured on the shared store's own clock, never against a host's: the renewing host's
 * rename leaves the store's mtime on the file, and the reader of the leases takes "now" from the mtime of its own
 * lease, written just before. Hosts whose clocks disagree still agree on ages. A lease older than the TTL
 * (LAYERFS_LEASE_TTL seconds, default 600) belongs to a dead host and protects nothing; `host forget` removes it.
 *
 * Cost: a renewal is one small write, made only when the host's set changed or a third of the TTL went by. A
 * pass over the leases is one readdir and one stat per host, and reads only the leases whose mtime or size
 * moved since the last pass (the index's `meta` keeps the parsed ones).
 */
import os from 'node:os';
import type { Index } from '../index/index.js';
import type { Store } from '../store/index.js';
import { localUsers } from './users.js';

export interface Lease {
  v: 1;
  host: string;
  hostname: string;
  /** Renewals so far (a person reading the file can see it move). */
  seq: number;
  /** The writing host's own clock, for people only: ages use the store's mtimes. */
  written: string;
  /** Shared RO layers this host uses (whole chains). */
  layers: string[];
  mounts: number;
  containers: number;
  snapshots: number;
}

export interface HostLease extends Lease {
  /** Age on the shared store's clock. */
  ageMs: number;
  expired: boolean;
  self: boolean;
}

/** I/O on the shared store by the lease code (the bench reports them). */
export interface LeaseIo {
  writes: number;
  reads: number;
  stats: number;
  readdirs: number;
}

const SELF_KEY = 'lease.self';
const CACHE_PREFIX = 'lease.host.';

interface SelfState {
  seq: number;
  key: string;
  /** Local clock (ms) of the last write: renewals are due by our own clock. */
  at: number;
  /** The store's clock (the lease file's mtime) at the last write. */
  storeNow: number;
}

interface CacheEntry {
  mtimeMs: number;
  size: number;
  lease: Lease | null;
}

export function leaseTtlMs(): number {
  const env = Number(process.env.LAYERFS_LEASE_TTL);
  return env > 0 ? env * 1000 : 600_000;
}

export function describeLease(l: Pick<Lease, 'mounts' | 'containers' | 'snapshots'>): string {
  const parts: string[] = [];
  const n = (k: number, what: string) => k && parts.push(`${k} ${what}${k === 1 ? '' : 's'}`);
  n(l.mounts, 'mount');
  n(l.containers, 'container');
  n(l.snapshots, 'snapshot');
  return parts.join(', ') || 'no users';
}

export class Leases {
  readonly io: LeaseIo = { writes: 0, reads: 0, stats: 0, readdirs: 0 };
  readonly ttlMs = leaseTtlMs();
  /** Parsed leases this process has read, by host (the daemon keeps it across passes). */
  private readonly cache = new Map<string, CacheEntry>();

  constructor(
    private readonly store: Store,
    private readonly index: Index,
  ) {}

  /** What this host's lease should say now: its local users' RO layers (plus `extra`, a mount about to be made). */
  private async current(extra: string[] = []): Promise<Omit<Lease, 'seq' | 'written'>> {
    const users = await localUsers(this.index);
    const rw = new Set((await this.index.listRWLayers()).map((l) => l.id));
    const layers = new Set(extra);
    for (const id of users.keys()) if (!rw.has(id)) layers.add(id);
    const mounts = (await this.index.listMounts()).length;
    const snapshots = (await this.index.listSnapshots()).length;
    return { v: 1, host: this.store.hostId, hostname: os.hostname(), layers: [...layers].sort(), mounts, containers: rw.size, snapshots };
  }

  /**
   * Renew this host's lease when its set changed, when a third of the TTL went by, or when `force`d; `extra`
   * layers are added (a mount about to be made: they are leased before they are checked, see `Lifetime`).
   * Returns the store's clock after the write, or null when nothing was written.
   */
  async renew(opts: { force?: boolean; extra?: string[] } = {}): Promise<number | null> {
    const cur = await this.current(opts.extra);
    const key = JSON.stringify([cur.layers, cur.mounts, cur.containers, cur.snapshots]);
    const prev = await this.index.getMeta<SelfState>(SELF_KEY);
    const due = !prev || prev.key !== key || Date.now() - prev.at > this.ttlMs / 3;
    if (!due && !opts.force) return null;
    const seq = (prev?.seq ?? 0) + 1;
    const lease: Lease = { ...cur, seq, written: new Date().toISOString() };
    const storeNow = await this.store.writeLease(JSON.stringify(lease));
    this.io.writes++;
    this.io.stats++;
    await this.index.putMeta(SELF_KEY, { seq, key, at: Date.now(), storeNow } satisfies SelfState);
    return storeNow;
  }

  /**
   * Every host's lease, with its age on the store's clock (`storeNow`: from `renew({force: true})`). Reads only
   * the files that changed since the last call.
   */
  async all(storeNow: number): Promise<HostLease[]> {
    this.io.readdirs++;
    const files = await this.store.listLeases();
    this.io.stats += files.length;
    const out: HostLease[] = [];
    for (const f of files) {
      // the parsed lease of each host is kept in the index under its own key, rewritten only when it changed
      const key = `${CACHE_PREFIX}${f.host}`;
      let c = this.cache.get(f.host) ?? (await this.index.getMeta<CacheEntry>(key)) ?? undefined;
      if (!c || c.mtimeMs !== f.mtimeMs || c.size !== f.size) {
        this.io.reads++;
        const text = await this.store.readLease(f.host);
        let lease: Lease | null = null;
        try {
          const l = JSON.parse(text ?? '') as Lease;
          if (l && l.v === 1 && Array.isArray(l.layers)) lease = l;
        } catch {
          /* a lease that does not parse protects nothing */
        }
        c = { mtimeMs: f.mtimeMs, size: f.size, lease };
        if (f.host !== this.store.hostId) await this.index.putMeta(key, c);
      }
      this.cache.set(f.host, c);
      if (!c.lease) continue;
      const ageMs = Math.max(0, storeNow - f.mtimeMs);
      out.push({ ...c.lease, host: f.host, ageMs, expired: ageMs > this.ttlMs, self: f.host === this.store.hostId });
    }
    return out;
  }

  /** Live leases of other hosts, by layer id: the hosts using each layer. */
  async othersByLayer(storeNow: number): Promise<Map<string, HostLease[]>> {
    const byLayer = new Map<string, HostLease[]>();
    for (const l of await this.all(storeNow)) {
      if (l.self || l.expired) continue;
      for (const id of l.layers) {
        const list = byLayer.get(id);
        if (list) list.push(l);
        else byLayer.set(id, [l]);
      }
    }
    return byLayer;
  }

  async forget(host: string): Promise<boolean> {
    const gone = await this.store.removeLease(host);
    this.cache.delete(host);
    await this.index.delMeta(`${CACHE_PREFIX}${host}`);
    if (host === this.store.hostId) await this.index.delMeta(SELF_KEY);
    return gone;
  }
}
