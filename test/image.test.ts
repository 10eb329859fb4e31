import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readdir, lstat, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { native } from '../src/common/native.js';
import { chainIds } from '../src/image/index.js';
import { cli, cliOk } from './lib/cli.js';
import { dockerSave, makeImage, ociArchive, writeOciLayout, type TestImage } from './lib/images.js';
import type { TarEntry } from './lib/tarbuild.js';

/** A three-layer image with every kind of entry the issue names. */
const LAYER1: TarEntry[] = [
  { name: 'bin/' },
  { name: 'bin/sh', content: '#!/bin/true\n', mode: 0o755 },
  { name: 'bin/sh-hard', type: 'link', linkname: 'bin/sh' },
  { name: 'bin/su', content: 'setuid', mode: 0o4755, uid: 0, gid: 0 },
  { name: 'etc/' },
  { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\n', uid: 0, gid: 0 },
  { name: 'etc/motd', content: 'hello from layer 1\n', uid: 1000, gid: 100, mode: 0o640 },
  { name: 'etc/link', type: 'symlink', linkname: '../bin/sh' },
  { name: 'dev/' },
  { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
  { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
  { name: 'tmp/', mode: 0o1777 },
  { name: 'cap', content: 'caps', pax: { 'SCHILY.xattr.user.layerfs': 'xattr-value' } },
  { name: 'opq/' },
  { name: 'opq/old1', content: 'old1' },
  { name: 'opq/old2', content: 'old2' },
  { name: 'gone/' },
  { name: 'gone/x', content: 'x' },
];
const LAYER2: TarEntry[] = [
  { name: 'etc/' },
  { name: 'etc/motd', content: 'hello from layer 2\n' },
  { name: 'etc/.wh.passwd', content: '' },
  { name: 'opq/' },
  { name: 'opq/.wh..wh..opq', content: '' },
  { name: 'opq/new', content: 'new' },
  { name: '.wh.gone', content: '' },
];
const LAYER3: TarEntry[] = [{ name: 'app/' }, { name: 'app/run', content: 'run', mode: 0o700 }];

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

describe('image import', () => {
  let scratch: string;
  let img: TestImage;
  const env = () => ({ LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' });

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-image-'));
    img = await makeImage([LAYER1, LAYER2, LAYER3]);
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  async function checkLayers(root: string, image: TestImage, layers: string[]) {
    const ids = chainIds(image.diffIds).map((d) => d.slice(7));
    assert.deepEqual(layers, ids, 'layer ids are the chainIDs');
    const d1 = path.join(root, 'overlay', ids[0]!, 'diff');
    const d2 = path.join(root, 'overlay', ids[1]!, 'diff');
    // layer 1: every entry type
    const sh = await lstat(path.join(d1, 'bin/sh'));
    assert.ok(sh.isFile());
    assert.equal(sh.mode & 0o7777, 0o755);
    const hard = await lstat(path.join(d1, 'bin/sh-hard'));
    assert.equal(hard.ino, sh.ino, 'hardlink shares the inode');
    assert.equal(sh.nlink, 2);
    assert.equal((await lstat(path.join(d1, 'bin/su'))).mode & 0o7777, 0o4755, 'setuid kept');
    const motd = await lstat(path.join(d1, 'etc/motd'));
    assert.deepEqual([motd.uid, motd.gid, motd.mode & 0o777], [1000, 100, 0o640]);
    assert.equal(motd.mtimeMs, Date.parse('2024-01-02T03:04:05Z'));
    const link = await lstat(path.join(d1, 'etc/link'));
    assert.ok(link.isSymbolicLink());
    const nul = await lstat(path.join(d1, 'dev/null'));
    assert.ok(nul.isCharacterDevice());
    assert.equal(nul.rdev, 1 * 256 + 3);
    assert.ok((await lstat(path.join(d1, 'dev/fifo'))).isFIFO());
    assert.equal((await lstat(path.join(d1, 'tmp'))).mode & 0o7777, 0o1777, 'sticky kept');
    assert.equal(native.lgetxattr(path.join(d1, 'cap'), 'user.layerfs').toString(), 'xattr-value');
    // layer 2: whiteouts and opaque dir in kernel overlay format
    const wh = await lstat(path.join(d2, 'etc/passwd'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, '.wh.passwd became a 0/0 char device');
    assert.ok((await lstat(path.join(d2, 'gone'))).isCharacterDevice());
    assert.equal(native.lgetxattr(path.join(d2, 'opq'), 'trusted.overlay.opaque').toString(), 'y');
    assert.deepEqual((await readdir(path.join(d2, 'opq'))).sort(), ['new']);
    assert.deepEqual((await readdir(path.join(d2, 'etc'))).sort(), ['motd', 'passwd']);
  }

  test('OCI layout dir: layers are chainIDs, entries preserved file by file', async () => {
    const layout = path.join(scratch, 'oci');
    await writeOciLayout(layout, [{ image: img, name: 'test/one:1' }]);
    const out = JSON.parse(await cliOk(['image', 'import', layout, '--json'], env()));
    assert.equal(out.id, img.configDigest.slice(7));
    assert.deepEqual(out.names, ['test/one:1']);
    assert.deepEqual(out.extracted, [true, true, true]);
    await checkLayers(env().LAYERFS_ROOT, img, out.layers);
    // RO layers live on the shared store, reached through RO symlinks
    const ro = await lstat(path.join(env().LAYERFS_ROOT, 'overlay', out.layers[0]));
    assert.ok(ro.isSymbolicLink());
    assert.ok((await stat(path.join(env().LAYERFS_SHARED, 'overlay', out.layers[0], 'diff'))).isDirectory());
    const insp = JSON.parse(await cliOk(['image', 'inspect', 'test/one:1', '--json'], env()));
    assert.deepEqual(insp.layers, out.layers);
    assert.deepEqual(
      insp.lowerDirs,
      [...out.layers].reverse().map((l: string) => path.join(env().LAYERFS_ROOT, 'overlay', l, 'diff')),
    );
  });

  test('OCI archive and docker-save tar of the same layers share the stored layers', async () => {
    const ociTar = path.join(scratch, 'img.oci.tar');
    await writeFile(ociTar, await ociArchive(img, 'test/two:2'));
    const a = JSON.parse(await cliOk(['image', 'import', ociTar, '--json'], env()));
    assert.deepEqual(a.extracted, [false, false, false], 'nothing extracted again');
    // the same archive into an empty store is extracted from the tar itself, file by file the same
    const fresh = { LAYERFS_ROOT: path.join(scratch, 'root-ocitar'), LAYERFS_SHARED: path.join(scratch, 'nfs-ocitar'), LAYERFS_ROLE: 'writer' };
    const f = JSON.parse(await cliOk(['image', 'import', ociTar, '--json'], fresh));
    assert.deepEqual(f.extracted, [true, true, true]);
    await checkLayers(fresh.LAYERFS_ROOT, img, f.layers);
    assert.equal(a.id, img.configDigest.slice(7));
    assert.deepEqual(a.names.sort(), ['test/one:1', 'test/two:2']);

    // docker save holds uncompressed layers: the same diff ids, so the same chainIDs
    const plain = await makeImage([LAYER1, LAYER2, LAYER3], { gzip: false });
    const dockerTar = path.join(scratch, 'img.docker.tar');
    await writeFile(dockerTar, await dockerSave(plain, ['docker/img:latest']));
    const b = JSON.parse(await cliOk(['image', 'import', dockerTar, '--json'], env()));
    assert.deepEqual(b.layers, a.layers);
    assert.deepEqual(b.extracted, [false, false, false]);
    await checkLayers(env().LAYERFS_ROOT, plain, b.layers);
    const freshDocker = { LAYERFS_ROOT: path.join(scratch, 'root-docker'), LAYERFS_SHARED: path.join(scratch, 'nfs-docker'), LAYERFS_ROLE: 'writer' };
    const fd = JSON.parse(await cliOk(['image', 'import', dockerTar, '--json'], freshDocker));
    assert.deepEqual(fd.extracted, [true, true, true]);
    assert.deepEqual(fd.names, ['docker/img:latest']);
    await checkLayers(freshDocker.LAYERFS_ROOT, plain, fd.layers);

    // a second image sharing the two bottom layers stores only its new top layer
    const other = await makeImage([LAYER1, LAYER2, [{ name: 'other', content: 'other' }]]);
    const layout = path.join(scratch, 'oci-other');
    await writeOciLayout(layout, [{ image: other, name: 'test/other' }]);
    const c = JSON.parse(await cliOk(['image', 'import', layout, '--json'], env()));
    assert.deepEqual(c.extracted, [false, false, true]);
    assert.deepEqual(c.layers.slice(0, 2), a.layers.slice(0, 2));
    const shared = (await readdir(path.join(env().LAYERFS_SHARED, 'overlay'))).filter((n) => /^[0-9a-f]{64}$/.test(n));
    assert.equal(shared.length, 4 + (b.id === a.id ? 0 : 0), 'four distinct layers stored once each');
    const ls = JSON.parse(await cliOk(['layer', 'ls', '--json'], env()));
    assert.equal(ls.length, 4);
  });

  test('index rebuild after deleting the index gives the same answers', async () => {
    const before1 = await cliOk(['image', 'ls', '--json'], env());
    const before2 = await cliOk(['layer', 'ls', '--json'], env());
    await rm(path.join(env().LAYERFS_ROOT, 'index'), { recursive: true, force: true });
    // a start with no index rebuilds it
    assert.equal(await cliOk(['image', 'ls', '--json'], env()), before1);
    assert.equal(await cliOk(['layer', 'ls', '--json'], env()), before2);
    await cliOk(['index', 'rebuild'], env());
    assert.equal(await cliOk(['image', 'ls', '--json'], env()), before1);
    assert.equal(await cliOk(['layer', 'ls', '--json'], env()), before2);
  });

  test('platform index picks the host platform', async () => {
    const amd = await makeImage([[{ name: 'arch', content: 'amd64' }]], { arch: 'amd64' });
    const arm = await makeImage([[{ name: 'arch', content: 'arm64' }]], { arch: 'arm64' });
    const layout = path.join(scratch, 'multi');
    await writeOciLayout(layout, [
      { image: arm, platform: { os: 'linux', architecture: 'arm64' } },
      { image: amd, platform: { os: 'linux', architecture: 'amd64' } },
    ]);
    const out = JSON.parse(await cliOk(['image', 'import', layout, '--name', 'multi', '--json'], env()));
    const want = process.arch === 'arm64' ? arm : amd;
    assert.equal(out.id, want.configDigest.slice(7));
    assert.deepEqual(out.names, ['multi:latest']);
  });

  test('image rm removes unshared layers only; layer rm of a used layer names its user', async () => {
    const insp = JSON.parse(await cliOk(['image', 'inspect', 'test/other', '--json'], env()));
    const used = await cli(['layer', 'rm', insp.layers[0]], env());
    assert.equal(used.code, 1);
    assert.match(used.stderr, /^layerfs: layer [0-9a-f]{64}: still used by image /m);
    const rmOut = JSON.parse(await cliOk(['image', 'rm', 'test/other', '--json'], env()));
    assert.deepEqual(rmOut.layers, [insp.layers[2]], 'only the unshared top layer goes');
    await assert.rejects(stat(path.join(env().LAYERFS_SHARED, 'overlay', insp.layers[2])));
    assert.ok((await stat(path.join(env().LAYERFS_SHARED, 'overlay', insp.layers[0], 'diff'))).isDirectory());
    const gone = await cli(['image', 'inspect', 'test/other'], env());
    assert.equal(gone.code, 1);
    assert.equal(gone.stderr.trim(), 'layerfs: image test/other: no such image');
  });

  test('layer create from a tar, with a parent, and apply onto a plain dir', async () => {
    const { buildTar } = await import('./lib/tarbuild.js');
    const tar = path.join(scratch, 'l.tar');
    await writeFile(tar, await buildTar([{ name: 'hello', content: 'hi' }, { name: '.wh.app', content: '' }]));
    const base = JSON.parse(await cliOk(['image', 'inspect', 'test/one:1', '--json'], env())).topLayer;
    const id = (await cliOk(['layer', 'create', '--tar', tar, '--parent', base], env())).trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    const rec = JSON.parse(await cliOk(['layer', 'inspect', id, '--json'], env()));
    assert.equal(rec.parent, base);
    assert.equal(rec.diffDigest, 'sha256:' + createHash('sha256').update(await (await import('node:fs/promises')).readFile(tar)).digest('hex'));
    const dir = path.join(scratch, 'applied');
    const digest = (await cliOk(['apply', tar, dir])).trim();
    assert.equal(digest, rec.diffDigest);
    assert.ok((await lstat(path.join(dir, 'app'))).isCharacterDevice());
    void sha;
  });

  test('bad input: clear errors, nothing left behind', async () => {
    const cases: [string, RegExp][] = [
      [path.join(scratch, 'nope'), /^layerfs: .*nope: no such file or directory$/m],
      [scratch + '/img.oci.tar.bogus', /no such file/],
    ];
    for (const [p, re] of cases) {
      const r = await cli(['image', 'import', p], env());
      assert.equal(r.code, 1);
      assert.match(r.stderr, re);
    }
    // a layout whose layer blob does not match its digest
    const bad = await makeImage([[{ name: 'x', content: 'x' }]]);
    const layout = path.join(scratch, 'bad');
    await writeOciLayout(layout, [{ image: bad }]);
    const blob = path.join(layout, 'blobs', 'sha256', bad.blobs[0]!.length ? (await import('./lib/tarbuild.js')).sha256(bad.blobs[0]!).slice(7) : '');
    const { buildTar } = await import('./lib/tarbuild.js');
    await writeFile(blob, await buildTar([{ name: 'x', content: 'tampered' }], { gzip: true }));
    const r = await cli(['image', 'import', layout], env());
    assert.equal(r.code, 1);
    assert.match(r.stderr, /digest/i);
    const leftovers = (await readdir(path.join(env().LAYERFS_SHARED, 'overlay'))).filter((n) => n.startsWith('.tmp-'));
    assert.deepEqual(leftovers, []);
    const layers = JSON.parse(await cliOk(['layer', 'ls', '--json'], env()));
    assert.ok(!layers.some((l: { diffDigest: string }) => l.diffDigest === bad.diffIds[0]));
    void sha;
  });
});
