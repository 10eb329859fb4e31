/**
 * Protocol edge cases of the direct /dev/fuse transport. Every server runs in its own process; this process only
 * uses async fs calls and child processes on the mounts. Every mount is undone in after/finally.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import { appendFile, chmod, mkdir, open, readdir, readFile, rm, stat, statfs, lstat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { cli, cliOk } from './lib/cli.js';
import { mountFuse, serverStats, tmpDir, type Mounted, undoAfter } from './lib/fuse.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, isMounted, waitProcessGone } from './lib/mounts.js';

const run = promisify(execFile);
const { live, dirs } = undoAfter();

async function fixture(tag: string): Promise<{ dir: string; lower: string; upper: string; work: string; mnt: string }> {
  const dir = await tmpDir(tag);
  dirs.push(dir);
  await chmod(dir, 0o755); // reachable for the non-root user test
  const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((d) => path.join(dir, d));
  for (const d of [lower, upper, work, mnt]) await mkdir(d);
  return { dir, lower, upper, work, mnt };
}

async function mountDirect(f: { lower: string; upper: string; work: string; mnt: string }): Promise<Mounted & { pid: number }> {
  const m = await mountFuse([f.lower], f.mnt, f.upper, f.work, 'direct');
  live.push(m);
  return m;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const statsOf = (pid: number, file: string) => serverStats<Record<string, number>>(pid, file);

/**
 * Read-ahead across files, seen in the page cache of the lower files (fincore): mnt/seq lists 16 files of 128 KiB
 * (the lower's seq). Out of order (10, then 3) nothing else is read; in order from 3 (4, 5) the next two are read
 * ahead, the third not yet.
 */
async function checkReadAhead(mnt: string, lower: string): Promise<void> {
  const lowerSeq = path.join(lower, 'seq');
  const names = await readdir(path.join(mnt, 'seq')); // the mount's listing order
  assert.equal(names.length, 16);
  // the lower files out of the page cache (written, so synced first: only clean pages can be dropped)
  await run('sync');
  for (const n of names) await run('dd', [`if=${path.join(lowerSeq, n)}`, 'iflag=nocache', 'count=0', 'status=none']);
  const resident = async (i: number): Promise<number> => Number((await run('fincore', ['-n', '-b', '-o', 'RES', path.join(lowerSeq, names[i])])).stdout.trim());
  const readThrough = async (i: number): Promise<void> => {
    assert.deepEqual(await readFile(path.join(mnt, 'seq', names[i])), Buffer.alloc(128 << 10, Number(names[i].slice(1)) + 1));
  };
  for (let i = 0; i < 16; i++) assert.equal(await resident(i), 0, `${names[i]} still cached before the test`);
  await readThrough(10);
  await readThrough(3);
  await new Promise((r) => setTimeout(r, 300));
  for (const i of [4, 5, 6, 11, 12]) assert.equal(await resident(i), 0, `${names[i]} read ahead after out-of-order reads`);
  // the window opens at the second file in order: 6 and 7 are read ahead, 8 not yet
  await readThrough(4);
  await readThrough(5);
  let ahead = [0, 0];
  for (let t = 0; t < 40 && (ahead[0] === 0 || ahead[1] === 0); t++) {
    await new Promise((r) => setTimeout(r, 50));
    ahead = [await resident(6), await resident(7)];
  }
  assert.ok(ahead[0] > 0 && ahead[1] > 0, `the next files were not read ahead (resident bytes ${ahead})`);
  assert.equal(await resident(8), 0, `${names[8]} read ahead past the window`);
  for (const i of [6, 7, 8]) await readThrough(i); // what was read ahead reads back right
}

