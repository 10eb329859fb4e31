/**
 * FUSE overlay operation tests over lowers built on disk, compared with kernel overlay on the same lowers.
 * The server always runs in a child process; this process only uses async fs calls (and xattr/child-process
 * calls, which block this process, not the server) on the mount. Every mount is undone in finally/after.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { appendFile, lstat, mkdir, readFile, readdir, rename, rmdir, stat, unlink, writeFile, link, symlink, chmod, lchown } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { native } from '../src/common/native.js';
import { SERVER_MAIN } from '../src/fuse/index.js';
import { buildLowers, cleanup, diffSnapshots, FUSE_TRANSPORTS, isMounted, mountFuse, mountKernel, snapshot, tmpDir, transportArgs, transportOption, type Mounted, undoAfter } from './lib/fuse.js';
import { forceUnmount } from './lib/mounts.js';

const run = promisify(execFile);
const { live } = undoAfter();

async function withMounts<T>(fn: (track: <M extends Mounted>(m: M) => M) => Promise<T>): Promise<T> {
  const mine: Mounted[] = [];
  const track = <M extends Mounted>(m: M): M => {
    mine.push(m);
    live.push(m);
    return m;
  };
  try {
    return await fn(track);
  } finally {
    for (const m of mine.reverse()) await m.stop().catch(() => undefined);
  }
}

const code = async (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: { code?: string }) => e.code ?? String(e));

for (const transport of FUSE_TRANSPORTS) {
  describe(`read-only merged view (${transport})`, () => {
    test('kernel-format lowers: same tree as kernel overlay', async () => {
      const dir = await tmpDir('fro');
      try {
        const lowers = await buildLowers(path.join(dir, 'lowers'), 'kernel', { hardlinks: true });
        await withMounts(async (track) => {
          const k = track(await mountKernel(lowers, path.join(dir, 'mk')));
          const f = track(await mountFuse(lowers, path.join(dir, 'mf'), undefined, undefined, transport));
          const o = { fileNlink: true, mtime: true };
          const d = diffSnapshots(await snapshot(k.mnt, o), await snapshot(f.mnt, o), 'kernel', 'fuse');
          assert.deepEqual(d, []);
          assert.equal(await code(writeFile(path.join(f.mnt, 'x'), 'y')), 'EROFS');
          // stable inode numbers: two lookups, same number; hardlinks share it; one st_dev
          const [a, b, c] = await Promise.all(['hl/one', 'hl/two', 'etc/passwd'].map((p) => stat(path.join(f.mnt, p))));
          assert.equal(a.ino, b.ino);
          assert.notEqual(a.ino, c.ino);
          assert.equal(a.dev, c.dev);
          assert.equal((await stat(path.join(f.mnt, 'hl/one'))).ino, a.ino);
        });
      } finally {
        await cleanup(dir);
      }
    });

    test('.wh. file-form whiteouts and opaque markers: same tree as kernel on the kernel form', async () => {
      const dir = await tmpDir('fwh');
      try {
        const kl = await buildLowers(path.join(dir, 'kl'), 'kernel');
        const fl = await buildLowers(path.join(dir, 'fl'), 'file');
        await withMounts(async (track) => {
          const k = track(await mountKernel(kl, path.join(dir, 'mk')));
          const f = track(await mountFuse(fl, path.join(dir, 'mf'), undefined, undefined, transport));
          const d = diffSnapshots(await snapshot(k.mnt), await snapshot(f.mnt), 'kernel', 'fuse');
          assert.deepEqual(d, []);
          assert.ok(!(await readdir(path.join(f.mnt, 'etc'))).some((n) => n.startsWith('.wh.')));
        });
      } finally {
        await cleanup(dir);
      }
    });
  });

  describe(`writable mount (${transport})`, () => {
    test('copy-up, whiteouts, opaque dirs, lower dir rename, hardlinks, xattrs, errors; upper valid for kernel overlay', async () => {
      const dir = await tmpDir('frw');
      try {
        await chmod(dir, 0o755); // the non-root checks below must reach the mount
        const lowers = await buildLowers(path.join(dir, 'lowers'), 'kernel', { hardlinks: true });
        const [upper, work] = [path.join(dir, 'u'), path.join(dir, 'w')];
        await mkdir(upper);
        await mkdir(work);
        let final!: Map<string, unknown>;
        await withMounts(async (track) => {
          const f = track(await mountFuse(lowers, path.join(dir, 'mf'), upper, work, transport));
          const m = (p: string) => path.join(f.mnt, p);
          const inoBefore = (await stat(m('usr/bin/tool2'))).ino;

          // copy-up keeps data, mode (set-uid), owner, xattrs, and the inode number
          await appendFile(m('usr/bin/tool2'), '+more');
          const t2 = await lstat(m('usr/bin/tool2'));
          assert.equal(t2.mode & 0o7777, 0o4755);
          assert.equal(t2.ino, inoBefore);
          assert.equal(await readFile(m('usr/bin/tool2'), 'utf8'), 'tool2+more');
          assert.equal(native.lgetxattr(m('usr/bin/tool2'), 'user.mid').toString(), '2');
          await appendFile(m('usr/share/doc/readme'), 'more\n');
          const rd = await lstat(m('usr/share/doc/readme'));
          assert.deepEqual([rd.uid, rd.gid], [1234, 4321]);
          assert.ok((await lstat(path.join(upper, 'usr/share/doc/readme'))).isFile());

          // hardlinks in a lower stay one file after a write through one name
          const before = await stat(m('hl/one'));
          await appendFile(m('hl/two'), 'written via two\n');
          for (const p of ['hl/one', 'hl/two', 'hl2/three']) {
            assert.equal(await readFile(m(p), 'utf8'), 'shared inode\nwritten via two\n', p);
            const st = await stat(m(p));
            assert.equal(st.ino, before.ino, p);
            assert.equal(st.nlink, 3, p);
          }
          assert.equal((await lstat(path.join(upper, 'hl/one'))).ino, (await lstat(path.join(upper, 'hl2/three'))).ino);

          // delete a lower file: a kernel whiteout in upper
          await unlink(m('etc/hosts'));
          assert.equal(await code(lstat(m('etc/hosts'))), 'ENOENT');
          const wh = await lstat(path.join(upper, 'etc/hosts'));
          assert.ok(wh.isCharacterDevice() && wh.rdev === 0);

          // a dir that only looks empty after whiteouts is removable; recreated, it is opaque and empty
          assert.deepEqual(await readdir(m('emptyish')), []);
          await rmdir(m('emptyish'));
          await mkdir(m('emptyish'));
          assert.deepEqual(await readdir(m('emptyish')), []);
          assert.equal(native.lgetxattr(path.join(upper, 'emptyish'), 'trusted.overlay.opaque').toString(), 'y');
          // overlay's private xattrs are hidden and refused through the mount
          assert.ok(!native.llistxattr(m('emptyish')).some((n) => n.startsWith('trusted.overlay.')));
          assert.throws(() => native.lgetxattr(m('emptyish'), 'trusted.overlay.opaque'), { code: 'ENOTSUP' });
          assert.throws(() => native.lsetxattr(m('etc'), 'trusted.overlay.opaque', Buffer.from('y'), 0), { code: 'ENOTSUP' });
          assert.equal(await code(rmdir(m('etc'))), 'ENOTEMPTY');
          assert.equal(await code(rmdir(m('etc/passwd'))), 'ENOTDIR');
          assert.equal(await code(unlink(m('etc'))), 'EISDIR');
          assert.equal(await code(mkdir(m('etc'))), 'EEXIST');

          // rename of a dir that lives in a lower layer works (tree copied up, made opaque)
          const share = await snapshot(m('usr/share'));
          await rename(m('usr/share'), m('usr/share2'));
          assert.equal(await code(lstat(m('usr/share'))), 'ENOENT');
          assert.deepEqual(diffSnapshots(share, await snapshot(m('usr/share2'))), []);
          await rename(m('opq'), m('etc/opq-moved')); // merged + opaque dir, into another merged dir
          assert.deepEqual((await readdir(m('etc/opq-moved'))).sort(), ['new']);
          // rename over an existing file, and a dir over an empty-looking dir
          await rename(m('etc/motd'), m('etc/passwd'));
          assert.equal(await readFile(m('etc/passwd'), 'utf8'), 'hello from the top\n');
          await mkdir(m('empty2'));
          await rename(m('top-only'), m('empty2'));
          assert.deepEqual(await readdir(m('empty2')), ['deep']);
          assert.equal(await code(rename(m('usr'), m('usr/lib/inside'))), 'EINVAL');
          assert.equal(await code(rename(m('var'), m('rellink'))), 'ENOTDIR');
          assert.equal(await code(rename(m('abslink'), m('usr'))), 'EISDIR');

          // links, symlinks, chmod, chown, xattrs
          await link(m('usr/lib/libx.so'), m('libx-link'));
          assert.equal((await stat(m('libx-link'))).nlink, 2);
          await symlink('usr/lib', m('lib'));
          assert.deepEqual((await readdir(m('lib'))).sort(), (await readdir(m('usr/lib'))).sort());
          await chmod(m('var'), 0o700);
          assert.equal((await lstat(m('var'))).mode & 0o7777, 0o700);
          await lchown(m('abslink'), 7, 8);
          assert.deepEqual([(await lstat(m('abslink'))).uid, (await lstat(m('abslink'))).gid], [7, 8]);
          native.lsetxattr(m('etc/passwd'), 'user.k', Buffer.from('v'), 0);
          assert.equal(native.lgetxattr(m('etc/passwd'), 'user.k').toString(), 'v');
          native.lremovexattr(m('etc/passwd'), 'user.k');
          assert.throws(() => native.lgetxattr(m('etc/passwd'), 'user.k'), { code: 'ENODATA' });

          // names over 255 bytes
          const long = 'n'.repeat(256);
          assert.equal(await code(lstat(m(long))), 'ENAMETOOLONG');
          assert.equal(await code(writeFile(m(long), 'x')), 'ENAMETOOLONG');
          assert.equal(await code(mkdir(m(long))), 'ENAMETOOLONG');
          await writeFile(m('n'.repeat(255)), 'max');

          // permission checks for a non-root user (default_permissions)
          const asUser = (...args: string[]) => run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', ...args]);
          await assert.rejects(asUser('cat', m('secret')), /Permission denied/);
          assert.match((await asUser('cat', m('etc/passwd'))).stdout, /hello from the top/);
          await assert.rejects(asUser('touch', m('etc/newfile')), /Permission denied/);

          final = await snapshot(f.mnt, { mtime: true });
        });
        // only the kernel's format in the upper dir
        const strays: string[] = [];
        const walk = async (d: string): Promise<void> => {
          for (const e of await readdir(d, { withFileTypes: true })) {
            if (e.name.startsWith('.wh.') || e.name.startsWith('.fuse_hidden')) strays.push(path.join(d, e.name));
            if (e.isDirectory()) await walk(path.join(d, e.name));
          }
        };
        await walk(upper);
        assert.deepEqual(strays, []);
        // the upper, mounted by kernel overlay, gives the identical tree
        await withMounts(async (track) => {
          const k = track(await mountKernel(lowers, path.join(dir, 'mk'), upper, work));
          assert.deepEqual(diffSnapshots(final as never, await snapshot(k.mnt, { mtime: true }), 'fuse', 'kernel'), []);
        });
      } finally {
        await cleanup(dir);
      }
    });
  });

  describe(`server process (${transport})`, () => {
    test('background start, ready on return; SIGTERM unmounts; errors are reported', async () => {
      const dir = await tmpDir('fsrv');
      const mnt = path.join(dir, 'm');
      try {
        const lowers = await buildLowers(path.join(dir, 'lowers'), 'kernel');
        await mkdir(mnt);
        await mkdir(path.join(dir, 'u'));
        await mkdir(path.join(dir, 'w'));
        const o = `lowerdir=${lowers.join(':')},upperdir=${dir}/u,workdir=${dir}/w,${transportOption(transport)}`;
        await run(process.execPath, [SERVER_MAIN, '-o', o, mnt]);
        assert.ok(await isMounted(mnt));
        assert.equal(await readFile(path.join(mnt, 'etc/motd'), 'utf8'), 'hello from the top\n');
        const pids = (await run('pgrep', ['-f', `server-main.js -f --ready-fd 3 -o ${o}`]).catch(() => ({ stdout: '' }))).stdout.trim().split('\n').filter(Boolean);
        assert.equal(pids.length, 1);
        process.kill(Number(pids[0]), 'SIGTERM');
        for (let i = 0; i < 50 && (await isMounted(mnt)); i++) await new Promise((r) => setTimeout(r, 100));
        assert.ok(!(await isMounted(mnt)));

        // a foreground server ends when unmounted from outside
        const child = spawn(process.execPath, [SERVER_MAIN, '-f', '-o', o, mnt], { stdio: 'ignore' });
        const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
        for (let i = 0; i < 50 && !(await isMounted(mnt)); i++) await new Promise((r) => setTimeout(r, 100));
        assert.ok(await isMounted(mnt));
        await run('umount', [mnt]);
        assert.equal(await exited, 0);

        const bad = await run(process.execPath, [SERVER_MAIN, '-o', `lowerdir=${dir}/nope`, mnt]).then(
          () => null,
          (e: { code?: number; stderr?: string }) => e,
        );
        assert.ok(bad && bad.code !== 0);
        assert.match(bad.stderr ?? '', /^layerfs: fuse: /);
        assert.ok(!(await isMounted(mnt)));

        // the same through the CLI: `layerfs fuse -o ... MNT` returns once mounted
        const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
        await run(process.execPath, [cli, 'fuse', ...transportArgs(transport), '-o', `lowerdir=${lowers.join(':')}`, '-o', `upperdir=${dir}/u,workdir=${dir}/w`, mnt]);
        assert.equal(await readFile(path.join(mnt, 'etc/motd'), 'utf8'), 'hello from the top\n');
        await run('umount', [mnt]);
        const cliBad = await run(process.execPath, [cli, 'fuse', '-o', `lowerdir=${dir}/nope`, mnt]).then(() => null, (e: { stderr?: string }) => e);
        assert.match(cliBad?.stderr ?? '', /^layerfs: fuse: /);
      } finally {
        await forceUnmount(mnt);
        await cleanup(dir);
      }
    });
  });
}
