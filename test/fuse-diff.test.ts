/**
 * Differential test: one seeded random sequence of operations applied to a kernel overlay mount and to a layerfs
 * FUSE mount over the same lowers (each with its own upper). After every op the outcome (ok or errno code) must
 * match; every SNAP_EVERY ops, and at the end, the whole trees must match. Finally the FUSE upper dir, mounted by
 * the kernel, must give the same tree again. Set LAYERFS_FUZZ_SEED / LAYERFS_FUZZ_OPS to replay.
 *
 * The kernel runs as the FUSE overlay copies it, `index=on,redirect_dir=on` (LAYERFS_FUZZ_EXACT=0: index=off,
 * redirect_dir=off; then a lower dir rename answered EXDEV by the kernel is skipped on both). The lowers hold
 * hardlinks (LAYERFS_FUZZ_HARDLINKS=0: none), which index=on keeps shared on copy-up, as we do.
 * Not compared:
 *  - inode numbers; atime and ctime; mtimes that came from the clock (ops run at different instants on the two
 *    mounts). Mtimes from the layers (fixed, with nanoseconds) or set by a utimes op are compared to the nanosecond
 *    (to the millisecond through fuse-native, whose stat carries milliseconds);
 *  - st_nlink of dirs (the kernel reports 1 for merged dirs; so do we, but the rule is the kernel's internal notion
 *    of "merged", which differs after a layerfs dir rename: we copy the tree, the kernel writes a redirect).
 * Run over 3 and over 6 lower layers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants as fsc } from 'node:fs';
import { open, truncate, rename, unlink, mkdir, rmdir, symlink, link, chmod, lchown, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { native } from '../src/common/native.js';
import { buildLowers, cleanup, diffSnapshots, FUSE_TRANSPORTS, mountFuse, mountKernel, snapshot, tmpDir, undoAfter } from './lib/fuse.js';

const OPS = Number(process.env.LAYERFS_FUZZ_OPS ?? 2000);
const SNAP_EVERY = 50;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Op = { name: string; args: (string | number)[]; run: (root: string) => Promise<void> };

const NAMES = ['a', 'b', 'c', 'etc', 'usr', 'opq', 'var', 'new', 'd1', 'hosts', 'motd', 'log', 'x'];

function makeOp(r: () => number, known: string[]): Op {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const fresh = (): string => {
    const base = known.length && r() < 0.7 ? pick(known) : '';
    const dir = base && r() < 0.6 ? base : path.dirname(base || 'x');
    const n = pick(NAMES) + (r() < 0.3 ? String(Math.floor(r() * 3)) : '');
    return dir === '.' || dir === '' ? n : `${dir}/${n}`;
  };
  const anyPath = (): string => (known.length && r() < 0.75 ? pick(known) : fresh());
  const k = r();
  const p = anyPath();
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
  if (k < 0.12) {
    const mode = pick([0o644, 0o600, 0o755, 0o640]);
    const q = fresh();
    return { name: 'create', args: [q, mode], run: async (root) => (await open(path.join(root, q), 'wx', mode)).close() };
  }
  if (k < 0.26) {
    const off = Math.floor(r() * 9000);
    const data = bytes(1 + Math.floor(r() * 5000));
    return {
      name: 'write',
      args: [p, off, data.length],
      run: async (root) => {
        // O_NONBLOCK: a FIFO without a reader must fail (ENXIO), not hang the test
        const fh = await open(path.join(root, p), fsc.O_RDWR | fsc.O_NONBLOCK);
        try {
          await fh.write(data, 0, data.length, off);
        } finally {
          await fh.close();
        }
      },
    };
  }
  if (k < 0.32) {
    const len = Math.floor(r() * 12000);
    return { name: 'truncate', args: [p, len], run: (root) => truncate(path.join(root, p), len) };
  }
  if (k < 0.44) {
    const q = r() < 0.5 ? fresh() : anyPath();
    return { name: 'rename', args: [p, q], run: (root) => rename(path.join(root, p), path.join(root, q)) };
  }
  if (k < 0.52) return { name: 'unlink', args: [p], run: (root) => unlink(path.join(root, p)) };
  if (k < 0.6) {
    const q = fresh();
    const mode = pick([0o755, 0o700, 0o775]);
    return { name: 'mkdir', args: [q, mode], run: (root) => mkdir(path.join(root, q), { mode }) };
  }
  if (k < 0.67) return { name: 'rmdir', args: [p], run: (root) => rmdir(path.join(root, p)) };
  if (k < 0.72) {
    const q = fresh();
    const t = pick(['a', '../etc/hosts', '/etc/passwd', 'nowhere', p]);
    return { name: 'symlink', args: [t, q], run: (root) => symlink(t, path.join(root, q)) };
  }
  if (k < 0.78) {
    const q = fresh();
    return { name: 'link', args: [p, q], run: (root) => link(path.join(root, p), path.join(root, q)) };
  }
  if (k < 0.84) {
    const mode = pick([0o600, 0o644, 0o755, 0o700, 0o4755, 0o1777]);
    return { name: 'chmod', args: [p, mode], run: (root) => chmod(path.join(root, p), mode) };
  }
  if (k < 0.87) {
    // explicit times with nanoseconds (atime = mtime: fuse-native's utimens passes one time for both)
    const ns = 1609459200000000000n + BigInt(Math.floor(r() * 2 ** 40)) * 1000n + BigInt(Math.floor(r() * 1000));
    const s = Number(ns / 1_000_000_000n);
    const n = Number(ns % 1_000_000_000n);
    return { name: 'utimes', args: [p, String(ns)], run: async (root) => native.lutimens(path.join(root, p), s, n, s, n) };
  }
  if (k < 0.9) {
    const uid = pick([0, 1, 1000]);
    const gid = pick([0, 2, 1000]);
    return { name: 'chown', args: [p, uid, gid], run: (root) => lchown(path.join(root, p), uid, gid) };
  }
  if (k < 0.95) {
    const key = pick(['user.a', 'user.b']);
    const val = bytes(1 + Math.floor(r() * 20));
    const flags = pick([0, 0, 1, 2]);
    // the test process is not the FUSE server, so a synchronous xattr call on the mount cannot deadlock
    return { name: 'setxattr', args: [p, key, flags], run: async (root) => native.lsetxattr(path.join(root, p), key, val, flags) };
  }
  const data = bytes(Math.floor(r() * 3000));
  const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NONBLOCK;
  return { name: 'rewrite', args: [p, data.length], run: (root) => writeFile(path.join(root, p), data, { flag: flags, mode: 0o644 }) };
}

async function outcome(op: Op, root: string): Promise<string> {
  try {
    await op.run(root);
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

const { live } = undoAfter();

/**
 * The seeds: fixed ones by default, so that every run (CI's too) checks the same sequences and a failure replays;
 * LAYERFS_FUZZ_SEED=N replays one, LAYERFS_FUZZ_RANDOM=1 draws new ones (to look for more). A seed that found a
 * difference not fixed yet stays as a `todo` case below, named, until it passes.
 */
