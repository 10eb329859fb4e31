/**
 * FALLOCATE, LSEEK (SEEK_DATA / SEEK_HOLE) and COPY_FILE_RANGE on direct-transport mounts, zero-open (requests keyed
 * by node id, fh 0), with real file handles (LAYERFS_FUSE_ZERO_OPEN=0) and with passthrough opens (their data read
 * and written by the kernel from the backing files, these ops still sent with handles). Every result is checked against the data
 * it must give, against the backing files where it reads them, and against kernel overlay running the same steps on
 * the same lower. The servers' request counts show the ops reached them (the kernel falls back silently otherwise:
 * lseek to "all data", copy_file_range to READs and WRITEs). Each server is a child process; this process uses async
 * fs calls and child processes (fallocate(1), truncate(1), python3 for lseek and copy_file_range).
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { mountFuse, mountKernel, serverStats, tmpDir, type Mounted, undoAfter } from './lib/fuse.js';
import { forceUnmount } from './lib/mounts.js';

const run = promisify(execFile);
const { live, mounts: tmpfsMounts, dirs } = undoAfter();

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = { errno: 6 };
const EOPNOTSUPP = { errno: 95 };
const FALLOC_FL_ZERO_RANGE = 16;
const MiB = 1 << 20;

/** Runs a list of steps in one python3 process: lseek, fallocate(2) (for its errno) and copy_file_range loops. */
const OPS_PY = `
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
def step(op):
    k = op[0]
    if k == 'seek':
        fd = os.open(op[1], os.O_RDONLY)
        try:
            return os.lseek(fd, op[2], op[3])
        finally:
            os.close(fd)
    if k == 'fallocate':
        fd = os.open(op[1], os.O_RDWR)
        try:
            if libc.fallocate(fd, op[2], op[3], op[4]) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            return 0
        finally:
            os.close(fd)
    if k == 'copy':
        # copy_file_range until n bytes are copied or the input ends (it may copy less per call): [bytes, calls that copied]
        src, soff, dst, doff, n = op[1:]
        a = os.open(src, os.O_RDONLY)
        b = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            done = calls = 0
            while done < n:
                got = os.copy_file_range(a, b, n - done, soff + done, doff + done)
                if got == 0:
                    break  # at the end of the input: answered by the kernel itself
                calls += 1
                done += got
            return [done, calls]
        finally:
            os.close(a)
            os.close(b)
    raise ValueError(k)
out = []
for op in json.loads(sys.argv[1]):
    try:
        out.append(step(op))
    except OSError as e:
        out.append({'errno': e.errno})
print(json.dumps(out))
`;

type Op = [string, ...(string | number)[]];

/** Run steps whose paths are relative to root; one result (or {errno}) per step. */
async function ops(root: string, steps: Op[]): Promise<unknown[]> {
  const abs = steps.map(([k, ...a]) => [k, ...a.map((x, i) => (typeof x === 'string' && (i === 0 || (k === 'copy' && i === 2)) ? path.join(root, x) : x))]);
  const { stdout } = await run('python3', ['-c', OPS_PY, JSON.stringify(abs)]);
  return JSON.parse(stdout) as unknown[];
}

/** Bytes 1..251 (never 0, so a zeroed range shows). */
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = ((i * 7 + seed * 13 + (i >> 12)) % 251) + 1;
  return b;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);
const zeros = (n: number) => Buffer.alloc(n);

const LOWER = {
  'data.bin': pattern(256 << 10, 1),
  'zr.bin': pattern(128 << 10, 2),
  'src.bin': pattern(MiB + (MiB >> 1) + 123, 3),
  'dst.bin': pattern(64 << 10, 4),
  'self.bin': pattern(40000, 5),
};
/** Larger than the 64 MiB one COPY_FILE_RANGE request copies. */
const BIG = 65 * MiB + 5;
const bigData = (() => {
  const b = Buffer.alloc(BIG);
  const block = pattern(MiB, 6);
  for (let o = 0; o < BIG; o += MiB) block.copy(b, o, 0, Math.min(MiB, BIG - o));
  for (let o = 0; o < BIG; o += MiB) b.writeUInt32LE(o / MiB + 1, o); // each MiB different
  return b;
})();
const SPARSE_SIZE = 8 * MiB;
const SPARSE_AT = 4 * MiB;

