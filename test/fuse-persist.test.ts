/**
 * What a FUSE mount leaves in its upper dir must survive an unmount and a remount, per transport:
 *  - two names of one lower file stay one file after a write through either name (fuse-overlayfs 1.10 loses the
 *    write through the other name after a remount); link counts are real, also after unlinking one name;
 *  - inode numbers are stable across a remount: derived from st_ino (all layers here are on one fs, so they are the
 *    real st_ino, as kernel overlay gives them), and a copy-up records the number it had in the private xattr
 *    trusted.overlay.layerfs.ino of the upper copy, which kernel overlay hides and ignores;
 *  - the upper stays a plain kernel overlay upper: no stray files, and kernel overlay shows the same tree;
 *  - an unlinked file that is still open reports 0 links through fstat (fuse-native cannot: marked todo there);
 *  - layers on different filesystems (a lower on a tmpfs): every file keeps one number, no two files share one
 *    (the other fs's numbers get the layer's index in the high bits; fuse-native folds them into 32 bits).
 * The servers are child processes; this process only uses async fs calls on the mounts.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, link, mkdir, open, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { forceUnmount, run } from './lib/mounts.js';
import { cleanup, diffSnapshots, mountKernel, snapshot, tmpDir, type Mounted, undoAfter } from './lib/fuse.js';
import { mountWith, TRANSPORT_NAMES, transportUnavailable, type TMount } from './lib/fusemount.js';

const { live } = undoAfter<TMount | Mounted>();

async function buildLowers(root: string): Promise<string[]> {
  const [l1, l2] = [path.join(root, 'l1'), path.join(root, 'l2')];
  await mkdir(path.join(l2, 'hl'), { recursive: true });
  await mkdir(path.join(l2, 'hl2'), { recursive: true });
  await mkdir(path.join(l2, 'd/sub'), { recursive: true });
  await mkdir(path.join(l1, 'd'), { recursive: true });
  await writeFile(path.join(l2, 'hl/a'), 'shared\n');
  await link(path.join(l2, 'hl/a'), path.join(l2, 'hl/b'));
  await link(path.join(l2, 'hl/a'), path.join(l2, 'hl2/c'));
  await writeFile(path.join(l2, 'hl/p'), 'pair\n');
  await link(path.join(l2, 'hl/p'), path.join(l2, 'hl/q'));
  await writeFile(path.join(l2, 'd/sub/file'), 'deep\n');
  await writeFile(path.join(l2, 'plain'), 'plain\n');
  await writeFile(path.join(l2, 'grow'), 'grow\n');
  await writeFile(path.join(l1, 'd/top'), 'top\n');
  return [l1, l2];
}

const NAMES = ['.', 'plain', 'grow', 'd', 'd/sub', 'd/sub/file', 'd/top', 'hl', 'hl/a', 'hl/b', 'hl2/c', 'hl/p', 'hl/q', 'new', 'newdir', 'moved'];

async function inos(mnt: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const n of NAMES) out[n] = (await stat(path.join(mnt, n)).catch(() => null))?.ino ?? -1;
  return out;
}

for (const t of TRANSPORT_NAMES) {
  describe(`persistence across remount (${t})`, { skip: transportUnavailable(t) ?? false }, () => {
    test('hardlinks stay one file, link counts are real, inode numbers stable, upper valid for kernel overlay', async () => {
      const dir = await tmpDir(`fper-${t}`);
      const [upper, work, mnt] = [path.join(dir, 'u'), path.join(dir, 'w'), path.join(dir, 'm')];
      try {
        const lowers = await buildLowers(path.join(dir, 'lowers'));
        await mkdir(upper);
        await mkdir(work);
        const m = (p: string) => path.join(mnt, p);

        // ---- first mount
        let f = await mountWith(t, lowers, mnt, upper, work);
        live.push(f);
        await writeFile(m('new'), 'created\n');
        await mkdir(m('newdir'));
        await writeFile(m('tomove'), 'moving\n');
        await rename(m('tomove'), m('moved'));
        const first = await inos(mnt);
        assert.equal(first['hl/a'], first['hl/b']);
        assert.equal(first['hl/a'], first['hl2/c']);
        assert.equal((await stat(m('hl/a'))).nlink, 3);
        // a write through one name: every name sees it, one inode, three links
        await appendFile(m('hl/b'), 'via b\n');
        await appendFile(m('grow'), 'more\n'); // plain copy-up
        await writeFile(m('d/sub/new'), 'in a copied-up merged dir\n');
        for (const p of ['hl/a', 'hl/b', 'hl2/c']) {
          assert.equal(await readFile(m(p), 'utf8'), 'shared\nvia b\n', p);
          assert.equal((await stat(m(p))).nlink, 3, p);
        }
        // unlinking one name of a lower pair (never written): the other reports 1 link, now and after remount
        await unlink(m('hl/q'));
        assert.equal((await stat(m('hl/p'))).nlink, 1);
        const copied = await inos(mnt);
        assert.deepEqual({ ...copied, 'hl/q': first['hl/q'] }, first, 'copy-up keeps inode numbers');
        await f.stop();

        // ---- second mount over the same upper
        f = await mountWith(t, lowers, mnt, upper, work);
        live.push(f);
        const second = await inos(mnt);
        assert.equal(second['hl/q'], -1);
        assert.deepEqual({ ...second, 'hl/q': first['hl/q'] }, first, 'inode numbers after remount');
        for (const p of ['hl/a', 'hl/b', 'hl2/c']) {
          assert.equal(await readFile(m(p), 'utf8'), 'shared\nvia b\n', p);
          assert.equal((await stat(m(p))).nlink, 3, p);
        }
        assert.equal((await stat(m('hl/p'))).nlink, 1);
        // a write through another name after the remount: still one file
        await appendFile(m('hl2/c'), 'via c\n');
        for (const p of ['hl/a', 'hl/b', 'hl2/c']) assert.equal(await readFile(m(p), 'utf8'), 'shared\nvia b\nvia c\n', p);
        await unlink(m('hl/a'));
        assert.equal((await stat(m('hl/b'))).nlink, 2);
        assert.equal((await stat(m('hl/b'))).ino, first['hl/b']);
        const snap = await snapshot(mnt, { fileNlink: true });
        await f.stop();

        // ---- the upper: no stray files; kernel overlay gives the same tree
        const strays: string[] = [];
        const walk = async (d: string): Promise<void> => {
          for (const e of await readdir(d, { withFileTypes: true })) {
            if (e.name.startsWith('.wh.') || e.name.startsWith('.fuse_hidden') || e.name.startsWith('#')) strays.push(path.join(d, e.name));
            if (e.isDirectory()) await walk(path.join(d, e.name));
          }
        };
        await walk(upper);
        assert.deepEqual(strays, []);
        const k = await mountKernel(lowers, path.join(dir, 'mk'), upper, work);
        live.push(k);
        try {
          assert.deepEqual(diffSnapshots(snap, await snapshot(k.mnt, { fileNlink: true }), t, 'kernel'), []);
        } finally {
          await k.stop();
        }
      } finally {
        for (const x of live.splice(0)) await x.stop().catch(() => undefined);
        await cleanup(dir);
      }
    });

    // libfuse 2's high-level API renames an open file it is told to unlink to .fuse_hidden*, and fuse-native sends
    // st_nlink 0 as 1: through fuse-native fstat cannot say 0. The direct transport answers unlink itself.
    const todo = t === 'fuse-native' ? 'fuse-native limitation (libfuse .fuse_hidden rename; nlink 0 sent as 1): the direct transport fixes it' : false;
    test('an unlinked file that is still open reports 0 links via fstat', { todo }, async () => {
      const dir = await tmpDir(`fhid-${t}`);
      const [upper, work, mnt] = [path.join(dir, 'u'), path.join(dir, 'w'), path.join(dir, 'm')];
      try {
        const lowers = await buildLowers(path.join(dir, 'lowers'));
        await mkdir(upper);
        await mkdir(work);
        const f = await mountWith(t, lowers, mnt, upper, work);
        live.push(f);
        await writeFile(path.join(mnt, 'victim'), 'still open\n');
        const fh = await open(path.join(mnt, 'victim'), 'r');
        const fhl = await open(path.join(mnt, 'plain'), 'r'); // a lower file, open, unlinked
        try {
          await unlink(path.join(mnt, 'victim'));
          await unlink(path.join(mnt, 'plain'));
          assert.ok(!(await readdir(mnt)).includes('victim'));
          assert.equal((await fh.readFile('utf8')), 'still open\n');
          assert.equal((await fhl.readFile('utf8')), 'plain\n');
          assert.equal((await fh.stat()).nlink, 0, 'upper file');
          assert.equal((await fhl.stat()).nlink, 0, 'lower file');
        } finally {
          await fh.close();
          await fhl.close();
          await f.stop();
        }
        const left = (await readdir(upper)).filter((n) => n.startsWith('.fuse_hidden'));
        assert.deepEqual(left, [], 'no hidden files left in the upper');
      } finally {
        for (const x of live.splice(0)) await x.stop().catch(() => undefined);
        await cleanup(dir);
      }
    });

    test('layers on two filesystems: one number per file, stable across copy-up, none shared', async () => {
      const dir = await tmpDir(`fxdev-${t}`);
      const [tmpfsLower, disk, upper, work, mnt] = ['tl', 'dl', 'u', 'w', 'm'].map((x) => path.join(dir, x));
      let tmpfsMounted = false;
      try {
        await mkdir(tmpfsLower);
        await run('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', tmpfsLower]);
        tmpfsMounted = true;
        // the same names, and files whose st_ino may well coincide across the two filesystems
        for (const [root, tag] of [[tmpfsLower, 'tmpfs'], [disk, 'disk']] as const) {
          await mkdir(path.join(root, 'd', tag), { recursive: true });
          for (let i = 0; i < 40; i++) await writeFile(path.join(root, 'd', tag, `f${i}`), `${tag} ${i}\n`);
          await writeFile(path.join(root, `only-${tag}`), `${tag}\n`);
        }
        await mkdir(upper);
        await mkdir(work);
        const f = await mountWith(t, [tmpfsLower, disk], mnt, upper, work);
        live.push(f);
        try {
          const names = ['only-tmpfs', 'only-disk', ...['tmpfs', 'disk'].flatMap((tag) => Array.from({ length: 40 }, (_, i) => `d/${tag}/f${i}`))];
          const first = new Map<string, number>();
          for (const n of names) first.set(n, (await stat(path.join(mnt, n))).ino);
          const seen = new Map<number, string>();
          for (const [n, ino] of first) {
            assert.ok(!seen.has(ino), `${n} and ${seen.get(ino)} share inode ${ino}`);
            seen.set(ino, n);
            if (t === 'fuse-native') assert.ok(ino < 2 ** 32, `${n}: ${ino} does not fit 32 bits`);
          }
          // a copy-up from each filesystem keeps the number
          await appendFile(path.join(mnt, 'only-tmpfs'), 'more\n');
          await appendFile(path.join(mnt, 'd/disk/f3'), 'more\n');
          for (const n of names) assert.equal((await stat(path.join(mnt, n))).ino, first.get(n), `${n} changed its number`);
          assert.equal(await readFile(path.join(mnt, 'only-tmpfs'), 'utf8'), 'tmpfs\nmore\n');
        } finally {
          await f.stop();
        }
      } finally {
        for (const x of live.splice(0)) await x.stop().catch(() => undefined);
        if (tmpfsMounted) await forceUnmount(tmpfsLower).catch(() => undefined);
        await cleanup(dir);
      }
    });
  });
}
