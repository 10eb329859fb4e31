/**
 * Lease and removal-pass cost (issue: layer lifetime) on a synthetic store of 10,000 layers / 1,000 images and
 * 100 hosts' leases (each leasing 10 chains of 10 layers). Counts what each step does on the shared store
 * (writes, reads, stats, readdirs: the NFS round trips) and times it (medians and spread of `runs`).
 *   node dist/scripts/bench-lifetime.js [layers] [images] [hosts] [runs]      (after `npm run build`)
 */
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { genStore } from './gen-store.js';
import { Index } from '../src/index/index.js';
import { Store } from '../src/store/index.js';
import { rebuildIndex } from '../src/service/index.js';
import { Lifetime, type LeaseIo } from '../src/usage/index.js';

const [nLayers = 10_000, nImages = 1_000, nHosts = 100, runs = 7] = process.argv.slice(2).map(Number);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;
const ioStr = (io: LeaseIo) => `writes ${io.writes}, reads ${io.reads}, stats ${io.stats}, readdirs ${io.readdirs}`;

async function measure(label: string, life: Lifetime, fn: () => Promise<unknown>, before?: () => Promise<void>): Promise<void> {
  const ms: number[] = [];
  let io: LeaseIo | null = null;
  let last: unknown;
  for (let i = 0; i < runs; i++) {
    if (before) await before();
    const was = { ...life.io };
    const t0 = performance.now();
    last = await fn();
    ms.push(performance.now() - t0);
    const d = { writes: life.io.writes - was.writes, reads: life.io.reads - was.reads, stats: life.io.stats - was.stats, readdirs: life.io.readdirs - was.readdirs };
    io = d; // the last run's (the first renewal of a store always writes)
  }
  const r = last as { removed?: string[]; kept?: unknown[] } | null;
  const what = r && Array.isArray(r.removed) ? `   (last run: removed ${r.removed.length}, kept ${r.kept!.length})` : '';
  console.log(`${label.padEnd(52)} ${median(ms).toFixed(1).padStart(8)} ms (${spread(ms)})   ${ioStr(io!)}${what}`);
}

const dir = await mkdtemp(path.join(os.tmpdir(), 'layerfs-bench-lifetime-'));
try {
  const shared = path.join(dir, 'nfs');
  console.log(`store: ${nLayers} layers, ${nImages} images, ${nHosts} hosts' leases; ${runs} runs each`);
  const gen = await genStore(shared, nLayers, nImages, 10, 'bench');
  const store = await Store.open({ root: path.join(dir, 'writer'), shared, role: 'writer' });
  const index = await Index.open(store.indexDir);
  await rebuildIndex(store, index);
  // other hosts' leases, as their daemons write them
  await mkdir(path.join(shared, 'leases'), { recursive: true });
  const half = Math.floor(nLayers / 20) * 10;
  const hostLease = (h: number, seq: number) => {
    const layers: string[] = [];
    for (let c = 0; c < 10; c++) layers.push(...gen.layers.slice(((h * 10 + c) * 10) % half, (((h * 10 + c) * 10) % half) + 10)); // the first half of the store is leased
    return JSON.stringify({ v: 1, host: `h${h}`, hostname: `host${h}`, seq, written: new Date().toISOString(), layers, mounts: 10, containers: 10, snapshots: 0 });
  };
  for (let h = 0; h < nHosts; h++) await writeFile(path.join(shared, 'leases', `${String(h).padStart(16, '0')}.json`), hostLease(h, 1));
  const life = new Lifetime(store, index);

  await measure('renewal, nothing changed (skipped)', life, () => life.leases.renew());
  await measure('renewal, forced (one small write)', life, () => life.leases.renew({ force: true }));
  let seq = 2;
  await measure('read all leases, none changed', life, async () => life.leases.all((await life.leases.renew({ force: true }))!));
  await measure('read all leases, 3 hosts renewed', life, async () => life.leases.all((await life.leases.renew({ force: true }))!), async () => {
    for (let h = 0; h < 3; h++) await writeFile(path.join(shared, 'leases', `${String(h).padStart(16, '0')}.json`), hostLease(h, seq++));
  });
  await measure('removal pass, no marks (daemon tick)', life, () => life.collectMarked());
  // an image whose chain no lease holds: its 10 layers are marked and removed; then one leased (all kept)
  const leased = gen.layers.slice(0, 10);
  let k = 0;
  await measure('removal pass, 10 marked layers leased elsewhere', life, () => store.withWriteLock('bench', () => life.collect()), async () => {
    await store.markForRemoval(leased);
  });
  await measure('removal pass, 10 marked unused layers (deleted)', life, () => store.withWriteLock('bench', () => life.collect()), async () => {
    // a fresh unused chain each run: the bench deletes it
    const chain = gen.layers.slice(nLayers - 10 * (k + 2), nLayers - 10 * (k + 1));
    k++;
    for (const img of await index.listImages()) {
      if (!img.layers.some((l) => chain.includes(l))) continue;
      await store.removeImage(img.id); // as `image rm` does before its pass
      await index.delImage(img.id);
    }
    await store.markForRemoval(chain);
  });
  await index.close();
} finally {
  await rm(dir, { recursive: true, force: true });
}