describe('direct transport: protocol edge cases', () => {
  let f: Awaited<ReturnType<typeof fixture>>;
  let m: Mounted & { pid: number };
  const statsFile = () => path.join(f.dir, 'stats.jsonl');

  before(async () => {
    f = await fixture('fdirect');
    process.env.LAYERFS_FUSE_STATS = path.join(f.dir, 'stats.jsonl');
    // lower: a 100k-entry dir, a big file for copy-up, a public dir, a deep tree for find
    const big = path.join(f.lower, 'big');
    await mkdir(big);
    await run('sh', ['-c', 'cd "$0" && seq -f "entry-%06g" 0 99999 | xargs touch', big]);
    const pub = path.join(f.lower, 'pub');
    await mkdir(pub);
    await chmod(pub, 0o1777);
    await run('sh', ['-c', 'head -c 1073741824 /dev/zero > "$0"', path.join(f.lower, 'huge')]);
    // seq: 16 files of 128 KiB, read in and out of listing order
    await mkdir(path.join(f.lower, 'seq'));
    for (let i = 0; i < 16; i++) await writeFile(path.join(f.lower, 'seq', `f${String(i).padStart(2, '0')}`), Buffer.alloc(128 << 10, i + 1));
    m = await mountDirect(f);
    delete process.env.LAYERFS_FUSE_STATS;
  });

  test('a 1 MiB write and a 1 MiB read, one request each way', async () => {
    const data = Buffer.alloc(3 << 20);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    await writeFile(path.join(f.dir, 'src.bin'), data);
    const s0 = await statsOf(m.pid, statsFile());
    await run('dd', [`if=${path.join(f.dir, 'src.bin')}`, `of=${path.join(f.mnt, 'one.bin')}`, 'bs=1M', 'count=3', 'status=none']);
    const s1 = await statsOf(m.pid, statsFile());
    // lookup + create + 3 writes + flush + release + getattr-ish: far fewer than the 24 a 128 KiB max_write needs
    assert.ok(s1.requests - s0.requests - 1 <= 12, `requests for 3 MiB written: ${s1.requests - s0.requests - 1}`);
    assert.equal(sha(await readFile(path.join(f.upper, 'one.bin'))), sha(data));
    const { stdout } = await run('sh', ['-c', 'dd if="$0" bs=1M iflag=direct status=none | sha256sum', path.join(f.mnt, 'one.bin')]);
    assert.equal(stdout.split(' ')[0], sha(data));
  });

  test('names of 255 bytes work; 256 bytes is ENAMETOOLONG', async () => {
    const name = 'n'.repeat(250) + 'é'.repeat(2) + 'x'; // 255 bytes in UTF-8
    assert.equal(Buffer.byteLength(name), 255);
    await writeFile(path.join(f.mnt, name), 'long');
    assert.ok((await readdir(f.mnt)).includes(name));
    assert.equal(await readFile(path.join(f.mnt, name), 'utf8'), 'long');
    assert.equal((await lstat(path.join(f.upper, name))).size, 4);
    await assert.rejects(writeFile(path.join(f.mnt, 'y'.repeat(256)), 'x'), { code: 'ENAMETOOLONG' });
  });

  test('a 100k-entry directory lists completely (many READDIRPLUS pieces, no duplicates)', async () => {
    const names = await readdir(path.join(f.mnt, 'big'));
    assert.equal(names.length, 100_000);
    assert.equal(new Set(names).size, 100_000);
    const { stdout } = await run('sh', ['-c', 'ls -f "$0" | wc -l', path.join(f.mnt, 'big')], { maxBuffer: 1 << 26 });
    assert.equal(Number(stdout.trim()), 100_002); // with . and ..
  });

  test('FORGET storm: after find + drop_caches the kernel gives its lookups back, and the core its nodes', async () => {
    const listing = async () => (await run('sh', ['-c', 'find "$0" -xdev -printf "%i %n %s %p\\n" | sort', f.mnt], { maxBuffer: 1 << 28 })).stdout;
    const before = await listing();
    const full = await statsOf(m.pid, statsFile());
    assert.ok(full.kernelNodes > 10_000, `kernel holds ${full.kernelNodes} nodes after find`);
    await run('sh', ['-c', 'sync; echo 2 > /proc/sys/vm/drop_caches']);
    let after = full;
    for (let i = 0; i < 50; i++) {
      after = await statsOf(m.pid, statsFile());
      if (after.kernelNodes < 1000) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    console.log(`# forget storm: kernel nodes ${full.kernelNodes} -> ${after.kernelNodes}; core nodes ${full.coreNodes} -> ${after.coreNodes}; rss ${(full.rss / 2 ** 20).toFixed(0)} MiB -> ${(after.rss / 2 ** 20).toFixed(0)} MiB`);
    assert.ok(after.kernelNodes < 1000, `kernel still holds ${after.kernelNodes} nodes`);
    assert.ok(after.coreNodes !== null && full.coreNodes !== null && after.coreNodes < full.coreNodes / 4, `the core still holds ${after.coreNodes} of ${full.coreNodes} nodes`);
    // nodes made again have the numbers they had: the same listing, inode numbers and link counts included
    assert.equal(await listing(), before);
  });

  test('files read from their start in listing order: the next files of the dir are read ahead; out of order: none', async () => {
    await checkReadAhead(f.mnt, f.lower);
  });

  test('the same through the fuse-native transport', async () => {
    const g = await fixture('fdirect-ra');
    const n = await mountFuse([f.lower], g.mnt, g.upper, g.work, 'fuse-native');
    live.push(n);
    try {
      await checkReadAhead(g.mnt, f.lower);
    } finally {
      await n.stop();
    }
  });

  test('files made by a non-root user are owned by that user', async () => {
    const pub = path.join(f.mnt, 'pub');
    await run('setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', 'sh', '-c', 'cd "$0" && echo x > file && mkdir dir && ln -s file link && mkfifo fifo && ln file hard', pub]);
    for (const n of ['file', 'dir', 'link', 'fifo', 'hard']) {
      const st = await lstat(path.join(pub, n));
      assert.deepEqual([n, st.uid, st.gid], [n, 1000, 1000]);
      const up = await lstat(path.join(f.upper, 'pub', n));
      assert.deepEqual([n, up.uid, up.gid], [n, 1000, 1000]);
    }
    // hardlinks share one kernel inode: a chmod through one name shows through the other at once
    await chmod(path.join(pub, 'file'), 0o600);
    assert.equal((await stat(path.join(pub, 'hard'))).mode & 0o777, 0o600);
    assert.equal((await stat(path.join(pub, 'hard'))).nlink, 2);
  });

  test('utimens: explicit times with sub-second parts, UTIME_NOW and UTIME_OMIT', async () => {
    const p = path.join(f.mnt, 'times');
    await writeFile(p, 't');
    await run('touch', ['-m', '-d', '2001-02-03 04:05:06.123456789 UTC', p]);
    await run('touch', ['-a', '-d', '2002-02-03 04:05:06.987654321 UTC', p]);
    const { stdout } = await run('stat', ['-c', '%X.%x|%Y.%y', p]);
    const st = await stat(p, { bigint: true });
    const mtimeNs = st.mtimeNs;
    const want = BigInt(Date.UTC(2001, 1, 3, 4, 5, 6)) * 1_000_000n + 123_456_789n;
    assert.equal(mtimeNs, want, `mtime (${stdout.trim()})`); // exact: the core carries seconds and nanoseconds
    const wantA = BigInt(Date.UTC(2002, 1, 3, 4, 5, 6)) * 1_000_000n + 987_654_321n;
    assert.equal(st.atimeNs, wantA, '-a must leave mtime (UTIME_OMIT)');
    const t0 = Date.now();
    await run('touch', ['-m', p]); // UTIME_NOW for mtime, UTIME_OMIT for atime
    const st2 = await stat(p, { bigint: true });
    assert.ok(Math.abs(Number(st2.mtimeMs) - t0) < 5000);
    assert.equal(st2.atimeNs, st.atimeNs);
  });

  test('INTERRUPT: a fatal signal ends a process waiting on a long copy-up (as kernel overlay: only a fatal one); the mount stays healthy', async () => {
    // the first write of the 1 GiB lower file copies it up (zero-open: at the WRITE; without it: at the OPEN)
    const s0 = await statsOf(m.pid, statsFile());
    const huge = path.join(f.mnt, 'huge');
    const child = spawn('sh', ['-c', 'printf x >>"$0"; echo wrote', huge], { stdio: ['ignore', 'pipe', 'ignore'] });
    const t0 = Date.now();
    const exited = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((r) => child.once('exit', (code, sig) => r({ code, sig })));
    await new Promise((r) => setTimeout(r, 100));
    child.kill('SIGKILL'); // fatal: kernel overlay's copy-up stops only for a fatal signal
    const res = await exited;
    const waited = Date.now() - t0;
    const s1 = await statsOf(m.pid, statsFile());
    // the copy-up went on in the server; a second write waits for it, then lands after it
    const t1 = Date.now();
    await appendFile(huge, 'y');
    const fullCopy = Date.now() - t1 + waited;
    const interrupts = s1.eintr - s0.eintr;
    const size = (await lstat(path.join(f.upper, 'huge'))).size;
    const tail = Buffer.alloc(2);
    const fh = await open(path.join(f.upper, 'huge'), 'r');
    await fh.read(tail, 0, 2, size - 2);
    await fh.close();
    assert.equal((await stat(f.mnt)).isDirectory(), true);
    console.log(`# interrupt: child ended after ${waited} ms (${res.sig ?? res.code}); copy-up ~${fullCopy} ms; interrupts ${interrupts}`);
    if (interrupts >= 1) {
      // the signal arrived while the write waited for the copy-up: answered EINTR, and nothing of it was written
      assert.equal(res.sig, 'SIGKILL');
      assert.equal(size, (1 << 30) + 1);
      assert.equal(tail.toString(), '\0y');
      if (fullCopy > 600) assert.ok(waited < fullCopy / 2 + 200, `waited ${waited} ms of a ${fullCopy} ms copy-up`);
    } else if (res.sig === 'SIGKILL') {
      // the signal came before the write was sent, or after it was done: all of it or none of it is there
      assert.ok(size === (1 << 30) + 1 || size === (1 << 30) + 2, `size ${size}`);
      assert.equal(tail.toString(), size === (1 << 30) + 1 ? '\0y' : 'xy');
    } else {
      // the copy-up was done before the signal: both writes landed, in order
      assert.equal(size, (1 << 30) + 2);
      assert.equal(tail.toString(), 'xy');
    }
  });
});

