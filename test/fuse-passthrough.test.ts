/**
 * FUSE passthrough on direct mounts (`-o passthrough`, kernel 6.9+): opened files are read, written and mmapped by
 * the kernel straight from their backing file. Shown through the servers' request counts (no READ or WRITE reaches
 * a passthrough server; a plain server gets both for the same steps), the data in the upper and lower dirs, the
 * sizes and times seen through the mount right after writes, the overlay's one conflict (a change of a lower file
 * that passthrough opens are reading fails ETXTBSY, see DirectTransport.openFile) and the fallbacks to plain opens:
 * BACKING_OPEN refused for the whole mount (forced by LAYERFS_FUSE_PASSTHROUGH_FAIL=EPERM, as without CAP_SYS_ADMIN)
 * and for some files only (a lower dir on a kernel overlay mount: stacked too deep, ELOOP).
 * Each server is a child process; this process uses async fs calls and python3 child processes for the steps that
 * need fds held open, pwrite, ftruncate and mmap.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { mountFuse, mountKernel, serverStats, tmpDir, type Mounted, type TestTransport, seededBytes, undoAfter } from './lib/fuse.js';

const run = promisify(execFile);
const { live, dirs } = undoAfter();

/**
 * Runs steps (JSON on argv) in one python3 process, fds named by the steps; prints one result per step: a value, or
 * the errno name of a failure. Steps: open NAME PATH FLAGS, read NAME N OFF (text), readsha PATH (whole file, 64 KiB
 * reads), pwrite NAME OFF TEXT, write NAME TEXT, ftruncate NAME N, mmapsha PATH, mmapwrite NAME OFF TEXT (msync),
 * close NAME, truncate PATH N, chmod PATH MODE, stat PATH ([size, mtime us, ctime us]), exists PATH, cat PATH.
 */
const STEPS_PY = `
import errno, hashlib, json, mmap, os, sys
FLAGS = {'r': os.O_RDONLY, 'w': os.O_WRONLY, 'rw': os.O_RDWR, 'creat': os.O_CREAT, 'trunc': os.O_TRUNC, 'append': os.O_APPEND, 'excl': os.O_EXCL}
fds = {}
def st(p):
    s = os.stat(p)
    return [s.st_size, s.st_mtime_ns // 1000, s.st_ctime_ns // 1000]
def step(s):
    k = s[0]
    if k == 'open':
        f = 0
        for x in s[3].split('|'): f |= FLAGS[x]
        fds[s[1]] = os.open(s[2], f, 0o644)
        return 'ok'
    if k == 'read': return os.pread(fds[s[1]], s[2], s[3]).decode()
    if k == 'readsha':
        h = hashlib.sha256()
        with open(s[1], 'rb', buffering=0) as f:
            while True:
                b = f.read(65536)
                if not b: break
                h.update(b)
        return h.hexdigest()[:16]
    if k == 'pwrite': return os.pwrite(fds[s[1]], s[3].encode(), s[2])
    if k == 'write': return os.write(fds[s[1]], s[2].encode())
    if k == 'ftruncate':
        os.ftruncate(fds[s[1]], s[2])
        return 'ok'
    if k == 'mmapsha':
        fd = os.open(s[1], os.O_RDONLY)
        try:
            m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            d = hashlib.sha256(m[:]).hexdigest()[:16]
            m.close()
            return d
        finally:
            os.close(fd)
    if k == 'mmapwrite':
        m = mmap.mmap(fds[s[1]], 0)
        m[s[2]:s[2] + len(s[3])] = s[3].encode()
        m.flush()
        m.close()
        return 'ok'
    if k == 'close':
        os.close(fds.pop(s[1]))
        return 'ok'
    if k == 'truncate':
        os.truncate(s[1], s[2])
        return 'ok'
    if k == 'chmod':
        os.chmod(s[1], s[2])
        return 'ok'
    if k == 'stat': return st(s[1])
    if k == 'exists': return os.path.exists(s[1])
    if k == 'cat':
        with open(s[1], 'rb') as f: return f.read().decode()
    raise ValueError(k)
out = []
for s in json.loads(sys.argv[1]):
    try:
        out.append(step(s))
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(out))
`;

