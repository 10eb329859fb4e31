/**
 * One test table run against both graph drivers (kernel overlay and FUSE), through the real CLI
 * and real mounts. Every mount is undone in an after/finally hook.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, unlink, writeFile, lstat, readdir, stat } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { native } from '../src/common/native.js';
import { cli, cliEntry, cliOk } from './lib/cli.js';
import { expectedTree } from './lib/expected.js';
import { FUSE_TRANSPORTS, transportEnv, type TestTransport } from './lib/fuse.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, isMounted, run } from './lib/mounts.js';
import type { TarEntry } from './lib/tarbuild.js';
import { snapshot } from './lib/tree.js';

const LAYERS: TarEntry[][] = [
  [
    { name: 'bin/' },
    { name: 'bin/tool', content: 'tool v1', mode: 0o755 },
    { name: 'bin/tool-hard', type: 'link', linkname: 'bin/tool' },
    { name: 'bin/su', content: 'setuid', mode: 0o4755 },
    { name: 'etc/' },
    { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\n' },
    { name: 'etc/motd', content: 'layer 1\n', uid: 1000, gid: 100, mode: 0o640 },
    { name: 'etc/link', type: 'symlink', linkname: '../bin/tool' },
    { name: 'dev/' },
    { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
    { name: 'tmp/', mode: 0o1777 },
    { name: 'cap', content: 'caps', pax: { 'SCHILY.xattr.user.layerfs': 'xattr-value' } },
    { name: 'opq/' },
    { name: 'opq/old1', content: 'old1' },
    { name: 'opq/sub/' },
    { name: 'opq/sub/old2', content: 'old2' },
    { name: 'gone/' },
    { name: 'gone/x', content: 'x' },
    { name: 'data/' },
    { name: 'data/big', content: Buffer.alloc(256 * 1024, 7) },
    { name: 'data/keep', content: 'keep' },
  ],
  [
    { name: 'etc/' },
    { name: 'etc/motd', content: 'layer 2 wins\n' },
    { name: 'etc/.wh.passwd', content: '' },
    { name: 'opq/' },
    { name: 'opq/.wh..wh..opq', content: '' },
    { name: 'opq/new', content: 'new' },
    { name: '.wh.gone', content: '' },
  ],
  [{ name: 'app/' }, { name: 'app/run', content: 'run', mode: 0o700 }],
];

/** Async walk of a mount: the FUSE server is another process, but keep to async fs on mounts anyway. */
const snap = (dir: string) => snapshot(dir, { skipXattr: /^(trusted\.overlay\.|security\.)/ });