const FIXED_SEEDS = [20261204, 1634261622, 987654321, 31337, 4242, 7];
const KNOWN_OPEN: { seed: number; transport: string; layers: number; why: string }[] = [
  { seed: 421705291, transport: 'direct', layers: 3, why: "an mtime of /usr moves on the kernel and not on ours between steps 150 and 199 (cause not found yet)" },
];
let caseNo = 0;

type Case = { layers: 3 | 6; transport: (typeof FUSE_TRANSPORTS)[number]; seed: number; todo?: string };
const cases: Case[] = [];
for (const layers of [3, 6] as const)
  for (const transport of FUSE_TRANSPORTS) {
    const fixed = FIXED_SEEDS[caseNo++ % FIXED_SEEDS.length]!;
    const seed = Number(process.env.LAYERFS_FUZZ_SEED ?? (process.env.LAYERFS_FUZZ_RANDOM === '1' ? Math.floor(Math.random() * 2 ** 31) : fixed));
    cases.push({ layers, transport, seed });
  }
if (process.env.LAYERFS_FUZZ_SEED === undefined) for (const k of KNOWN_OPEN) cases.push({ layers: k.layers as 3 | 6, transport: k.transport as Case['transport'], seed: k.seed, todo: k.why });

for (const { layers, transport, seed, todo } of cases) {
  test(`differential: random ops on kernel overlay vs layerfs FUSE (${transport}, ${layers} lower layers, seed ${seed})`, { timeout: 300_000, ...(todo ? { todo } : {}) }, async () => {
    const dir = await tmpDir('fuzz');
    const mounts = live;
    let step = -1;
    let last = '';
    try {
      const lowers = await buildLowers(path.join(dir, 'lowers'), 'kernel', { layers, hardlinks: process.env.LAYERFS_FUZZ_HARDLINKS !== '0' });
      const before = BigInt(Date.now() - 1000) * 1_000_000n;
      for (const d of ['uk', 'wk', 'uf', 'wf']) await mkdir(path.join(dir, d));
      // the kernel as the FUSE overlay copies it (index=on, redirect_dir=on); LAYERFS_FUZZ_EXACT=0: index=off, redirect_dir=off
      const exact = process.env.LAYERFS_FUZZ_EXACT !== '0';
      const k = await mountKernel(lowers, path.join(dir, 'mk'), path.join(dir, 'uk'), path.join(dir, 'wk'), { exact });
      mounts.push(k);
      const f = await mountFuse(lowers, path.join(dir, 'mf'), path.join(dir, 'uf'), path.join(dir, 'wf'), transport);
      mounts.push(f);
      const r = rng(seed);
      console.log(`# seed ${seed}`);
      let known = [...(await snapshot(k.mnt)).keys()].filter((p) => p !== '.');
      const opts = { fileNlink: true, dirNlink: false, mtimeNs: { before, unit: transport === 'fuse-native' ? 1_000_000n : 1n } };
      let skipped = 0;
      for (step = 0; step < OPS; step++) {
        const op = makeOp(r, known);
        last = `${op.name}(${op.args.join(', ')})`;
        const rk = await outcome(op, k.mnt);
        if (rk === 'EXDEV' && op.name === 'rename') {
          skipped++; // lower dir rename: known difference (see the header)
          continue;
        }
        if (process.env.LAYERFS_FUZZ_TRACE) console.log(`# ${step} ${last} ...`);
        const rf = await outcome(op, f.mnt);
        if (process.env.LAYERFS_FUZZ_TRACE) console.log(`# ${step} ${last} -> ${rk}/${rf}`);
        assert.equal(rf, rk, `seed ${seed} step ${step} ${last}: fuse=${rf} kernel=${rk}`);
        if (step % SNAP_EVERY === SNAP_EVERY - 1 || step === OPS - 1) {
          const [sk, sf] = [await snapshot(k.mnt, opts), await snapshot(f.mnt, opts)];
          const d = diffSnapshots(sk, sf, 'kernel', 'fuse');
          assert.deepEqual(d.slice(0, 10), [], `seed ${seed} step ${step} after ${last}: trees differ`);
          known = [...sk.keys()].filter((p) => p !== '.');
        }
      }
      const final = await snapshot(f.mnt, opts);
      await f.stop();
      // the FUSE upper, read by the kernel, is the same tree
      const k2 = await mountKernel(lowers, path.join(dir, 'mk2'), path.join(dir, 'uf'), path.join(dir, 'wf'), { exact });
      mounts.push(k2);
      const d = diffSnapshots(final, await snapshot(k2.mnt, opts), 'fuse', 'kernel-on-fuse-upper');
      assert.deepEqual(d.slice(0, 10), [], `seed ${seed}: kernel view of the FUSE upper differs`);
      console.log(`# seed ${seed}: ${OPS} ops over ${layers} layers, ${skipped} lower-dir renames skipped`);
    } catch (err) {
      console.log(`# differential test failed: seed ${seed}, step ${step}, op ${last}`);
      throw err;
    } finally {
      for (const m of mounts.reverse()) await m.stop().catch(() => undefined);
      await cleanup(dir);
    }
  });
}