type Step = (string | number)[];

async function steps(cwd: string, list: Step[]): Promise<unknown[]> {
  const { stdout } = await run('python3', ['-c', STEPS_PY, JSON.stringify(list)], { cwd, timeout: 60_000 });
  return JSON.parse(stdout) as unknown[];
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

interface ServerStats {
  byOp: Record<string, number>;
  passthrough: { wanted: boolean; on: boolean; backings: number; openNow: number; backingOpens: number; backingCloses: number; passthroughOpens: number; plainOpens: number; failures: number; busy: number };
}

/** The server's counters (SIGUSR2 appends them to LAYERFS_FUSE_STATS). */
const statsOf = (pid: number, file: string) => serverStats<ServerStats>(pid, file);

const delta = (a: ServerStats, b: ServerStats, op: string): number => (b.byOp[op] ?? 0) - (a.byOp[op] ?? 0);

/** Stats once every RELEASE has reached the server (the kernel sends them in the background after close). */
async function settled(pid: number, file: string): Promise<ServerStats> {
  for (let i = 0; ; i++) {
    const s = await statsOf(pid, file);
    if ((s.passthrough.backings === 0 && s.passthrough.openNow === 0) || i === 50) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const LOWER = { big: seededBytes(7, 4 << 20), mm: seededBytes(11, 64 << 10), small: 'small lower file\n', conf: 'lower data\n', held: 'held open\n' };

async function buildLower(lower: string): Promise<void> {
  await mkdir(lower, { recursive: true });
  await writeFile(path.join(lower, 'big.bin'), LOWER.big);
  await writeFile(path.join(lower, 'mm.bin'), LOWER.mm);
  await writeFile(path.join(lower, 'small.txt'), LOWER.small);
  await writeFile(path.join(lower, 'conf.txt'), LOWER.conf);
  await writeFile(path.join(lower, 'held.txt'), LOWER.held);
}

interface Env {
  [k: string]: string | undefined;
}

/** A mount of `lowers` with its own upper, the server started with env set (restored after). */
async function mountT(tag: string, transport: TestTransport, env: Env = {}, lowers?: string[]): Promise<{ dir: string; lower: string; upper: string; mnt: string; pid: number; stats: string; log: string }> {
  const dir = await tmpDir(tag);
  dirs.push(dir);
  const lower = path.join(dir, 'lower');
  await buildLower(lower);
  const [upper, work] = [path.join(dir, 'u'), path.join(dir, 'w')];
  await mkdir(upper);
  await mkdir(work);
  const stats = path.join(dir, 'stats.jsonl');
  const log = path.join(dir, 'server.log');
  const set: Env = { LAYERFS_FUSE_STATS: stats, LAYERFS_FUSE_LOG: log, LAYERFS_LOG_LEVEL: 'info', ...env };
  const saved: Env = {};
  for (const k of Object.keys(set)) saved[k] = process.env[k];
  for (const [k, v] of Object.entries(set)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  let m: Mounted & { pid: number };
  try {
    m = await mountFuse(lowers ?? [lower], path.join(dir, 'm'), upper, work, transport);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  live.push(m);
  return { dir, lower, upper, mnt: m.mnt, pid: m.pid, stats, log };
}

/** Reads (read(2) and mmap) of lower files, writes (write, pwrite, O_APPEND, ftruncate, mmap) of a new file and of
 *  a lower file (copied up), and stats through the mount and of the upper copy after each change. */
const IO_STEPS: Step[] = [
  ['readsha', 'big.bin'],
  ['mmapsha', 'mm.bin'],
  ['open', 'n', 'new.txt', 'rw|creat|excl'],
  ['write', 'n', 'hello passthrough\n'],
  ['stat', 'new.txt'],
  ['pwrite', 'n', 100, 'at 100'],
  ['stat', 'new.txt'],
  ['ftruncate', 'n', 50],
  ['stat', 'new.txt'],
  ['close', 'n'],
  ['open', 'a', 'new.txt', 'w|append'],
  ['write', 'a', 'tail\n'],
  ['stat', 'new.txt'],
  ['close', 'a'],
  ['open', 's', 'small.txt', 'rw'],
  ['pwrite', 's', 0, 'SMALL'],
  ['mmapwrite', 's', 6, 'MAPPED'],
  ['stat', 'small.txt'],
  ['close', 's'],
  ['cat', 'small.txt'],
  ['readsha', 'new.txt'],
];

/** A [size, mtime us, ctime us] through the mount against the upper copy's: times within 1 us (the core keeps them
 *  as double milliseconds, which hold about a quarter of a microsecond today). */
function sameStat(got: unknown, want: unknown, msg: string): void {
  const [g, w] = [got as number[], want as number[]];
  assert.ok(Array.isArray(g) && Array.isArray(w), `${msg}: ${JSON.stringify(got)} ${JSON.stringify(want)}`);
  assert.equal(g[0], w[0], `${msg}: size`);
  for (const i of [1, 2]) assert.ok(Math.abs(g[i] - w[i]) <= 1, `${msg}: ${i === 1 ? 'mtime' : 'ctime'} ${g[i]} vs ${w[i]} in the upper`);
}

/** What IO_STEPS must give, whatever serves the reads and writes. */
function checkIo(r: unknown[], st: (p: string) => unknown[]): void {
  assert.equal(r[0], sha(LOWER.big), 'read(2) of a lower file');
  assert.equal(r[1], sha(LOWER.mm), 'mmap of a lower file');
  assert.equal(r[3], 18);
  sameStat(r[4], st('new.txt@1'), 'size and times right after write(2)');
  sameStat(r[6], st('new.txt@2'), 'after pwrite past the end');
  sameStat(r[8], st('new.txt@3'), 'after ftruncate');
  sameStat(r[12], st('new.txt@4'), 'after an O_APPEND write');
  sameStat(r[17], st('small.txt'), 'after pwrite and an mmap write to a copied-up lower file');
  assert.equal(r[19], 'SMALL MAPPEDfile\n');
}

/** Runs IO_STEPS with a stat of the upper copy interleaved after each stat through the mount. */
async function ioSteps(mnt: string, upper: string): Promise<{ r: unknown[]; upperStats: Record<string, unknown> }> {
  const list: Step[] = [];
  const marks: [number, string][] = [];
  let n = 0;
  for (const s of IO_STEPS) {
    list.push(s);
    if (s[0] === 'stat') {
      const f = String(s[1]);
      const key = f === 'new.txt' ? `new.txt@${++n}` : f;
      list.push(['stat', path.join(upper, f)]);
      marks.push([list.length - 1, key]);
    }
  }
  const all = await steps(mnt, list);
  const upperStats: Record<string, unknown> = {};
  for (const [i, key] of marks) upperStats[key] = all[i];
  const r = all.filter((_, i) => !marks.some(([j]) => j === i));
  return { r, upperStats };
}

async function checkData(m: { lower: string; upper: string; mnt: string }): Promise<void> {
  const want = Buffer.alloc(50);
  Buffer.from('hello passthrough\n').copy(want);
  const newTxt = Buffer.concat([want, Buffer.from('tail\n')]);
  assert.ok((await readFile(path.join(m.upper, 'new.txt'))).equals(newTxt), 'new file in the upper');
  assert.equal(await readFile(path.join(m.upper, 'small.txt'), 'utf8'), 'SMALL MAPPEDfile\n', 'copied-up file in the upper');
  assert.equal(await readFile(path.join(m.lower, 'small.txt'), 'utf8'), LOWER.small, 'lower file untouched');
  assert.equal(sha(await readFile(path.join(m.lower, 'big.bin'))), sha(LOWER.big));
  assert.ok((await readFile(path.join(m.mnt, 'new.txt'))).equals(newTxt));
}

/** IO_STEPS through mount m, checked: what they return, the upper copies' stats, the data left in the layers. */
async function runAndCheckIo(m: { lower: string; upper: string; mnt: string }): Promise<void> {
  const { r, upperStats } = await ioSteps(m.mnt, m.upper);
  checkIo(r, (k) => upperStats[k] as unknown[]);
  await checkData(m);
}

describe('direct transport: FUSE passthrough', () => {
  test('reads, writes and mmap go to the backing files: no READ or WRITE request; data and attributes right', async () => {
    const m = await mountT('fpt', 'direct-pt');
    const s0 = await statsOf(m.pid, m.stats);
    assert.equal(s0.passthrough.on, true, 'passthrough negotiated (kernel 6.9+, root)');
    await runAndCheckIo(m);
    const s1 = await settled(m.pid, m.stats);
    assert.equal(delta(s0, s1, 'READ'), 0, 'no READ request');
    assert.equal(delta(s0, s1, 'WRITE'), 0, 'no WRITE request');
    const opens = delta(s0, s1, 'OPEN') + delta(s0, s1, 'CREATE');
    assert.ok(opens >= 6, `OPEN+CREATE ${opens}`);
    const pt = s1.passthrough;
    assert.equal(pt.passthroughOpens - s0.passthrough.passthroughOpens, opens, 'every open is a passthrough open');
    assert.equal(pt.plainOpens, 0);
    assert.equal(pt.failures, 0);
    // backing ids: one per node at a time, all closed once their opens are released
    assert.equal(pt.backings, 0);
    assert.equal(pt.backingOpens, pt.backingCloses);
    assert.ok(pt.backingOpens >= 4 && pt.backingOpens <= pt.passthroughOpens, `${pt.backingOpens} backing ids for ${pt.passthroughOpens} opens`);
  });

  test('the same steps on a plain direct mount are served by READ and WRITE (the counts above mean something)', async () => {
    const m = await mountT('fnopt', 'direct');
    const s0 = await statsOf(m.pid, m.stats);
    assert.equal(s0.passthrough.wanted, false);
    await runAndCheckIo(m);
    const s1 = await statsOf(m.pid, m.stats);
    assert.ok(delta(s0, s1, 'READ') > 0 && delta(s0, s1, 'WRITE') > 0, `READ ${delta(s0, s1, 'READ')} WRITE ${delta(s0, s1, 'WRITE')}`);
  });

  test('a lower file open for passthrough reading: writing it fails ETXTBSY until the readers close; metadata changes still copy up', async () => {
    const m = await mountT('fptcu', 'direct-pt');
    const s0 = await statsOf(m.pid, m.stats);
    const up = path.join(m.upper, 'conf.txt');
    const r = await steps(m.mnt, [
      ['open', 'r1', 'conf.txt', 'r'], // 0: backing = the lower file
      ['read', 'r1', 100, 0],
      ['open', 'w', 'conf.txt', 'w'], // 2: would need the upper copy as backing
      ['open', 't', 'conf.txt', 'r|trunc'],
      ['truncate', 'conf.txt', 0],
      ['exists', up], // 5: refused before any copy-up
      ['chmod', 'conf.txt', 0o640], // 6: copies up (same data)
      ['exists', up],
      ['open', 'r2', 'conf.txt', 'r'], // 8: an open of a copied-up file: still the lower file as backing
      ['read', 'r2', 100, 0],
      ['open', 'w', 'conf.txt', 'rw'], // 10
      ['close', 'r1'],
      ['close', 'r2'],
      ['open', 'w', 'conf.txt', 'rw'], // 13: no reader left: the upper copy is the backing
      ['pwrite', 'w', 0, 'UPPER'],
      ['open', 'r3', 'conf.txt', 'r'], // 15: shares the writer's backing file: sees its writes
      ['read', 'r3', 100, 0],
      ['pwrite', 'w', 6, 'DATA'],
      ['read', 'r3', 100, 0],
      ['close', 'w'],
      ['close', 'r3'],
      ['stat', 'conf.txt'],
    ]);
    await settled(m.pid, m.stats);
    // an upper file's backing id registered from a read-only open also serves a writer (the kernel opens the
    // backing file anew for each open, with that open's flags)
    const r2 = await steps(m.mnt, [
      ['open', 'r4', 'conf.txt', 'r'],
      ['open', 'w4', 'conf.txt', 'rw'],
      ['pwrite', 'w4', 0, 'again'],
      ['read', 'r4', 100, 0],
      ['close', 'w4'],
      ['close', 'r4'],
    ]);
    assert.deepEqual(r2, ['ok', 'ok', 5, 'again DATA\n', 'ok', 'ok']);
    assert.deepEqual(r.slice(0, 13), ['ok', LOWER.conf, 'ETXTBSY', 'ETXTBSY', 'ETXTBSY', false, 'ok', true, 'ok', LOWER.conf, 'ETXTBSY', 'ok', 'ok']);
    assert.deepEqual(r.slice(13, 21), ['ok', 5, 'ok', 'UPPER data\n', 4, 'UPPER DATA\n', 'ok', 'ok']);
    assert.equal((r[21] as number[])[0], 11);
    assert.equal(await readFile(up, 'utf8'), 'again DATA\n');
    assert.equal((await stat(up)).mode & 0o777, 0o640);
    assert.equal(await readFile(path.join(m.lower, 'conf.txt'), 'utf8'), LOWER.conf, 'lower file untouched');
    const s1 = await settled(m.pid, m.stats);
    assert.equal(s1.passthrough.busy - s0.passthrough.busy, 4, 'four changes refused');
    assert.equal(delta(s0, s1, 'READ') + delta(s0, s1, 'WRITE'), 0);
    assert.equal(s1.passthrough.backings, 0);
  });

  test('a reader in another process holds a lower file: a writer gets ETXTBSY, and succeeds once the reader exits', async () => {
    const m = await mountT('fptheld', 'direct-pt');
    const file = path.join(m.mnt, 'held.txt');
    const holder = spawn('python3', ['-c', 'import sys; f = open(sys.argv[1], "rb"); f.read(); print("ready", flush=True); sys.stdin.read()', file], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<void>((res) => holder.once('exit', () => res()));
    try {
      await new Promise<void>((res, rej) => {
        holder.stdout!.once('data', () => res());
        holder.once('exit', (c) => rej(new Error(`holder exited ${c}`)));
      });
      await assert.rejects(writeFile(file, 'new'), { code: 'ETXTBSY' });
      assert.equal(await readFile(file, 'utf8'), LOWER.held, 'readers still welcome');
    } finally {
      holder.stdin!.end();
      await exited;
    }
    await writeFile(file, 'written after the reader left\n');
    assert.equal(await readFile(file, 'utf8'), 'written after the reader left\n');
    assert.equal(await readFile(path.join(m.upper, 'held.txt'), 'utf8'), 'written after the reader left\n');
    assert.equal(await readFile(path.join(m.lower, 'held.txt'), 'utf8'), LOWER.held);
  });

  test('fallback: BACKING_OPEN refused for the mount (EPERM, forced): plain opens served by READ/WRITE, logged once', async () => {
    // LAYERFS_FUSE_PASSTHROUGH=1 instead of -o passthrough: the environment switch
    const m = await mountT('fptfail', 'direct', { LAYERFS_FUSE_PASSTHROUGH: '1', LAYERFS_FUSE_PASSTHROUGH_FAIL: 'EPERM' });
    const s0 = await statsOf(m.pid, m.stats);
    assert.equal(s0.passthrough.wanted, true);
    await runAndCheckIo(m);
    const s1 = await statsOf(m.pid, m.stats);
    const pt = s1.passthrough;
    assert.equal(pt.on, false, 'turned off at the first refusal');
    assert.equal(pt.failures, 1, 'tried once');
    assert.equal(pt.passthroughOpens, 0);
    assert.ok(pt.plainOpens >= 6, `plain opens ${pt.plainOpens}`);
    assert.ok(delta(s0, s1, 'READ') > 0 && delta(s0, s1, 'WRITE') > 0);
    const lines = (await readFile(m.log, 'utf8')).split('\n').filter((l) => l.includes('passthrough unavailable'));
    assert.equal(lines.length, 1, 'logged once');
    assert.equal((JSON.parse(lines[0]) as { level: number; code: string }).level, 30, 'at info');
  });

  test('fallback per file: a lower dir on a kernel overlay mount (stacked too deep: ELOOP) gets plain opens, new and copied-up files passthrough', async () => {
    // the lower dir seen through a read-only kernel overlay: s_stack_depth 1, not below max_stack_depth 1
    const dir = await tmpDir('fptloop');
    dirs.push(dir);
    const [a, b, ko] = ['a', 'b', 'ko'].map((d) => path.join(dir, d));
    await buildLower(a);
    await mkdir(b);
    const k = await mountKernel([a, b], ko);
    live.push(k);
    const m = await mountT('fptloopm', 'direct-pt', {}, [ko]);
    const s0 = await statsOf(m.pid, m.stats);
    const r = await steps(m.mnt, [
      ['open', 'r1', 'conf.txt', 'r'], // 0: ELOOP: a plain open (the kernel's cached io mode)
      ['read', 'r1', 100, 0],
      ['open', 'w', 'conf.txt', 'rw'], // 2: copies up; a plain open too while r1 is open (a passthrough one would fail EIO)
      ['pwrite', 'w', 0, 'PLAIN'],
      ['close', 'w'],
      ['close', 'r1'],
    ]);
    assert.deepEqual(r, ['ok', LOWER.conf, 'ok', 5, 'ok', 'ok']);
    await settled(m.pid, m.stats); // the RELEASEs are in: no plain open of conf.txt is left
    const r2 = await steps(m.mnt, [
      ['open', 'w2', 'conf.txt', 'rw'], // 0: the upper copy (plain fs) as backing
      ['pwrite', 'w2', 6, 'PT'],
      ['close', 'w2'],
      ['cat', 'conf.txt'], // 3: passthrough
      ['open', 'n', 'new.txt', 'rw|creat'], // 4: CREATE: passthrough
      ['write', 'n', 'new\n'],
      ['close', 'n'],
      ['readsha', 'big.bin'], // 7: plain
    ]);
    assert.deepEqual(r2, ['ok', 2, 'ok', 'PLAIN PTta\n', 'ok', 4, 'ok', sha(LOWER.big)]);
    assert.equal(await readFile(path.join(m.upper, 'conf.txt'), 'utf8'), 'PLAIN PTta\n');
    assert.equal(await readFile(path.join(a, 'conf.txt'), 'utf8'), LOWER.conf);
    const s1 = await settled(m.pid, m.stats);
    const pt = s1.passthrough;
    assert.equal(pt.on, true, 'still on: ELOOP is about one file');
    assert.equal(pt.plainOpens, 3, 'conf.txt twice (lower, then copied up while a plain open lived), big.bin');
    assert.equal(pt.passthroughOpens, 3, 'conf.txt twice once no plain open was left, new.txt');
    assert.equal(pt.failures, 2, 'the lower conf.txt and big.bin');
    assert.ok(delta(s0, s1, 'READ') > 0 && delta(s0, s1, 'WRITE') > 0);
    const lines = (await readFile(m.log, 'utf8')).split('\n').filter((l) => l.includes('refused a backing file'));
    assert.equal(lines.length, 1, 'logged once');
    assert.equal((JSON.parse(lines[0]) as { code: string }).code, 'ELOOP');
  });
});
