/**
 * Issue #16, "kernel-exact FUSE view": behaviours where the FUSE overlay must match kernel overlay exactly, on every
 * transport of the shared table. Servers run in child processes; this process touches the mounts only with async
 * calls and child processes. Every mount is undone in finally/after.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { appendFile, chmod, link, lstat, mkdir, readdir, readlink, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { native } from '../src/common/native.js';
import { diffSnapshots, FUSE_TRANSPORTS, mountFuse, mountKernel, snapshot, tmpDir, type Mounted, undoAfter } from './lib/fuse.js';
import { SIGWALK_C } from './lib/sigwalk.js';
import { XATTR_PROBE_PY } from './lib/xattrprobe.js';
import { PATHMAX_PY } from './lib/pathmax.js';
import { ZERO_OPEN_PY } from './lib/zeroopen.js';

const run = promisify(execFile);
const { live, dirs, mounts } = undoAfter();

async function withMount<T>(m: Promise<Mounted>, fn: (m: Mounted) => Promise<T>): Promise<T> {
  const mm = await m;
  live.push(mm);
  try {
    return await fn(mm);
  } finally {
    await mm.stop().catch(() => undefined);
  }
}

let scratch = '';
let ringKernel: Promise<{ snap: Awaited<ReturnType<typeof snapshot>>; log: string[]; lowers: string[]; upper: string }> | null = null;
let sigwalk = '';
before(async () => {
  scratch = await tmpDir('fexact');
  dirs.push(scratch);
  await writeFile(path.join(scratch, 'sigwalk.c'), SIGWALK_C);
  sigwalk = path.join(scratch, 'sigwalk');
  await run('cc', ['-O2', '-o', sigwalk, path.join(scratch, 'sigwalk.c')]);
});

async function fixture(tag: string, layers = 1): Promise<{ dir: string; lowers: string[]; upper: string; work: string; mnt: string }> {
  const dir = path.join(scratch, tag);
  const lowers = Array.from({ length: layers }, (_, i) => path.join(dir, `l${i}`));
  const [upper, work, mnt] = ['u', 'w', 'm'].map((d) => path.join(dir, d));
  for (const d of [...lowers, upper, work, mnt]) await mkdir(d, { recursive: true });
  return { dir, lowers, upper, work, mnt };
}

for (const transport of FUSE_TRANSPORTS) {
  describe(`kernel-exact view (${transport})`, () => {
    test('circular renames of hardlinked files, the upper rotated into the lowers after each (unionmount rename-mass-5 --ov=3)', { timeout: 300_000 }, async () => {
      const f = await fixture(`ring-${transport}`);
      // the suite's ring of 7 and 4.5 rounds mean ~70 mount cycles per side; a ring of 5 and two rounds and a bit wrap
      // around as well, in 2/5 of the time
      const ring = 5;
      const iters = ring * 2 + 1;
      const side = async (kind: 'kernel' | 'fuse') => {
        const base = path.join(kind === 'kernel' ? scratch : f.dir, kind === 'kernel' ? 'ring-kernel' : kind);
        const L0 = path.join(base, 'L0');
        await mkdir(path.join(L0, 'a'), { recursive: true });
        for (let i = 100; i < 110; i++) await writeFile(path.join(L0, 'a', `foo${i}`), `:xxx:${i}`);
        let lowers = [L0];
        let n = 1;
        const newUpper = async () => {
          const d = path.join(base, `U${n++}`);
          await mkdir(path.join(d, 'u'), { recursive: true });
          await mkdir(path.join(d, 'w'));
          return d;
        };
        let up = await newUpper();
        const mnt = path.join(base, 'm');
        const mount = async () => {
          const m = kind === 'kernel' ? await mountKernel(lowers, mnt, path.join(up, 'u'), path.join(up, 'w'), { exact: true }) : await mountFuse(lowers, mnt, path.join(up, 'u'), path.join(up, 'w'), transport);
          live.push(m);
          return m;
        };
        let m = await mount();
        const cycle = async (rotate: boolean) => {
          await m.stop();
          if (rotate && lowers.length < 3) {
            lowers = [path.join(up, 'u'), ...lowers];
            up = await newUpper();
          }
          m = await mount();
        };
        const A = (s: string) => path.join(mnt, 'a', s);
        const log: string[] = [];
        const op = async (what: string, p: Promise<unknown>) => log.push(`${what} ${await p.then(() => 'ok', (e: { code?: string }) => e.code)}`);
        for (let i = 0; i <= ring; i++) {
          await op(`link ${i}`, link(A(`foo${100 + i}`), A(`no_foo${100 + i}`)));
          await cycle(false);
        }
        for (const [pre, dir] of [['no_foo', -1], ['foo', 1]] as const) {
          let gap = ring - 1;
          for (let i = 0; i < iters; i++) {
            const next = (gap + dir + ring) % ring;
            await op(`rename ${pre}${next} ${pre}${gap}`, rename(A(`${pre}${100 + next}`), A(`${pre}${100 + gap}`)));
            await cycle(true);
            gap = next;
          }
        }
        const snap = await snapshot(mnt, { fileNlink: true });
        await m.stop();
        return { snap, log, lowers, upper: up };
      };
      ringKernel ??= side('kernel'); // the same on every transport: once
      const k = await ringKernel;
      const o = await side('fuse');
      assert.deepEqual(o.log, k.log);
      assert.deepEqual(diffSnapshots(k.snap, o.snap, 'kernel', 'fuse'), []);
      // our layers, mounted by kernel overlay, give the same tree
      await withMount(mountKernel(o.lowers, path.join(f.dir, 'k2'), path.join(o.upper, 'u'), path.join(o.upper, 'w'), { exact: true }), async (k2) => {
        assert.deepEqual(diffSnapshots(o.snap, await snapshot(k2.mnt, { fileNlink: true }), 'fuse', 'kernel-on-fuse-layers'), []);
      });
    });

    test('open for writing: copy-up at the open, or with zero-open at the first write; only ENOSPC tells them apart', async () => {
      const f = await fixture(`zopen-${transport}`);
      const py = path.join(f.dir, 'zo.py');
      await writeFile(py, ZERO_OPEN_PY);
      const probe = async (big: boolean, mnt: (l: string[], u: string, w: string) => Promise<Mounted>): Promise<Record<string, unknown>> => {
        const b = path.join(f.dir, `${big}-${Math.random().toString(36).slice(2)}`);
        const [l, t] = [path.join(b, 'l'), path.join(b, 't')];
        await mkdir(l, { recursive: true });
        await mkdir(t);
        await writeFile(path.join(l, 'f'), Buffer.alloc(big ? 4 << 20 : 10, 1));
        await run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', t]); // a 4 MiB copy-up does not fit
        mounts.push(t);
        await mkdir(path.join(t, 'u'));
        await mkdir(path.join(t, 'w'));
        return withMount(mnt([l], path.join(t, 'u'), path.join(t, 'w')), async (m) => JSON.parse((await run('python3', [py, m.mnt, path.join(t, 'u')])).stdout));
      };
      const kernel = (l: string[], u: string, w: string) => mountKernel(l, path.join(f.dir, 'k', Math.random().toString(36).slice(2)), u, w, { exact: true });
      const ours = (l: string[], u: string, w: string) => mountFuse(l, path.join(f.dir, 'm', Math.random().toString(36).slice(2)), u, w, transport);
      // zero-open (direct without passthrough): no OPEN reaches the server, the copy-up waits for the first write
      const zeroOpen = transport === 'direct';
      for (const big of [false, true]) {
        const k = await probe(big, kernel);
        const o = await probe(big, ours);
        if (!zeroOpen || !big) {
          // the same st_ino/st_dev before and after, the same flock conflict, the same data; only the upper differs
          assert.deepEqual({ ...o, 'upper copy after open': k['upper copy after open'] }, k, `big=${big}`);
          assert.equal(o['upper copy after open'], zeroOpen ? false : k['upper copy after open'], `big=${big}`);
        } else {
          // a copy-up that does not fit: the kernel fails the open, zero-open the first write (README: a difference)
          assert.equal(k.open, 'ENOSPC');
          assert.deepEqual([o.open, o.write, o['same ino/dev after write']], ['ok', 'ENOSPC', true]);
        }
      }
    });

    test('paths of PATH_MAX - 1 bytes in the mount work as on kernel overlay; symlink targets up to PATH_MAX - 1', async () => {
      const f = await fixture(`pathmax-${transport}`);
      const py = path.join(f.dir, 'pathmax.py');
      await writeFile(py, PATHMAX_PY);
      const probe = async (cwd: string) => JSON.parse((await run('python3', [py], { cwd })).stdout) as Record<string, string>;
      const [ku, kw] = [path.join(f.dir, 'ku'), path.join(f.dir, 'kw')];
      await mkdir(ku);
      await mkdir(kw);
      const want = await withMount(mountKernel(f.lowers, path.join(f.dir, 'k'), ku, kw, { exact: true }), (k) => probe(k.mnt));
      assert.ok(Object.values(want).every((v) => v === 'ok'), JSON.stringify(want));
      await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), async (m) => {
        assert.deepEqual(await probe(m.mnt), want);
        for (const len of [4095, 4096]) {
          const p = path.join(m.mnt, `s${len}`);
          const r = await symlink('x'.repeat(len), p).then(() => 'ok', (e: { code?: string }) => e.code);
          assert.equal(r, len === 4095 ? 'ok' : 'ENAMETOOLONG');
          if (r === 'ok') assert.equal((await readlink(p)).length, len);
        }
      });
    });

    test('times to the nanosecond: lower stats, utimensat, the upper, copy-up', async () => {
      const f = await fixture(`times-${transport}`);
      const L = f.lowers[0];
      for (const n of ['a', 'b', 'c']) await writeFile(path.join(L, n), n);
      const T = 1577836800123456789n; // 2020-01-01 00:00:00.123456789
      const setNs = async (p: string, atime: bigint, mtime: bigint) =>
        run('python3', ['-c', 'import os,sys; os.utime(sys.argv[1], ns=(int(sys.argv[2]), int(sys.argv[3])), follow_symlinks=False)', p, String(atime), String(mtime)]);
      for (const n of ['a', 'b', 'c']) await setNs(path.join(L, n), T - 1000n, T);
      // fuse-native's stat and utimens carry milliseconds, and its utimens passes atime for both times (the binding's
      // limits, see the README): exact there only to the millisecond, and mtime set = atime set
      const ms = transport === 'fuse-native';
      const seen = (ns: bigint) => (ms ? (ns / 1_000_000n) * 1_000_000n : ns);
      await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), async (m) => {
        const st = async (p: string) => lstat(path.join(m.mnt, p), { bigint: true });
        assert.equal((await st('a')).mtimeNs, seen(T));
        assert.equal((await st('a')).atimeNs, seen(T - 1000n));
        // copy-up (chmod) keeps the lower's exact times in the upper
        await chmod(path.join(m.mnt, 'a'), 0o600);
        assert.equal((await lstat(path.join(f.upper, 'a'), { bigint: true })).mtimeNs, T);
        assert.equal((await st('a')).mtimeNs, seen(T));
        // a copy-up for a write: the upper's mtime is the write's, the lower's is gone (as on kernel overlay)
        await appendFile(path.join(m.mnt, 'b'), '+');
        assert.notEqual((await lstat(path.join(f.upper, 'b'), { bigint: true })).mtimeNs, T);
        // utimensat with nanoseconds: reported and stored exactly
        const U = 1634261622637805869n;
        await setNs(path.join(m.mnt, 'c'), U, ms ? U : U + 1000n);
        const want = ms ? (U / 1_000_000n) * 1_000_000n : U + 1000n;
        assert.equal((await st('c')).mtimeNs, want);
        assert.equal((await lstat(path.join(f.upper, 'c'), { bigint: true })).mtimeNs, want);
        assert.equal((await lstat(path.join(f.upper, 'c'), { bigint: true })).atimeNs, ms ? want : U);
      });
    });

    test('st_nlink of a lower hardlink whose other name is hidden: the same as kernel overlay through copy-up, link and remount', async () => {
      const f = await fixture(`nlink-${transport}`, 2);
      const [L1, L0] = f.lowers;
      await writeFile(path.join(L0, 'f'), 'a');
      await link(path.join(L0, 'f'), path.join(L0, 'g'));
      native.mknod(path.join(L1, 'g'), 0o020000, 0, 0); // a whiteout hides g
      const steps = async (mnt: string): Promise<number[]> => {
        const nl = async () => (await lstat(path.join(mnt, 'f'))).nlink;
        const out = [await nl()];
        await chmod(path.join(mnt, 'f'), 0o600);
        out.push(await nl());
        await link(path.join(mnt, 'f'), path.join(mnt, 'h'));
        out.push(await nl(), (await lstat(path.join(mnt, 'h'))).nlink);
        return out;
      };
      const [ku, kw] = [path.join(f.dir, 'ku'), path.join(f.dir, 'kw')];
      await mkdir(ku);
      await mkdir(kw);
      const want = await withMount(mountKernel(f.lowers, path.join(f.dir, 'k'), ku, kw, { exact: true }), (k) => steps(k.mnt));
      assert.deepEqual(want, [2, 2, 3, 3]);
      assert.deepEqual(await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), (m) => steps(m.mnt)), want);
      const again = await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), async (m) => [(await lstat(path.join(m.mnt, 'h'))).nlink, (await lstat(path.join(m.mnt, 'f'))).nlink]);
      assert.deepEqual(again, [3, 3], 'after a remount');
    });

    test('xattrs: exact sizes, ERANGE for a small buffer or a long name, 64 KiB values, 255-byte names; the server survives', async () => {
      const f = await fixture(`xattr-${transport}`);
      const lf = path.join(f.lowers[0], 'f');
      await writeFile(lf, 'x');
      native.lsetxattr(lf, 'user.one', Buffer.from('0123456789'), 0);
      native.lsetxattr(lf, 'user.two', Buffer.from('ab'), 0);
      const probe = path.join(f.dir, 'probe.py');
      await writeFile(probe, XATTR_PROBE_PY);
      const ask = async (p: string, ...specs: string[]) => JSON.parse((await run('python3', [probe, p, ...specs])).stdout) as Record<string, unknown>;
      // the same answers as the lower file itself, read directly
      const specs = ['get:user.one:0', 'get:user.one:4', 'get:user.one:10', 'get:user.nope:4', 'list::0', 'list::5', 'list::18', `get:user.${'n'.repeat(300)}:4`];
      const want = await ask(lf, ...specs);
      assert.deepEqual(want['get:user.one:4'], 'ERANGE');
      assert.deepEqual(want['list::5'], 'ERANGE');
      // the upper on a tmpfs: ext4 keeps a file's xattrs in one 4 KiB block (ENOSPC for 64 KiB, through any overlay)
      const t = path.join(f.dir, 't');
      await mkdir(t);
      await run('mount', ['-t', 'tmpfs', 'tmpfs', t]);
      mounts.push(t);
      const [upper, work] = [path.join(t, 'u'), path.join(t, 'w')];
      await mkdir(upper);
      await mkdir(work);
      await withMount(mountFuse(f.lowers, f.mnt, upper, work, transport), async (m) => {
        const mf = path.join(m.mnt, 'f');
        assert.deepEqual(await ask(mf, ...specs), want);
        // values up to the kernel's 64 KiB, names up to 255 bytes, through a copy-up
        const big = Buffer.alloc(65536, 7);
        const long = 'user.' + 'l'.repeat(250);
        await run('python3', ['-c', `import os,sys; os.setxattr(sys.argv[1], 'user.big', bytes([7])*65536, follow_symlinks=False); os.setxattr(sys.argv[1], '${long}', b'v', follow_symlinks=False)`, mf]);
        const got = await ask(mf, 'get:user.big:0', 'get:user.big:65536', `get:${long}:1`);
        assert.equal(got['get:user.big:0'], 65536);
        assert.equal((got['get:user.big:65536'] as [number, string])[1], big.toString('hex'));
        assert.deepEqual(got[`get:${long}:1`], [1, '76']);
        const names = ['user.one', 'user.two', 'user.big', long];
        const len = names.reduce((a, n) => a + n.length + 1, 0);
        const all = await ask(mf, 'list::0', `list::${len}`, `list::${len - 1}`);
        assert.equal(all['list::0'], len);
        assert.deepEqual(Buffer.from((all[`list::${len}`] as [number, string])[1], 'hex').toString().split('\0').filter(Boolean).sort(), names.sort());
        assert.equal(all[`list::${len - 1}`], 'ERANGE');
        // still serving
        assert.deepEqual(await readdir(m.mnt), ['f']);
      });
    });

    test('a renamed lower dir with a removed entry: the upper, mounted by kernel overlay, shows the same tree', async () => {
      const f = await fixture(`mvdir-${transport}`);
      const L = f.lowers[0];
      for (const p of ['D/a', 'D/b', 'N/S/a', 'N/S/b']) {
        await mkdir(path.dirname(path.join(L, p)), { recursive: true });
        await writeFile(path.join(L, p), p);
      }
      const o = { mtime: true };
      const ours = await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), async (m) => {
        await unlink(path.join(m.mnt, 'D/a'));
        await unlink(path.join(m.mnt, 'N/S/a'));
        // times set after the removals: a rename leaves a dir's own times (as the kernel's redirect does), also when
        // the whiteouts left in the copied tree are dropped
        const T = 1600000000; // whole seconds: the same through fuse-native's milliseconds
        for (const d of ['D', 'N/S']) native.lutimens(path.join(m.mnt, d), T, 0, T, 0);
        await rename(path.join(m.mnt, 'D'), path.join(m.mnt, 'E'));
        await rename(path.join(m.mnt, 'N'), path.join(m.mnt, 'M'));
        assert.deepEqual(await readdir(path.join(m.mnt, 'E')), ['b']);
        assert.deepEqual(await readdir(path.join(m.mnt, 'M/S')), ['b']);
        for (const d of ['E', 'M/S']) {
          assert.equal((await lstat(path.join(m.mnt, d))).mtimeMs, T * 1000, d);
          assert.equal((await lstat(path.join(f.upper, d))).mtimeMs, T * 1000, `upper ${d}`);
        }
        return snapshot(m.mnt, o);
      });
      await withMount(mountKernel(f.lowers, path.join(f.dir, 'k'), f.upper, f.work, { exact: true }), async (k) => {
        assert.deepEqual(diffSnapshots(ours, await snapshot(k.mnt, o), 'fuse', 'kernel-on-fuse-upper'), []);
      });
    });

    test('a caller taking a signal every 100 us never sees EINTR from stat, xattr reads or readdir', { timeout: 120_000 }, async () => {
      const f = await fixture(`eintr-${transport}`);
      for (let d = 0; d < 30; d++) {
        const sub = path.join(f.lowers[0], `d${d}`);
        await mkdir(sub);
        for (let i = 0; i < 60; i++) {
          const p = path.join(sub, `f${i}`);
          await writeFile(p, 'x');
          if (i % 3 === 0) native.lsetxattr(p, 'user.x', Buffer.from('v'), 0);
        }
      }
      await withMount(mountFuse(f.lowers, f.mnt, f.upper, f.work, transport), async (m) => {
        const res = await run(sigwalk, [m.mnt, '4']).then(
          (r) => ({ ok: true, out: r.stdout, err: r.stderr }),
          (e: { stdout?: string; stderr?: string }) => ({ ok: false, out: e.stdout ?? '', err: e.stderr ?? '' }),
        );
        console.log(`# ${transport}: ${res.out.trim()} ${res.err.trim().split('\n').slice(0, 3).join('; ')}`);
        assert.ok(res.ok, `EINTR seen: ${res.out} ${res.err}`);
        const counts = JSON.parse(res.out) as { calls: number; signals: number };
        assert.ok(counts.calls > 5000 && counts.signals > 1000, `too little done to tell: ${res.out}`);
      });
    });
  });
}