describe('direct transport: a killed server', () => {
  let scratch: string;
  let env: Record<string, string>;
  const mnts: string[] = [];
  before(async () => {
    scratch = await tmpDir('fkill');
    dirs.push(scratch);
    env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer', LAYERFS_FUSE_TRANSPORT: 'direct' };
    const img = await makeImage([[{ name: 'etc/' }, { name: 'etc/hello', content: 'hi\n' }]]);
    await writeOciLayout(path.join(scratch, 'oci'), [{ image: img, name: 'kill/test' }]);
    await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
  });
  after(async () => {
    for (const m of mnts) await forceUnmount(m);
  });

  async function mountAndKill(name: string): Promise<string> {
    const mnt = path.join(scratch, name);
    mnts.push(mnt);
    await cliOk(['mount', 'kill/test', mnt, '--driver', 'fuse', '--transport', 'direct'], env);
    assert.equal(await readFile(path.join(mnt, 'etc/hello'), 'utf8'), 'hi\n');
    const { stdout } = await run('pgrep', ['-f', `server-main.js .*${mnt}$`]);
    const pid = Number(stdout.trim().split('\n')[0]);
    process.kill(pid, 'SIGKILL');
    assert.ok(await waitProcessGone(pid), `server ${pid} did not exit after SIGKILL`);
    // a request that reaches the connection while the kernel is tearing it down fails ECONNABORTED; once the
    // teardown is over, every request fails ENOTCONN
    let code = '';
    for (let i = 0; i < 250; i++) {
      code = await statfs(mnt).then(
        () => 'answered',
        (err: NodeJS.ErrnoException) => err.code ?? String(err),
      );
      if (code !== 'ECONNABORTED') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(code, 'ENOTCONN');
    await assert.rejects(readdir(path.join(mnt, 'etc')), { code: 'ENOTCONN' });
    assert.ok(await isMounted(mnt));
    return mnt;
  }

  test('kill -9: the mount answers ENOTCONN; layerfs umount removes it', async () => {
    const mnt = await mountAndKill('m1');
    await cliOk(['umount', mnt], env);
    assert.equal(await isMounted(mnt), false);
    const again = await cli(['umount', mnt], env);
    assert.match(again.stderr, /not a layerfs mount/);
  });

  test('kill -9: layerfs status (and mount) clean the stale mount on start', async () => {
    const mnt = await mountAndKill('m2');
    const st = JSON.parse(await cliOk(['status', '--json'], env)) as { staleMountsRemoved?: string[]; mounts: number };
    assert.deepEqual(st.staleMountsRemoved, [mnt]);
    assert.equal(st.mounts, 0);
    assert.equal(await isMounted(mnt), false);
    const mnt3 = await mountAndKill('m3');
    await cliOk(['mount', 'kill/test', path.join(scratch, 'm4'), '--driver', 'fuse'], env);
    mnts.push(path.join(scratch, 'm4'));
    assert.equal(await isMounted(mnt3), false);
    await cliOk(['umount', path.join(scratch, 'm4'), '--rm'], env);
    await rm(mnt3, { recursive: true, force: true }).catch(() => undefined);
  });
});
