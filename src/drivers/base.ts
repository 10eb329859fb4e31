import { mkdir, readFile, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { applyLayer, exportDiff } from '../archive/index.js';
import { LayerfsError, isErrno } from '../common/errors.js';
import { logger } from '../common/log.js';
import { addROLayer } from '../image/index.js';
import type { Index, MountRecord } from '../index/index.js';
import type { Store } from '../store/index.js';
import type { CreateRWOptions, DriverStatus, GraphDriver, LayerMetadata, MountOptions } from './driver.js';
import { isMountpoint, probeHost, run, type HostProbe } from './host.js';
import { quotaFor } from './quota/index.js';

/** What a driver mounts: lower diff dirs (top first) and, for RW mounts, the upper and work dirs. */
export interface MergeSpec {
  /** Absolute lower dirs, top first. */
  lowers: string[];
  /** Lower dirs as short paths relative to `base` (kernel mounts use them to fit in a page). */
  shortLowers: string[];
  base: string;
  upper?: string;
  work?: string;
  target: string;
}

/**
 * What both drivers share: RW layers on disk, reference-counted mounts recorded in the index,
 * metadata, apply/diff. A driver only says how a merged view is mounted and unmounted.
 */
export abstract class LayeredDriver implements GraphDriver {
  abstract readonly name: 'overlay' | 'fuse';
  private probe?: HostProbe;

  constructor(
    protected readonly store: Store,
    protected readonly index: Index,
  ) {}

  /** Mount the merged view; returns e.g. the server pid for FUSE. */
  protected abstract mountMerged(spec: MergeSpec): Promise<{ pid?: number }>;
  protected abstract unmountMerged(rec: MountRecord): Promise<void>;
  /** Whether this driver can run here (given the host probe). */
  protected abstract usable(p: HostProbe): string | null;

  async init(): Promise<void> {
    const why = this.usable(await this.host());
    if (why) throw new LayerfsError('EDRIVER', `driver ${this.name}`, why);
  }

  protected async host(): Promise<HostProbe> {
    this.probe ??= await probeHost(this.store.root);
    return this.probe;
  }

  async createRO(parent: string | null, tar: Readable): Promise<string> {
    const { layer } = await this.store.withWriteLock('layer create', () => addROLayer(this.store, this.index, { parent, open: () => tar }));
    return layer.id;
  }

  async createRW(id: string, parent: string | null, opts: CreateRWOptions = {}): Promise<void> {
    if (parent) {
      const p = await this.index.getLayer(parent);
      if (!p) throw new LayerfsError('ELAYERNOTFOUND', `layer ${parent}`, 'parent layer not found');
      if (p.rw) throw new LayerfsError('EUSAGE', `layer ${parent}`, 'an RW layer cannot be the parent of another RW layer; commit it first');
      if (p.missing) throw new LayerfsError('ELAYERNOTFOUND', `layer ${parent}`, 'is gone from the shared store');
    }
    const chain = parent ? await this.lowerChain(parent) : [];
    const quota = opts.quota !== undefined ? await quotaFor(this.store.root) : null;
    if (opts.quota !== undefined && !quota) {
      const fs = (await this.host()).backingFs;
      throw new LayerfsError('EQUOTA', `layer ${id}`, `quota requested but the backing filesystem (${fs} at ${this.store.root}) cannot enforce one (btrfs with quota enabled, xfs with prjquota or ext4 with project quota is needed)`);
    }
    await this.store.createRWLayer(
      {
        id,
        parent,
        diffDigest: null,
        compressedDigest: null,
        size: 0,
        rw: true,
        created: new Date().toISOString(),
        ...(opts.quota !== undefined ? { quota: opts.quota } : {}),
        ...(opts.name ? { name: opts.name } : {}),
      },
      await Promise.all(chain.map((l) => this.store.shortLowerPath(l))),
      quota && opts.quota !== undefined ? { makeDir: (dir) => quota.makeLayerDir(dir), afterCreate: (dir) => quota.limit(dir, opts.quota!) } : undefined,
    );
    const rec = await this.store.readLocalLayer(id);
    if (rec) await this.index.putLayer(rec);
  }

  /** RO layer ids from `top` down to the base layer (top first). */
  protected async lowerChain(top: string): Promise<string[]> {
    const out: string[] = [];
    let cur: string | null = top;
    while (cur) {
      const rec = await this.index.getLayer(cur);
      if (!rec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${cur}`, `not in the index (chain of ${top})`);
      if (rec.missing) throw new LayerfsError('ELAYERNOTFOUND', `layer ${cur}`, 'is gone from the shared store');
      out.push(cur);
      cur = rec.parent;
    }
    return out;
  }

  async remove(id: string): Promise<void> {
    const rec = await this.rwLayer(id);
    const mounted = (await this.index.listMounts()).filter((m) => m.layer === id);
    if (mounted.length) throw new LayerfsError('EINUSE', `layer ${id}`, `is mounted at ${mounted.map((m) => m.mountpoint).join(', ')}`);
    const quota = rec.quota !== undefined ? await quotaFor(this.store.root) : null;
    await this.store.removeRWLayer(id, quota ? (dir) => quota.removeLayerDir(dir) : undefined);
    await this.index.delLayer(id);
  }

  private async rwLayer(id: string) {
    const rec = await this.index.getLayer(id);
    if (!rec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${id}`, 'no such layer');
    if (!rec.rw) throw new LayerfsError('EUSAGE', `layer ${id}`, 'is an RO layer');
    return rec;
  }

  async exists(id: string): Promise<boolean> {
    if (!(await this.index.getLayer(id))) return false;
    return stat(this.store.diffDir(id)).then(
      () => true,
      () => false,
    );
  }

  async mount(id: string, opts: MountOptions = {}): Promise<string> {
    const rec = await this.rwLayer(id);
    const existing = (await this.index.listMounts()).find((m) => m.layer === id && m.rw);
    if (existing) {
      if (existing.driver !== this.name) throw new LayerfsError('EINUSE', `layer ${id}`, `is mounted by the ${existing.driver} driver at ${existing.mountpoint}`);
      if (await isMountpoint(existing.mountpoint)) {
        existing.refs++;
        await this.index.putMount(existing);
        return existing.mountpoint;
      }
      logger().warn({ mount: existing }, 'mount record without a mount: replacing it');
      await this.index.delMount(existing.mountpoint);
    }
    const dir = this.store.layerDir(id);
    const target = path.resolve(opts.target ?? path.join(dir, 'merged'));
    await this.assertFreeTarget(target);
    const chain = rec.parent ? await this.lowerChain(rec.parent) : [];
    const shortLowers = (await readFile(path.join(dir, 'lower'), 'utf8')).split(':').filter(Boolean);
    await rm(path.join(dir, 'work', 'work'), { recursive: true, force: true }).catch(() => undefined);
    const res = await this.mountMerged({
      lowers: chain.map((l) => this.store.diffDir(l)),
      shortLowers,
      base: this.store.mountBase,
      upper: path.join(dir, 'diff'),
      work: path.join(dir, 'work'),
      target,
    });
    await this.index.putMount({ mountpoint: target, layer: id, rw: true, driver: this.name, refs: 1, created: new Date().toISOString(), ...(res.pid ? { pid: res.pid } : {}) });
    return target;
  }

  async mountRO(id: string, target: string): Promise<string> {
    const chain = await this.lowerChain(id);
    const abs = path.resolve(target);
    const existing = await this.index.getMount(abs);
    if (existing && existing.layer === id && !existing.rw && (await isMountpoint(abs))) {
      existing.refs++;
      await this.index.putMount(existing);
      return abs;
    }
    await this.assertFreeTarget(abs);
    const res = await this.mountMerged({
      lowers: chain.map((l) => this.store.diffDir(l)),
      shortLowers: await Promise.all(chain.map((l) => this.store.shortLowerPath(l))),
      base: this.store.mountBase,
      target: abs,
    });
    await this.index.putMount({ mountpoint: abs, layer: id, rw: false, driver: this.name, refs: 1, created: new Date().toISOString(), ...(res.pid ? { pid: res.pid } : {}) });
    return abs;
  }

  /**
   * A read-only view of one RO layer alone, whiteouts shown as stored (char 0/0 devices, opaque
   * xattrs), so a developer sees what the layer deletes: a read-only bind mount of its diff dir,
   * which every Linux host can make. Unmounted like any other mount (plain umount).
   */
  async mountLayerAlone(id: string, target: string): Promise<string> {
    const rec = await this.index.getLayer(id);
    if (!rec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${id}`, 'no such layer');
    const abs = path.resolve(target);
    await this.assertFreeTarget(abs);
    await run('mount', ['--bind', this.store.diffDir(id), abs]);
    try {
      await run('mount', ['-o', 'remount,bind,ro', abs]);
    } catch (err) {
      await run('umount', [abs]).catch(() => undefined);
      throw new LayerfsError('EMOUNT', abs, `read-only bind mount failed: ${(err as Error).message}`);
    }
    await this.index.putMount({ mountpoint: abs, layer: id, rw: false, alone: true, driver: 'overlay', refs: 1, created: new Date().toISOString() });
    return abs;
  }

  private async assertFreeTarget(target: string): Promise<void> {
    await mkdir(target, { recursive: true });
    if (await isMountpoint(target)) throw new LayerfsError('EMOUNT', target, 'something is already mounted there');
  }

  async unmount(mountpoint: string, opts: { force?: boolean } = {}): Promise<void> {
    const abs = path.resolve(mountpoint);
    const rec = await this.index.getMount(abs);
    if (!rec) throw new LayerfsError('EMOUNT', abs, 'not a layerfs mount');
    if (rec.refs > 1 && !opts.force) {
      rec.refs--;
      await this.index.putMount(rec);
      return;
    }
    if (await isMountpoint(abs)) await this.unmountMerged(rec);
    await this.index.delMount(abs);
  }

  async applyDiff(id: string, tar: Readable): Promise<number> {
    await this.rwLayer(id);
    if ((await this.index.listMounts()).some((m) => m.layer === id)) throw new LayerfsError('EINUSE', `layer ${id}`, 'cannot apply a diff to a mounted layer');
    const res = await applyLayer(tar, this.store.diffDir(id));
    return res.size;
  }

  async metadata(id: string): Promise<LayerMetadata> {
    const rec = await this.index.getLayer(id);
    if (!rec) throw new LayerfsError('ELAYERNOTFOUND', `layer ${id}`, 'no such layer');
    const dir = this.store.layerDir(id);
    const mounted = (await this.index.listMounts()).find((m) => m.layer === id);
    const lowers = rec.rw ? (rec.parent ? await this.lowerChain(rec.parent) : []) : (await this.lowerChain(id)).slice(1);
    return {
      WorkDir: rec.rw ? path.join(dir, 'work') : '',
      MergedDir: mounted?.mountpoint ?? path.join(dir, 'merged'),
      UpperDir: path.join(dir, 'diff'),
      LowerDir: lowers.map((l) => this.store.diffDir(l)).join(':'),
    };
  }

  async status(): Promise<DriverStatus> {
    const p = await this.host();
    const q = await quotaFor(this.store.root);
    return {
      driver: this.name,
      backingFs: p.backingFs,
      supportsDType: p.supportsDType,
      overlaySupported: p.overlaySupported,
      fuseSupported: p.fuseSupported,
      quotaSupported: q !== null,
      quotaKind: q?.kind ?? null,
      mounts: (await this.index.listMounts()).filter((m) => m.driver === this.name).length,
    };
  }

  async cleanup(): Promise<void> {
    for (const m of await this.index.listMounts()) {
      if (m.driver !== this.name) continue;
      try {
        if (await isMountpoint(m.mountpoint)) await this.unmountMerged(m);
      } catch (err) {
        logger().warn({ err, mount: m.mountpoint }, 'cleanup: unmount failed');
        continue;
      }
      await this.index.delMount(m.mountpoint);
    }
    // stale overlay work dirs of RW layers that are not mounted
    for (const id of await this.store.listLocalRWIds()) {
      if ((await this.index.listMounts()).some((m) => m.layer === id)) continue;
      const work = path.join(this.store.layerDir(id), 'work');
      for (const n of await readdir(work).catch(() => [] as string[])) await rm(path.join(work, n), { recursive: true, force: true }).catch((err) => {
        if (!isErrno(err, 'ENOENT')) logger().warn({ err, work }, 'cleanup: cannot clear work dir');
      });
    }
  }

  diff(id: string): Readable {
    return exportDiff(this.store.diffDir(id));
  }
}