const DRIVER_CASES: { driver: 'overlay' | 'fuse'; transport?: TestTransport }[] = [{ driver: 'overlay' }, ...FUSE_TRANSPORTS.map((transport) => ({ driver: 'fuse' as const, transport }))];
for (const { driver, transport } of DRIVER_CASES) {
  describe(`graph driver: ${driver}${transport ? ` (${transport})` : ''}`, () => {
    let scratch: string;
    let env: Record<string, string>;
    const mounts: string[] = [];
    let lowers: string[] = [];

    before(async () => {
      scratch = await mkdtemp(path.join(os.tmpdir(), `layerfs-drv-${driver}-`));
      env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer', ...(transport ? transportEnv(transport) : {}) };
      const img = await makeImage(LAYERS);
      await writeOciLayout(path.join(scratch, 'oci'), [{ image: img, name: 'drv/test' }]);
      await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
      lowers = JSON.parse(await cliOk(['image', 'inspect', 'drv/test', '--json'], env)).lowerDirs;
    });
    after(async () => {
      for (const m of mounts.reverse()) await forceUnmount(m);
      for (const m of mounts) assert.equal(await isMounted(m), false, `${m} left mounted`);
      await rm(scratch, { recursive: true, force: true });
    });

    async function mountImage(name: string, extra: string[] = []): Promise<{ mnt: string; id: string }> {
      const mnt = path.join(scratch, name);
      mounts.push(mnt);
      const id = (await cliOk(['mount', 'drv/test', mnt, '--driver', driver, ...extra], env)).trim();
      assert.ok(await isMounted(mnt), 'mounted');
      return { mnt, id };
    }

    test('the merged tree is the expected rootfs, file by file', async () => {
      const { mnt, id } = await mountImage('m1');
      assert.match(id, /^[0-9a-f]{64}$/);
      assert.deepEqual(await snap(mnt), expectedTree(LAYERS));
      const md = JSON.parse(await cliOk(['mount-info', mnt, '--json'], env));
      assert.equal(md.MergedDir, mnt);
      assert.equal(md.UpperDir, path.join(env.LAYERFS_ROOT!, 'overlay', id, 'diff'));
      assert.equal(md.WorkDir, path.join(env.LAYERFS_ROOT!, 'overlay', id, 'work'));
      assert.equal(md.LowerDir, lowers.join(':'));
      assert.equal(md.driver, driver);
      await cliOk(['umount', mnt, '--rm'], env);
      assert.equal(await isMounted(mnt), false);
      await assert.rejects(stat(path.join(env.LAYERFS_ROOT!, 'overlay', id)), 'RW layer removed');
    });

    test('writes, deletes, renames, chmod land in the upper dir; layer diff + apply reproduce the tree', async () => {
      const { mnt, id } = await mountImage('m2');
      await writeFile(path.join(mnt, 'etc/motd'), 'changed\n');
      await writeFile(path.join(mnt, 'newfile'), 'brand new');
      await unlink(path.join(mnt, 'data/keep'));
      await rename(path.join(mnt, 'app/run'), path.join(mnt, 'app/run2'));
      await chmod(path.join(mnt, 'bin/tool'), 0o700);
      await mkdir(path.join(mnt, 'newdir/deep'), { recursive: true });
      await rm(path.join(mnt, 'opq'), { recursive: true });
      await mkdir(path.join(mnt, 'opq'));
      await writeFile(path.join(mnt, 'opq/fresh'), 'fresh');
      const merged = await snap(mnt);
      assert.equal(merged['etc/motd']!.sha256, (await import('node:crypto')).createHash('sha256').update('changed\n').digest('hex'));
      assert.equal(merged['data/keep'], undefined);
      assert.equal(merged['bin/tool']!.mode, '700');
      assert.deepEqual(Object.keys(merged).filter((k) => k.startsWith('opq/')), ['opq/fresh']);
      // the upper dir holds copy-ups and kernel-format whiteouts
      const upper = path.join(env.LAYERFS_ROOT!, 'overlay', id, 'diff');
      assert.equal(await readFile(path.join(upper, 'etc/motd'), 'utf8'), 'changed\n');
      const wh = await lstat(path.join(upper, 'data/keep'));
      assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'whiteout is a 0/0 char device');
      assert.equal(native.lgetxattr(path.join(upper, 'opq'), 'trusted.overlay.opaque').toString(), 'y');
      // layer diff -> apply onto the same lowers (kernel overlay, read-only) gives the same tree
      const tar = path.join(scratch, `${driver}-diff.tar`);
      await new Promise<void>((resolve, reject) => {
        const p = spawn(process.execPath, [cliEntry, 'layer', 'diff', id], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
        p.stdout.pipe(createWriteStream(tar));
        p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`layer diff exited ${code}`))));
      });
      const applied = path.join(scratch, `${driver}-applied`);
      await cliOk(['apply', tar, applied]);
      const check = path.join(scratch, `${driver}-check`);
      await mkdir(check);
      mounts.push(check);
      await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${[applied, ...lowers].join(':')}`, check]);
      try {
        assert.deepEqual(await snap(check), merged);
      } finally {
        await forceUnmount(check);
      }
      // commit: a new image whose read-only mount shows the same tree
      const imgId = (await cliOk(['commit', mnt, '--name', `drv/committed-${driver}`], env)).trim();
      assert.match(imgId, /^[0-9a-f]{64}$/);
      const ro = path.join(scratch, `${driver}-ro`);
      mounts.push(ro);
      await cliOk(['mount', `drv/committed-${driver}`, ro, '--ro', '--driver', driver], env);
      const roTree = await snap(ro);
      delete roTree['.'];
      const m2 = { ...merged };
      delete m2['.'];
      assert.deepEqual(roTree, m2);
      await cliOk(['umount', ro], env);
      await cliOk(['umount', mnt, '--rm'], env);
    });

    test('two mounts of one image share the RO layers and get separate upper dirs', async () => {
      const a = await mountImage('ma');
      const b = await mountImage('mb');
      const mdA = JSON.parse(await cliOk(['mount-info', a.mnt, '--json'], env));
      const mdB = JSON.parse(await cliOk(['mount-info', b.mnt, '--json'], env));
      assert.equal(mdA.LowerDir, mdB.LowerDir);
      assert.notEqual(mdA.UpperDir, mdB.UpperDir);
      await writeFile(path.join(a.mnt, 'only-in-a'), 'a');
      await assert.rejects(stat(path.join(b.mnt, 'only-in-a')));
      assert.deepEqual(await readdir(mdB.UpperDir), []);
      await cliOk(['umount', a.mnt, '--rm'], env);
      await cliOk(['umount', b.mnt, '--rm'], env);
    });

    test('a read-only view refuses writes; layer mount shows one layer with its whiteouts as stored', async () => {
      const ro = path.join(scratch, 'ro-view');
      mounts.push(ro);
      await cliOk(['mount', 'drv/test', ro, '--ro', '--driver', driver], env);
      await assert.rejects(writeFile(path.join(ro, 'x'), 'x'), /EROFS|EACCES|EPERM/);
      assert.equal(await readFile(path.join(ro, 'etc/motd'), 'utf8'), 'layer 2 wins\n');
      await cliOk(['umount', ro], env);
      const layers = JSON.parse(await cliOk(['image', 'inspect', 'drv/test', '--json'], env)).layers;
      const one = path.join(scratch, 'one-layer');
      mounts.push(one);
      await cliOk(['layer', 'mount', layers[1], one, '--driver', driver], env);
      const wh = await lstat(path.join(one, 'etc/passwd'));
      assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'the whiteout is shown as stored');
      await assert.rejects(writeFile(path.join(one, 'x'), 'x'));
      await cliOk(['umount', one], env);
    });

    test('errors: unknown image, mount on a busy mount point, quota where none can be enforced', async () => {
      const r1 = await cli(['mount', 'nope', path.join(scratch, 'x1'), '--driver', driver], env);
      assert.equal(r1.code, 1);
      assert.equal(r1.stderr.trim(), 'layerfs: image nope: no such image');
      const { mnt } = await mountImage('busy');
      const r2 = await cli(['mount', 'drv/test', mnt, '--driver', driver], env);
      assert.equal(r2.code, 1);
      assert.match(r2.stderr, /already mounted/);
      await cliOk(['umount', mnt, '--rm'], env);
      const r3 = await cli(['mount', 'drv/test', path.join(scratch, 'q'), '--driver', driver, '--quota', '10m'], env);
      assert.equal(r3.code, 1);
      assert.match(r3.stderr, /^layerfs: layer [0-9a-f]{64}: quota requested but the backing filesystem \(ext4/m);
      const leftovers = JSON.parse(await cliOk(['layer', 'ls', '--json'], env)).filter((l: { rw: boolean }) => l.rw);
      assert.deepEqual(leftovers, [], 'no RW layer left behind by failed mounts');
    });
  });
}

describe('kernel overlay: many layers and reference counts', () => {
  let scratch: string;
  const mounts: string[] = [];
  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-many-'));
  });
  after(async () => {
    for (const m of mounts) await forceUnmount(m);
    await rm(scratch, { recursive: true, force: true });
  });

  test('a 200-layer image mounts and reads the file of its bottom layer', async () => {
    const env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' };
    const layers: TarEntry[][] = Array.from({ length: 200 }, (_, i) => [{ name: `f${i}`, content: `layer ${i}` }]);
    const img = await makeImage(layers, { gzip: false });
    await writeOciLayout(path.join(scratch, 'oci'), [{ image: img, name: 'many' }]);
    await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
    const mnt = path.join(scratch, 'mnt');
    mounts.push(mnt);
    await cliOk(['mount', 'many', mnt, '--driver', 'overlay'], env);
    assert.equal(await readFile(path.join(mnt, 'f0'), 'utf8'), 'layer 0');
    assert.equal(await readFile(path.join(mnt, 'f199'), 'utf8'), 'layer 199');
    assert.equal((await readdir(mnt)).length, 200);
    await cliOk(['umount', mnt, '--rm'], env);
  });

  test('mounting a mounted layer again returns the same path; unmount drops a reference', async () => {
    const { Service } = await import('../src/service/index.js');
    const env = { root: path.join(scratch, 'root'), shared: path.join(scratch, 'nfs'), role: 'writer' as const };
    const svc = await Service.open(env);
    const mnt = path.join(scratch, 'ref');
    mounts.push(mnt);
    try {
      const { layer } = await svc.mountImage('many', mnt, { driver: 'overlay' });
      const d = await svc.driver('overlay');
      assert.equal(await d.mount(layer), mnt, 'same path');
      await d.unmount(mnt);
      assert.ok(await isMounted(mnt), 'still mounted with one reference left');
      await d.unmount(mnt);
      assert.equal(await isMounted(mnt), false);
      await d.remove(layer);
      assert.equal(await d.exists(layer), false);
    } finally {
      await svc.close();
    }
  });

  test('cleanup unmounts what the driver mounted and clears stale work dirs', async () => {
    const { Service } = await import('../src/service/index.js');
    const svc = await Service.open({ root: path.join(scratch, 'root'), shared: path.join(scratch, 'nfs'), role: 'writer' as const });
    const a = path.join(scratch, 'clean-a');
    const b = path.join(scratch, 'clean-b');
    mounts.push(a, b);
    try {
      const ma = await svc.mountImage('many', a, { driver: 'overlay' });
      await svc.mountImage('many', b, { driver: 'overlay', ro: true });
      const d = await svc.driver('overlay');
      await d.mount(ma.layer); // a second reference: cleanup ignores reference counts
      await mkdir(path.join(scratch, 'root', 'overlay', ma.layer, 'work', 'stale-copyup'), { recursive: true });
      await d.cleanup();
      assert.equal(await isMounted(a), false);
      assert.equal(await isMounted(b), false);
      assert.deepEqual(await svc.index.listMounts(), []);
      assert.deepEqual(await readdir(path.join(scratch, 'root', 'overlay', ma.layer, 'work')), []);
      assert.equal((await svc.status()).mounts, 0);
      await d.remove(ma.layer);
    } finally {
      await svc.close();
    }
  });
});

test('--driver auto falls back to FUSE where kernel overlay is missing', async () => {
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-auto-'));
  const env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' };
  const mnt = path.join(scratch, 'mnt');
  try {
    const img = await makeImage([LAYERS[0]!]);
    await writeOciLayout(path.join(scratch, 'oci'), [{ image: img, name: 'auto' }]);
    await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
    const hidden = { ...env, LAYERFS_NO_KERNEL_OVERLAY: '1' };
    const refused = await cli(['mount', 'auto', mnt, '--driver', 'overlay'], hidden);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^layerfs: driver overlay: kernel overlay does not work on ext4 here/m);
    await cliOk(['mount', 'auto', mnt, '--driver', 'auto'], hidden);
    const md = JSON.parse(await cliOk(['mount-info', mnt, '--json'], env));
    assert.equal(md.driver, 'fuse');
    assert.equal(await readFile(path.join(mnt, 'etc/motd'), 'utf8'), 'layer 1\n');
    await cliOk(['umount', mnt, '--rm'], env);
    // with kernel overlay available, auto picks it
    await cliOk(['mount', 'auto', mnt], env);
    assert.equal(JSON.parse(await cliOk(['mount-info', mnt, '--json'], env)).driver, 'overlay');
    await cliOk(['umount', mnt, '--rm'], env);
  } finally {
    await forceUnmount(mnt);
    await rm(scratch, { recursive: true, force: true });
  }
});