async function buildLower(lower: string): Promise<void> {
  await mkdir(lower, { recursive: true });
  for (const [name, data] of Object.entries(LOWER)) await writeFile(path.join(lower, name), data);
  await writeFile(path.join(lower, 'big.bin'), bigData);
  // sparse: 8 MiB with 16 KiB of data at 4 MiB
  await run('truncate', ['-s', String(SPARSE_SIZE), path.join(lower, 'sparse')]);
  const fh = await open(path.join(lower, 'sparse'), 'r+');
  await fh.write(pattern(16 << 10, 7), 0, 16 << 10, SPARSE_AT);
  await fh.close();
  // holes: 64 MiB with 4 KiB of data at 1 MiB and at 40 MiB, copied up by a write in the test
  await run('truncate', ['-s', String(HOLES_SIZE), path.join(lower, 'holes')]);
  const hh = await open(path.join(lower, 'holes'), 'r+');
  for (const at of HOLES_DATA) await hh.write(pattern(4096, at / MiB), 0, 4096, at);
  await hh.close();
}

const HOLES_SIZE = 64 * MiB;
const HOLES_DATA = [MiB, 40 * MiB];
const SEEKS_HOLES: Op[] = [
  ['seek', 'holes', 0, SEEK_HOLE],
  ['seek', 'holes', 4096, SEEK_DATA],
  ['seek', 'holes', MiB, SEEK_HOLE],
  ['seek', 'holes', MiB + 4096, SEEK_DATA],
  ['seek', 'holes', 40 * MiB + 4096, SEEK_DATA],
];

/** Write one byte at offset 0 of `holes` (a copy-up); what the file then is, through the mount and in the upper. */
async function copyUpHoles(mnt: string, upper: string): Promise<{ sha: string; size: number; upperBlocks: number; seeks: unknown[] }> {
  const fh = await open(path.join(mnt, 'holes'), 'r+');
  await fh.write(Buffer.from('x'), 0, 1, 0);
  await fh.close();
  const data = await readFile(path.join(mnt, 'holes'));
  return { sha: sha(data), size: data.length, upperBlocks: (await stat(path.join(upper, 'holes'))).blocks, seeks: await ops(mnt, SEEKS_HOLES) };
}

const statsOf = async (pid: number, file: string) => (await serverStats<{ byOp: Record<string, number> }>(pid, file)).byOp;

const delta = (a: Record<string, number>, b: Record<string, number>, ...names: string[]) => names.reduce((s, n) => s + (b[n] ?? 0) - (a[n] ?? 0), 0);

