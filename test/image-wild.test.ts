/**
 * Images as they are in the wild (issue #19): zstd layers (made by skopeo --dest-compress-format
 * zstd, and by the zstd program), OCI layouts holding several images addressed as skopeo does
 * (DIR:REF, oci:DIR:REF, oci-archive:FILE:REF), image names checked by the distribution grammar,
 * import progress, errors as JSON, a corrupt layer named by its digest.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { normalizeName } from '../src/image/index.js';
import { cli, cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { buildTar, sha256 } from './lib/tarbuild.js';

const run = promisify(execFile);

describe('images in the wild', () => {
  let scratch: string;
  let n = 0;
  const newStore = () => {
    const d = path.join(scratch, `store${n++}`);
    return { LAYERFS_ROOT: path.join(d, 'root'), LAYERFS_SHARED: path.join(d, 'nfs'), LAYERFS_ROLE: 'writer' };
  };
  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-wild-'));
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test('an OCI layout with two images: refused without a ref (the error lists them), imported by DIR:REF, oci:DIR:REF, oci-archive:FILE:REF', async () => {
    const one = await makeImage([[{ name: 'one', content: '1' }]]);
    const two = await makeImage([[{ name: 'two', content: '2' }], [{ name: 'more', content: 'm' }]]);
    const dir = path.join(scratch, 'two-images');
    await writeOciLayout(dir, [
      { image: one, name: 'v1' },
      { image: two, name: 'v2' },
    ]);
    const env = newStore();
    const r = await cli(['image', 'import', dir], env);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /holds 2 images \(v1, v2\): name one, as .*:REF/);
    const j = await cli(['image', 'import', dir, '--json'], env);
    assert.equal(j.code, 1);
    const err = JSON.parse(j.stderr.trim());
    assert.equal(err.error.code, 'EBADIMAGE');
    assert.match(err.error.message, /v1, v2/);
    assert.equal((await cliOk(['image', 'import', `${dir}:v2`, '-q'], env)).trim(), two.configDigest.slice(7));
    assert.equal((await cliOk(['image', 'import', `oci:${dir}:v1`, '-q'], env)).trim(), one.configDigest.slice(7));
    const archive = path.join(scratch, 'two.tar');
    await run('tar', ['-C', dir, '-cf', archive, '.']);
    assert.equal((await cliOk(['image', 'import', `oci-archive:${archive}:v2`, '-q'], newStore())).trim(), two.configDigest.slice(7));
    const miss = await cli(['image', 'import', `${dir}:v3`], env);
    assert.equal(miss.code, 1);
    assert.match(miss.stderr, /no image named "v3" \(it has: v1, v2\)/);
  });

  test('zstd layers made by skopeo --dest-compress-format zstd: imported, digests checked, exported as zstd, re-imported', async () => {
    const img = await makeImage([[{ name: 'etc/' }, { name: 'etc/hello', content: 'hello zstd\n'.repeat(1000) }], [{ name: 'bin/' }, { name: 'bin/tool', content: Buffer.alloc(100000, 7), mode: 0o755 }]], { gzip: false });
    const src = path.join(scratch, 'plain');
    await writeOciLayout(src, [{ image: img, name: 'v1' }]);
    const dst = path.join(scratch, 'zstd');
    await run('skopeo', ['copy', '--quiet', '--dest-compress-format', 'zstd', '--dest-compress', `oci:${src}:v1`, `oci:${dst}:v1`]);
    const index = JSON.parse(await readFile(path.join(dst, 'index.json'), 'utf8'));
    const manifest = JSON.parse(await readFile(path.join(dst, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'));
    assert.deepEqual(manifest.layers.map((l: { mediaType: string }) => l.mediaType), ['application/vnd.oci.image.layer.v1.tar+zstd', 'application/vnd.oci.image.layer.v1.tar+zstd']);
    const env = newStore();
    const r = await cli(['image', 'import', `${dst}:v1`, '--name', 'wild/zstd:1'], env);
    assert.equal(r.code, 0, r.stderr);
    // progress: plain lines when stderr is not a TTY, one per layer state, with MB/s when done
    assert.match(r.stderr, /importing .*: 2 layers/);
    assert.match(r.stderr, /layer 2\/2 sha256:[0-9a-f]{64}: done \([^)]*MB\/s\)/);
    const id = r.stdout.trim();
    const rec = JSON.parse(await cliOk(['image', 'inspect', id], env));
    assert.equal(await readFile(path.join(env.LAYERFS_ROOT, 'overlay', rec.layers[0], 'diff/etc/hello'), 'utf8'), 'hello zstd\n'.repeat(1000));
    const layer = JSON.parse(await cliOk(['layer', 'inspect', rec.layers[1]], env));
    assert.equal(layer.compression, 'zstd');
    assert.equal(layer.compressedDigest, manifest.layers[1].digest);
    // export keeps the compression; the export imports again, and skopeo reads it
    const out = path.join(scratch, 'zstd-export.tar');
    await cliOk(['image', 'export', id, out], env);
    const ex = path.join(scratch, 'zstd-export');
    await run('skopeo', ['copy', '--quiet', `oci-archive:${out}`, `oci:${ex}:x`]);
    const exIndex = JSON.parse(await readFile(path.join(ex, 'index.json'), 'utf8'));
    const exMan = JSON.parse(await readFile(path.join(ex, 'blobs/sha256', exIndex.manifests[0].digest.slice(7)), 'utf8'));
    assert.deepEqual(exMan.layers.map((l: { mediaType: string }) => l.mediaType), manifest.layers.map((l: { mediaType: string }) => l.mediaType));
    const env2 = newStore();
    await cliOk(['image', 'import', out, '-q'], env2);
    // -q: nothing on stderr
    const q = await cli(['image', 'import', `${dst}:v1`, '-q'], newStore());
    assert.equal(q.stderr, '');
  });

  test('a zstd layer whose blob does not match its digest: EDIGEST naming the layer; layer create takes a .tar.zst', async () => {
    const tar = await buildTar([{ name: 'z', content: 'zzz' }]);
    const tarFile = path.join(scratch, 'l.tar');
    await writeFile(tarFile, tar);
    await run('zstd', ['-q', '-f', tarFile, '-o', tarFile + '.zst']);
    const env = newStore();
    const id = (await cliOk(['layer', 'create', '--tar', tarFile + '.zst'], env)).trim();
    assert.equal(id, sha256(tar).slice(7), 'the layer id is the diff id (of the tar inside)');
    // an OCI image whose zstd blob was swapped for another: the digest check names the layer
    const img = await makeImage([[{ name: 'a', content: 'a' }]], { gzip: false });
    const dir = path.join(scratch, 'swapped');
    await writeOciLayout(dir, [{ image: img }]);
    const blob = path.join(dir, 'blobs/sha256', sha256(img.blobs[0]!).slice(7));
    await writeFile(blob, await readFile(tarFile + '.zst'));
    const r = await cli(['image', 'import', dir, '-q'], newStore());
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`layer ${sha256(img.blobs[0]!)}: compressed digest mismatch`));
  });

  test('a corrupt gzip layer and a garbage tar header: the error names the layer digest, and the entry escaped', async () => {
    const img = await makeImage([[{ name: 'a', content: Buffer.alloc(50000, 1) }]]);
    const blob = img.blobs[0]!;
    const dir = path.join(scratch, 'corrupt');
    await writeOciLayout(dir, [{ image: img }]);
    const bytes = Buffer.from(blob);
    for (let i = 30; i < 60; i++) bytes[i] ^= 0x5a;
    await writeFile(path.join(dir, 'blobs/sha256', sha256(blob).slice(7)), bytes);
    const r = await cli(['image', 'import', dir, '-q'], newStore());
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`layer ${sha256(blob)}: corrupt gzip stream`));
    // garbage header: a name with control bytes is printed escaped, not raw
    const hdr = Buffer.alloc(512);
    hdr.write('evil\x1b[2J\x07name', 0, 'latin1');
    hdr.write('bad-checksum', 148, 'latin1');
    const bad = Buffer.concat([hdr, Buffer.alloc(1024)]);
    const g = await makeImage([[{ name: 'x', content: 'x' }]], { gzip: false });
    const dir2 = path.join(scratch, 'garbage');
    await writeOciLayout(dir2, [{ image: g }]);
    await writeFile(path.join(dir2, 'blobs/sha256', sha256(g.blobs[0]!).slice(7)), bad);
    const r2 = await cli(['image', 'import', dir2, '-q', '--json'], newStore());
    assert.equal(r2.code, 1);
    assert.ok(!r2.stderr.includes('\x1b'), 'no raw control bytes in the message');
    const e = JSON.parse(r2.stderr.trim());
    assert.equal(e.error.code, 'EBADTAR');
    assert.ok(e.error.message.includes('evil\\\\x1b[2J\\\\x07name'), e.error.message);
  });

  test('image names: the distribution reference grammar', async () => {
    const good: [string, string][] = [
      ['busybox', 'busybox:latest'],
      ['library/busybox:1.36', 'library/busybox:1.36'],
      ['docker.io/library/alpine:3.19', 'docker.io/library/alpine:3.19'],
      ['localhost:5000/a/b-c__d.e:v_1.2-rc', 'localhost:5000/a/b-c__d.e:v_1.2-rc'],
      ['Registry.Example.com/x/y', 'Registry.Example.com/x/y:latest'],
      [`x@sha256:${'a'.repeat(64)}`, `x@sha256:${'a'.repeat(64)}`],
      [`x:t@sha256:${'b'.repeat(64)}`, `x:t@sha256:${'b'.repeat(64)}`],
      ['x:' + 'a'.repeat(128), 'x:' + 'a'.repeat(128)],
    ];
    for (const [n, want] of good) assert.equal(normalizeName(n), want, n);
    const bad: [string, RegExp][] = [
      ['../../x', /path component "\.\."/],
      ['UPPER/Case:Tag', /must be lowercase \("Case"\)/], // UPPER is read as a registry host, as distribution does
      ['x:y:z', /bad repository path component "x:y"/],
      ['a'.repeat(300), /longer than 255/],
      ['x:' + 'a'.repeat(129), /tag longer than 128/],
      ['x:-bad', /bad tag/],
      ['x@sha256:abc', /bad digest|64 lowercase hex/],
      ['a//b', /empty path component/],
      ['/abs', /empty path component/],
      ['has space', /spaces/],
      ['', /empty/],
    ];
    for (const [n, why] of bad) assert.throws(() => normalizeName(n), (e: Error) => why.test(e.message) && e.message.includes(JSON.stringify(n)), n);
    // through the CLI, before any work
    const img = await makeImage([[{ name: 'a', content: 'a' }]]);
    const dir = path.join(scratch, 'named');
    await writeOciLayout(dir, [{ image: img }]);
    const env = newStore();
    const r = await cli(['image', 'import', dir, '--name', 'UPPER/Case:Tag'], env);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /image name "UPPER\/Case:Tag": not a valid image name: repository name must be lowercase/);
    assert.equal(JSON.parse(await cliOk(['image', 'ls', '--json'], env)).length, 0, 'nothing imported');
  });
});
