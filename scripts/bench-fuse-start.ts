/**
 * Benchmark (not a test; issue #16 item 10): how long a mount takes to start, from the request to the first reply
 * through the mount, for a layerfs FUSE mount (startFuseMount, as the FUSE driver and `layerfs snapshotter --driver
 * fuse` start one) against a kernel overlay mount of the same dirs (`mount -t overlay`, as the overlay driver makes
 * one). The first reply is a stat of a file of the lowest layer through the new mount.
 *
 *   node dist/scripts/bench-fuse-start.js [ROUNDS=15] [LAYERS=10]     (root; npm run build first)
 *
 * Prints per-mode medians (and min/max) in ms. The machine is shared: medians, not means.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startFuseMount, stopFuseMount } from '../src/fuse/index.js';
import { spareReady, useSpareServers } from '../src/fuse/spawn.js';

const run = promisify(execFile);
const rounds = Number(process.argv[2] ?? 15);
const nlayers = Number(process.argv[3] ?? 10);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const T = await mkdtemp(path.join(os.tmpdir(), 'layerfs-bench-start-'));
  try {
    const lowers: string[] = [];
    for (let i = 0; i < nlayers; i++) {
      const d = path.join(T, `l${i}`);
      await mkdir(path.join(d, 'etc'), { recursive: true });
      await writeFile(path.join(d, 'etc', `f${i}`), `layer ${i}\n`);
      lowers.unshift(d); // top first
    }
    const probe = (mnt: string) => stat(path.join(mnt, 'etc', 'f0'));
    const times: Record<string, number[]> = { kernel: [], 'fuse-cold': [], 'fuse-spare': [] };
    for (let r = 0; r < rounds; r++) {
      for (const mode of ['kernel', 'fuse-cold', 'fuse-spare'] as const) {
        useSpareServers(mode === 'fuse-spare');
        if (mode === 'fuse-spare') await spareReady();
        const up = path.join(T, `${mode}-${r}`);
        const upper = path.join(up, 'upper');
        const work = path.join(up, 'work');
        const mnt = path.join(up, 'mnt');
        for (const d of [upper, work, mnt]) await mkdir(d, { recursive: true });
        const t0 = performance.now();
        if (mode === 'kernel') await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`, mnt]);
        else await startFuseMount({ lowerdirs: lowers, upperdir: upper, workdir: work, mountpoint: mnt });
        try {
          await probe(mnt);
          times[mode]!.push(performance.now() - t0);
        } finally {
          if (mode === 'kernel') await run('umount', [mnt]);
          else await stopFuseMount(mnt);
        }
      }
    }
    useSpareServers(false);
    console.log(`rounds: ${rounds}, layers: ${nlayers} (ms from the mount request to the first stat answered through it)`);
    for (const [mode, xs] of Object.entries(times)) {
      console.log(`${mode.padEnd(8)} median ${median(xs).toFixed(1).padStart(7)}  min ${Math.min(...xs).toFixed(1).padStart(7)}  max ${Math.max(...xs).toFixed(1).padStart(7)}`);
    }
    const k = median(times.kernel!);
    console.log(`fuse-cold / kernel ${(median(times['fuse-cold']!) / k).toFixed(1)}x, fuse-spare / kernel ${(median(times['fuse-spare']!) / k).toFixed(1)}x (medians); aim: fuse < 100 ms`);
  } finally {
    await rm(T, { recursive: true, force: true });
  }
}

await main();