/** A direct mount (zero-open or not) and a kernel overlay mount of one lower, each with its own upper. */
async function mounts(tag: string, zeroOpen: boolean, upperFs?: 'tmpfs', passthrough = false): Promise<{ dir: string; lower: string; fuse: Mounted & { pid: number }; kern: Mounted; fuseUpper: string; kernUpper: string; stats: string }> {
  const dir = await tmpDir(tag);
  dirs.push(dir);
  const lower = path.join(dir, 'lower');
  await buildLower(lower);
  let up = dir;
  if (upperFs === 'tmpfs') {
    up = path.join(dir, 'tmpfs');
    await mkdir(up);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', up]);
    tmpfsMounts.push(up);
  }
  const [fu, fw, ku, kw] = ['fu', 'fw', 'ku', 'kw'].map((d) => path.join(up, d));
  for (const d of [fu, fw, ku, kw]) await mkdir(d);
  const stats = path.join(dir, 'stats.jsonl');
  const saved = { zero: process.env.LAYERFS_FUSE_ZERO_OPEN, stats: process.env.LAYERFS_FUSE_STATS, pt: process.env.LAYERFS_FUSE_PASSTHROUGH };
  process.env.LAYERFS_FUSE_STATS = stats;
  if (passthrough) process.env.LAYERFS_FUSE_PASSTHROUGH = '1';
  else delete process.env.LAYERFS_FUSE_PASSTHROUGH;
  if (zeroOpen) delete process.env.LAYERFS_FUSE_ZERO_OPEN;
  else process.env.LAYERFS_FUSE_ZERO_OPEN = '0';
  let fuse: Mounted & { pid: number };
  try {
    fuse = await mountFuse([lower], path.join(dir, 'fm'), fu, fw, 'direct');
  } finally {
    for (const [k, v] of [['LAYERFS_FUSE_ZERO_OPEN', saved.zero], ['LAYERFS_FUSE_STATS', saved.stats], ['LAYERFS_FUSE_PASSTHROUGH', saved.pt]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  live.push(fuse);
  const kern = await mountKernel([lower], path.join(dir, 'km'), ku, kw);
  live.push(kern);
  return { dir, lower, fuse, kern, fuseUpper: fu, kernUpper: ku, stats };
}

async function info(p: string): Promise<{ size: number; blocks: number; sha: string }> {
  const st = await stat(p);
  return { size: st.size, blocks: st.blocks, sha: sha(await readFile(p)) };
}

/** The fallocate steps (fallocate(1) in the mount); what each left, per file. */
async function allocSteps(root: string): Promise<Record<string, unknown>> {
  const fa = (...args: string[]) => run('fallocate', args, { cwd: root });
  const r: Record<string, unknown> = {};
  // read first: the kernel caches the pages the punch and the zeroing must drop
  await readFile(path.join(root, 'data.bin'));
  await readFile(path.join(root, 'zr.bin'));
  r.dataBefore = (await stat(path.join(root, 'data.bin'))).blocks;
  await fa('-l', '1M', 'new1m');
  r.new1m = await info(path.join(root, 'new1m'));
  await fa('-p', '-o', '65536', '-l', '65536', 'data.bin');
  r.data = await info(path.join(root, 'data.bin'));
  await fa('-z', '-o', '4096', '-l', '8192', 'zr.bin');
  r.zr1 = await info(path.join(root, 'zr.bin'));
  await fa('-n', '-o', '131072', '-l', '1048576', 'zr.bin'); // keep size: blocks past the end
  r.zr2 = await info(path.join(root, 'zr.bin'));
  await fa('-z', '-o', '126976', '-l', '16384', 'zr.bin'); // zeroes past the end: the file grows
  r.zr3 = await info(path.join(root, 'zr.bin'));
  return r;
}

/** Without st_blocks (the two overlays' copy-ups may allocate differently). */
function noBlocks(r: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(r, (k, v: unknown) => (k === 'blocks' || k === 'dataBefore' ? undefined : v))) as Record<string, unknown>;
}

const SEEKS_LOWER: Op[] = [
  ['seek', 'sparse', 0, SEEK_DATA],
  ['seek', 'sparse', 0, SEEK_HOLE],
  ['seek', 'sparse', SPARSE_AT, SEEK_HOLE],
  ['seek', 'sparse', SPARSE_AT + (16 << 10), SEEK_DATA],
  ['seek', 'sparse', SPARSE_SIZE - 1, SEEK_HOLE],
  ['seek', 'sparse', SPARSE_SIZE, SEEK_HOLE],
];
const SEEKS_UPPER: Op[] = [
  ['seek', 'usparse', 0, SEEK_DATA],
  ['seek', 'usparse', 0, SEEK_HOLE],
  ['seek', 'usparse', MiB, SEEK_HOLE],
  ['seek', 'usparse', MiB + 4096, SEEK_DATA],
];
/** data.bin after the punch (run after allocSteps): the hole is at 64-128 KiB. */
const SEEKS_PUNCHED: Op[] = [
  ['seek', 'data.bin', 0, SEEK_HOLE],
  ['seek', 'data.bin', 65536, SEEK_DATA],
];

/** A sparse file made through the mount: 8 MiB with 4 KiB of data at 1 MiB. */
async function makeUpperSparse(root: string): Promise<void> {
  await run('truncate', ['-s', String(8 * MiB), 'usparse'], { cwd: root });
  const fh = await open(path.join(root, 'usparse'), 'r+');
  await fh.write(pattern(4096, 8), 0, 4096, MiB);
  await fh.close();
}

const COPIES: Op[] = [
  ['copy', 'src.bin', 0, 'c1', 0, 4 * MiB], // lower -> new file, more than one 1 MiB step
  ['copy', 'c1', 1000, 'c2', 4096, 100000], // upper -> new file at an offset (a hole before it)
  ['copy', 'c1', 0, 'c1', LOWER['src.bin'].length, 65536], // within one upper file, growing it
  ['copy', 'src.bin', 1000, 'dst.bin', 10, 100], // into a lower file: copied up first
  ['copy', 'self.bin', 0, 'self.bin', 40000, 40000], // within one lower file: source and destination copied up
  ['copy', 'big.bin', 0, 'cbig', 0, BIG], // past one request's 64 MiB
];
const COPY_NAMES = ['c1', 'c2', 'dst.bin', 'self.bin', 'cbig', 'src.bin', 'big.bin'];

async function contents(root: string, names: string[]): Promise<Record<string, { size: number; sha: string }>> {
  const out: Record<string, { size: number; sha: string }> = {};
  for (const n of names) {
    const i = await info(path.join(root, n));
    out[n] = { size: i.size, sha: i.sha };
  }
  return out;
}

// passthrough: the kernel reads and writes the backing files itself, and still sends these ops, with handles
for (const mode of ['zero', 'fh', 'pt'] as const) {
  const zeroOpen = mode === 'zero';
  const pt = mode === 'pt';
  const label = { zero: 'zero-open, by node id', fh: 'real file handles (LAYERFS_FUSE_ZERO_OPEN=0)', pt: 'passthrough opens (LAYERFS_FUSE_PASSTHROUGH=1)' }[mode];
  describe(`direct transport: fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range (${label})`, () => {
    let m: Awaited<ReturnType<typeof mounts>>;
    before(async () => {
      m = await mounts(`frange${mode}`, zeroOpen, undefined, pt);
    });

    test('fallocate: preallocate a new file, punch a hole in a lower file (copied up), zero a range, keep size', async () => {
      const s0 = await statsOf(m.fuse.pid, m.stats);
      const r = await allocSteps(m.fuse.mnt);
      const s1 = await statsOf(m.fuse.pid, m.stats);
      assert.equal(delta(s0, s1, 'FALLOCATE'), 5, 'every fallocate(1) reached the server');
      // the mode under test is the one running: zero-open answers OPEN once (ENOSYS), real handles open each time
      if (zeroOpen) assert.ok((s1.OPEN ?? 0) <= 1, `OPEN ${s1.OPEN}`);
      else assert.ok(delta(s0, s1, 'OPEN') >= 5 && delta(s0, s1, 'RELEASE') >= 5, `OPEN ${delta(s0, s1, 'OPEN')}`);

      // fallocate -l 1M: 1 MiB of zeros, allocated
      const n = r.new1m as { size: number; blocks: number; sha: string };
      assert.equal(n.size, MiB);
      assert.ok(n.blocks >= 2048, `blocks ${n.blocks}`);
      assert.equal(n.sha, sha(zeros(MiB)));
      assert.ok((await stat(path.join(m.fuseUpper, 'new1m'))).blocks >= 2048);

      // fallocate -p: zeros in the hole (the kernel's cached pages of it dropped), the rest intact, fewer blocks;
      // the lower file untouched
      const want = Buffer.from(LOWER['data.bin']);
      want.fill(0, 65536, 131072);
      const d = r.data as { size: number; blocks: number; sha: string };
      assert.equal(d.size, 256 << 10);
      assert.equal(d.sha, sha(want));
      assert.ok(d.blocks <= (r.dataBefore as number) - 128, `blocks ${r.dataBefore} -> ${d.blocks}`);
      assert.ok((await readFile(path.join(m.fuse.mnt, 'data.bin'))).equals(want));
      assert.ok((await readFile(path.join(m.fuseUpper, 'data.bin'))).equals(want), 'copied up, then punched');
      assert.ok((await readFile(path.join(m.lower, 'data.bin'))).equals(LOWER['data.bin']), 'lower file untouched');

      // fallocate -z (cached range dropped), -n past the end (size kept, blocks added), -z past the end (grows)
      const zr = Buffer.from(LOWER['zr.bin']);
      zr.fill(0, 4096, 12288);
      const [z1, z2, z3] = [r.zr1, r.zr2, r.zr3] as { size: number; blocks: number; sha: string }[];
      assert.deepEqual([z1.size, z1.sha], [128 << 10, sha(zr)]);
      assert.deepEqual([z2.size, z2.sha], [128 << 10, sha(zr)]);
      assert.ok(z2.blocks >= z1.blocks + 2048, `keep-size blocks ${z1.blocks} -> ${z2.blocks}`);
      const grown = Buffer.concat([zr.subarray(0, 126976), zeros(16384)]);
      assert.deepEqual([z3.size, z3.sha], [143360, sha(grown)]);
      assert.ok((await readFile(path.join(m.fuse.mnt, 'zr.bin'))).equals(grown));
      assert.ok((await readFile(path.join(m.lower, 'zr.bin'))).equals(LOWER['zr.bin']), 'lower file untouched');

      // kernel overlay, the same steps: the same sizes and contents
      assert.deepEqual(noBlocks(r), noBlocks(await allocSteps(m.kern.mnt)));
    });

    test('fallocate: collapse range, which the FUSE kernel does not pass on, fails EOPNOTSUPP without a request', async () => {
      const before = await info(path.join(m.fuse.mnt, 'data.bin'));
      const s0 = await statsOf(m.fuse.pid, m.stats);
      assert.deepEqual(await ops(m.fuse.mnt, [['fallocate', 'data.bin', 8, 0, 4096]]), [EOPNOTSUPP]);
      const s1 = await statsOf(m.fuse.pid, m.stats);
      assert.equal(delta(s0, s1, 'FALLOCATE'), 0);
      assert.deepEqual(await info(path.join(m.fuse.mnt, 'data.bin')), before);
    });

    test('SEEK_DATA / SEEK_HOLE: a sparse lower file (no copy-up), a sparse upper file, a punched hole', async () => {
      await makeUpperSparse(m.fuse.mnt);
      await makeUpperSparse(m.kern.mnt);
      const s0 = await statsOf(m.fuse.pid, m.stats);
      const lower = await ops(m.fuse.mnt, SEEKS_LOWER);
      const upper = await ops(m.fuse.mnt, SEEKS_UPPER);
      const punched = await ops(m.fuse.mnt, SEEKS_PUNCHED);
      const s1 = await statsOf(m.fuse.pid, m.stats);
      assert.equal(delta(s0, s1, 'LSEEK'), SEEKS_LOWER.length + SEEKS_UPPER.length + SEEKS_PUNCHED.length, 'every SEEK_DATA/SEEK_HOLE reached the server');
      assert.deepEqual(lower, [SPARSE_AT, 0, SPARSE_AT + (16 << 10), ENXIO, SPARSE_SIZE - 1, ENXIO]);
      assert.deepEqual(upper, [MiB, 0, MiB + 4096, ENXIO]);
      assert.deepEqual(punched, [65536, 131072]);
      // the same answers as the backing files give, and the lower one was not copied up
      assert.deepEqual(lower, await ops(m.lower, SEEKS_LOWER));
      assert.deepEqual(upper, await ops(m.fuseUpper, SEEKS_UPPER));
      await assert.rejects(stat(path.join(m.fuseUpper, 'sparse')), { code: 'ENOENT' });
      // and as kernel overlay gives
      assert.deepEqual([lower, upper, punched], [await ops(m.kern.mnt, SEEKS_LOWER), await ops(m.kern.mnt, SEEKS_UPPER), await ops(m.kern.mnt, SEEKS_PUNCHED)]);
    });

    test('copy-up of a sparse lower file keeps its holes, as kernel overlay does', async () => {
      const got = await copyUpHoles(m.fuse.mnt, m.fuseUpper);
      const want = Buffer.alloc(HOLES_SIZE);
      for (const at of HOLES_DATA) pattern(4096, at / MiB).copy(want, at);
      want[0] = 'x'.charCodeAt(0);
      assert.deepEqual([got.size, got.sha], [HOLES_SIZE, sha(want)]);
      // 3 pages of data: well under 1 MiB allocated (a dense copy would be 64 MiB)
      assert.ok(got.upperBlocks * 512 < MiB, `upper blocks ${got.upperBlocks}`);
      assert.deepEqual(got.seeks, [4096, MiB, MiB + 4096, 40 * MiB, ENXIO]);
      // kernel overlay: the same data, and holes kept too, at its copy-up's 1 MiB granularity (each 1 MiB chunk
      // with data is copied whole: 2 MiB allocated here, where this copy-up keeps only the pages with data)
      const kern = await copyUpHoles(m.kern.mnt, m.kernUpper);
      assert.deepEqual([kern.size, kern.sha], [got.size, got.sha]);
      assert.ok(kern.upperBlocks * 512 <= 2 * MiB + 65536, `kernel overlay's upper blocks ${kern.upperBlocks}`);
    });

    test('copy_file_range: lower to new, within the mount, within one file, into a lower file, past 64 MiB', async () => {
      await readFile(path.join(m.fuse.mnt, 'dst.bin')); // cached: the copy must drop the range it writes
      // passthrough refuses a write open of a lower file that a passthrough open is reading (the copy's own source
      // here: fuse-passthrough.test.ts): the file within one lower file is copied up first (chmod), on both mounts
      if (pt) for (const root of [m.fuse.mnt, m.kern.mnt]) await chmod(path.join(root, 'self.bin'), 0o644);
      const dstBefore = await stat(path.join(m.fuse.mnt, 'dst.bin'));
      const s0 = await statsOf(m.fuse.pid, m.stats);
      const res = (await ops(m.fuse.mnt, COPIES)) as [number, number][];
      const s1 = await statsOf(m.fuse.pid, m.stats);
      const calls = res.reduce((s, [, c]) => s + c, 0);
      assert.equal(delta(s0, s1, 'COPY_FILE_RANGE', 'COPY_FILE_RANGE_64'), calls, 'every copy_file_range reached the server');
      assert.equal(delta(s0, s1, 'WRITE'), 0, 'no fallback to READ/WRITE');
      const src = LOWER['src.bin'];
      assert.deepEqual(
        res.map(([n]) => n),
        [src.length, 100000, 65536, 100, 40000, BIG],
      );
      assert.ok(res[5][1] >= 2, `the 65 MiB copy took ${res[5][1]} calls`);

      const c1 = Buffer.concat([src, src.subarray(0, 65536)]);
      const c2 = Buffer.concat([zeros(4096), src.subarray(1000, 101000)]);
      const dst = Buffer.from(LOWER['dst.bin']);
      src.copy(dst, 10, 1000, 1100);
      const self = Buffer.concat([LOWER['self.bin'], LOWER['self.bin']]);
      const want: Record<string, Buffer> = { c1, c2, 'dst.bin': dst, 'self.bin': self, cbig: bigData, 'src.bin': src, 'big.bin': bigData };
      const got = await contents(m.fuse.mnt, COPY_NAMES);
      for (const name of COPY_NAMES) assert.deepEqual(got[name], { size: want[name].length, sha: sha(want[name]) }, name);
      // size and mtime right at once (the kernel dropped its cached attributes of the destination)
      const dstAfter = await stat(path.join(m.fuse.mnt, 'dst.bin'));
      assert.ok(dstAfter.mtimeMs > dstBefore.mtimeMs, `mtime ${dstBefore.mtimeMs} -> ${dstAfter.mtimeMs}`);
      // the upper copies hold it; the lower files are untouched
      for (const name of ['dst.bin', 'self.bin']) {
        assert.ok((await readFile(path.join(m.fuseUpper, name))).equals(want[name]), `upper ${name}`);
        assert.ok((await readFile(path.join(m.lower, name))).equals(LOWER[name as keyof typeof LOWER]), `lower ${name}`);
      }
      await assert.rejects(stat(path.join(m.fuseUpper, 'src.bin')), { code: 'ENOENT' }, 'a copy source is not copied up');
      // kernel overlay: the same byte counts and contents
      const kres = (await ops(m.kern.mnt, COPIES)) as [number, number][];
      assert.deepEqual(kres.map(([n]) => n), res.map(([n]) => n));
      assert.deepEqual(await contents(m.kern.mnt, COPY_NAMES), got);
    });

    test('upper on another fs (tmpfs): copy_file_range from the lower falls back to a buffer copy; fallocate -z fails as tmpfs does', async () => {
      const x = await mounts(`frangex${mode}`, zeroOpen, 'tmpfs', pt);
      try {
        const steps: Op[] = [
          ['copy', 'src.bin', 0, 'x', 0, 4 * MiB],
          ['fallocate', 'x', FALLOC_FL_ZERO_RANGE, 0, 4096],
          ['fallocate', 'x', 3, 4096, 8192], // punch hole | keep size: tmpfs has it
        ];
        const s0 = await statsOf(x.fuse.pid, x.stats);
        const res = await ops(x.fuse.mnt, steps);
        const s1 = await statsOf(x.fuse.pid, x.stats);
        const src = LOWER['src.bin'];
        assert.deepEqual(res, [[src.length, (res[0] as number[])[1]], EOPNOTSUPP, 0]);
        assert.equal(delta(s0, s1, 'COPY_FILE_RANGE', 'COPY_FILE_RANGE_64'), (res[0] as number[])[1]);
        assert.equal(delta(s0, s1, 'WRITE'), 0, 'no fallback to READ/WRITE');
        assert.equal(delta(s0, s1, 'FALLOCATE'), 2, 'ZERO_RANGE reached the server and got tmpfs\'s answer');
        const want = Buffer.from(src);
        want.fill(0, 4096, 12288);
        assert.deepEqual(await info(path.join(x.fuse.mnt, 'x')).then((i) => [i.size, i.sha]), [src.length, sha(want)]);
        assert.ok((await readFile(path.join(x.fuseUpper, 'x'))).equals(want));
        // kernel overlay over the same kind of upper: the same fallocate answers; its copy_file_range says EXDEV
        // across the two filesystems (callers such as cp then copy by themselves), where this one copies
        const kres = await ops(x.kern.mnt, steps);
        assert.deepEqual(kres.slice(1), res.slice(1));
        assert.ok(JSON.stringify(kres[0]) === JSON.stringify({ errno: 18 }) || (kres[0] as number[])[0] === src.length, JSON.stringify(kres[0]));
      } finally {
        await x.fuse.stop();
        await x.kern.stop();
        await forceUnmount(path.join(x.dir, 'tmpfs'));
      }
    });
  });
}

describe('direct transport: the 32-bit COPY_FILE_RANGE of kernels before COPY_FILE_RANGE_64', () => {
  let m: Awaited<ReturnType<typeof mounts>>;
  before(async () => {
    // the server answers COPY_FILE_RANGE_64 with ENOSYS (test hook): the kernel then sends the older op
    process.env.LAYERFS_FUSE_NO_COPY_FILE_RANGE_64 = '1';
    try {
      m = await mounts('frange47', true);
    } finally {
      delete process.env.LAYERFS_FUSE_NO_COPY_FILE_RANGE_64;
    }
  });

  test('copies answered with fuse_write_out: contents and counts as kernel overlay, past 64 MiB too', async () => {
    const steps: Op[] = [
      ['copy', 'src.bin', 0, 'c1', 0, 4 * MiB],
      ['copy', 'src.bin', 1000, 'dst.bin', 10, 100],
      ['copy', 'big.bin', 0, 'cbig', 0, BIG],
    ];
    const s0 = await statsOf(m.fuse.pid, m.stats);
    const res = (await ops(m.fuse.mnt, steps)) as [number, number][];
    const s1 = await statsOf(m.fuse.pid, m.stats);
    const src = LOWER['src.bin'];
    assert.deepEqual(res.map(([n]) => n), [src.length, 100, BIG]);
    assert.equal(delta(s0, s1, 'COPY_FILE_RANGE_64'), 1, 'one COPY_FILE_RANGE_64, answered ENOSYS, then never again');
    assert.equal(delta(s0, s1, 'COPY_FILE_RANGE'), res.reduce((s, [, c]) => s + c, 0), 'every copy_file_range as the 32-bit op');
    assert.equal(delta(s0, s1, 'WRITE'), 0, 'no fallback to READ/WRITE');
    const kres = (await ops(m.kern.mnt, steps)) as [number, number][];
    assert.deepEqual(kres.map(([n]) => n), res.map(([n]) => n));
    const names = ['c1', 'dst.bin', 'cbig'];
    assert.deepEqual(await contents(m.fuse.mnt, names), await contents(m.kern.mnt, names));
  });
});
