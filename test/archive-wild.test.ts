/**
 * Layers as they are in the wild (issue #19): a corpus built here with GNU tar (old GNU sparse `S`
 * members with extension blocks, PAX sparse 0.0 / 0.1 / 1.0, xattrs), python3's tarfile (names that
 * are not UTF-8, base-256 numeric fields, a pre-1970 mtime) and zstd. Each tar is applied by
 * layerfs and extracted by GNU tar itself, and the two trees must agree: names as bytes, holes
 * (SEEK_DATA/SEEK_HOLE), content, modes, owners, times, xattrs. exportDiff's output round-trips.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import fs from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { applyLayer, exportDiff } from '../src/archive/index.js';
import { native } from '../src/common/native.js';
import { byteTree, dataMap } from './lib/bytetree.js';
import { sha256 } from './lib/tarbuild.js';
import { withTmp } from './lib/treesnap.js';

const run = promisify(execFile);
const B = (s: string) => Buffer.from(s, 'latin1');
const T0 = 1700000000;

/** A source tree with non-UTF-8 names, sparse files (6 data segments: GNU extension blocks), xattrs, a hardlink. */
function makeTree(root: string): void {
  const p = (rel: string) => Buffer.concat([B(root + '/'), B(rel)]);
  fs.mkdirSync(root);
  fs.mkdirSync(p('dir-\xc3('));
  fs.writeFileSync(p('dir-\xc3(/inner-\x80.txt'), 'inner\n');
  fs.writeFileSync(p('bad-\xff\xfe-utf8.txt'), 'not utf-8\n');
  fs.writeFileSync(p('caf\xc3\xa9.txt'), 'valid utf-8\n');
  fs.symlinkSync(p('bad-\xff\xfe-utf8.txt').subarray(root.length + 1), p('link-\xff'));
  fs.linkSync(p('caf\xc3\xa9.txt'), p('hard-\xfe'));
  // sparse: 6 data segments in 16 MiB, ending in a hole
  const fd = fs.openSync(p('sparse.img'), 'w', 0o640);
  for (let i = 0; i < 6; i++) fs.writeSync(fd, Buffer.alloc(8192, 0x41 + i), 0, 8192, i * 2 * 1024 * 1024 + (i % 2) * 4096);
  fs.ftruncateSync(fd, 16 * 1024 * 1024);
  fs.closeSync(fd);
  // all hole
  const fd2 = fs.openSync(p('holes-only'), 'w', 0o600);
  fs.ftruncateSync(fd2, 1024 * 1024);
  fs.closeSync(fd2);
  native.lsetxattr(p('caf\xc3\xa9.txt') as unknown as string, 'user.note', Buffer.from([0x00, 0xff, 0x80, 0x41]), 0);
  native.lsetxattr(p('dir-\xc3(') as unknown as string, 'user.dir', Buffer.from('d'), 0);
  fs.lchownSync(p('bad-\xff\xfe-utf8.txt'), 1234, 5678);
  for (const r of ['dir-\xc3(/inner-\x80.txt', 'bad-\xff\xfe-utf8.txt', 'caf\xc3\xa9.txt', 'sparse.img', 'holes-only', 'link-\xff', 'dir-\xc3(']) {
    fs.lutimesSync(p(r), T0 + 5, T0 + r.length);
  }
}

async function gnuExtract(tarFile: string, dir: string): Promise<void> {
  await mkdir(dir);
  await run('tar', ['-x', '-f', tarFile, '-C', dir, '--xattrs', '--xattrs-include=*', '--same-owner', '--same-permissions', '--numeric-owner']);
}

async function layerfsApply(file: string, dir: string) {
  await mkdir(dir);
  return applyLayer(createReadStream(file, { highWaterMark: 64 << 10 }), dir);
}

function assertSameTree(a: string, b: string, what: string): void {
  const ta = byteTree(a, { mtimeDirs: true });
  const tb = byteTree(b, { mtimeDirs: true });
  assert.deepEqual(ta, tb, `${what}: layerfs's tree differs from GNU tar's extraction`);
}

const SPARSE_FORMATS: [string, string[]][] = [
  ['gnu-S', ['--format=gnu', '--sparse']],
  ['pax-sparse-0.0', ['--format=posix', '--sparse', '--sparse-version=0.0', '--xattrs']],
  ['pax-sparse-0.1', ['--format=posix', '--sparse', '--sparse-version=0.1', '--xattrs']],
  ['pax-sparse-1.0', ['--format=posix', '--sparse', '--sparse-version=1.0', '--xattrs']],
];

for (const [fmt, flags] of SPARSE_FORMATS) {
  test(`GNU tar ${fmt}: same tree as GNU tar's own extraction (holes, byte names, xattrs, times)`, async () => {
    await withTmp(async (tmp) => {
      const srcDir = path.join(tmp, 'src');
      makeTree(srcDir);
      const tarFile = path.join(tmp, 'l.tar');
      await run('tar', ['-c', '-f', tarFile, '-C', srcDir, '--numeric-owner', ...flags, '.']);
      const raw = await readFile(tarFile);
      if (fmt === 'gnu-S') assert.ok(raw.includes(Buffer.from('S')), 'the tar holds type S members');
      const res = await layerfsApply(tarFile, path.join(tmp, 'a'));
      await gnuExtract(tarFile, path.join(tmp, 'b'));
      assertSameTree(path.join(tmp, 'a'), path.join(tmp, 'b'), fmt);
      // the holes are really there
      const fd = fs.openSync(path.join(tmp, 'a', 'sparse.img'), 'r');
      try {
        const map = dataMap(fd, 16 << 20);
        assert.equal(map.split(',').length, 6, `6 data segments, got ${map}`);
        assert.ok(fs.fstatSync(fd).blocks * 512 < 1 << 20, 'the sparse file uses far less than its size');
      } finally {
        fs.closeSync(fd);
      }
      assert.equal(res.size, fs.statSync(path.join(tmp, 'a', 'sparse.img')).size + (1 << 20) + 6 + 10 + 12 /* hard-\xfe is a link: 0 */, 'size counts real sizes');
      assert.equal(res.diffDigest, sha256(raw));
    });
  });
}

test('zstd and gzip layers of the same tar: same tree as GNU tar, digests of both sides', async () => {
  await withTmp(async (tmp) => {
    const srcDir = path.join(tmp, 'src');
    makeTree(srcDir);
    const tarFile = path.join(tmp, 'l.tar');
    await run('tar', ['-c', '-f', tarFile, '-C', srcDir, '--format=posix', '--sparse', '--xattrs', '.']);
    await run('zstd', ['-q', '-19', tarFile, '-o', tarFile + '.zst']);
    const tar = await readFile(tarFile);
    const zst = await readFile(tarFile + '.zst');
    await writeFile(tarFile + '.gz', gzipSync(tar));
    await gnuExtract(tarFile, path.join(tmp, 'gnu'));
    const rz = await layerfsApply(tarFile + '.zst', path.join(tmp, 'z'));
    assert.deepEqual([rz.compression, rz.diffDigest, rz.compressedDigest, rz.compressedSize], ['zstd', sha256(tar), sha256(zst), zst.length]);
    assertSameTree(path.join(tmp, 'z'), path.join(tmp, 'gnu'), 'zstd');
    const rg = await layerfsApply(tarFile + '.gz', path.join(tmp, 'g'));
    assert.equal(rg.compression, 'gzip');
    assertSameTree(path.join(tmp, 'g'), path.join(tmp, 'gnu'), 'gzip');
    // a digest mismatch on a zstd layer is an EDIGEST naming the layer
    await mkdir(path.join(tmp, 'bad'));
    await assert.rejects(
      applyLayer(Readable.from([zst]), path.join(tmp, 'bad'), { expectCompressedDigest: sha256('other'), label: 'layer sha256:feed' }),
      /layer sha256:feed: compressed digest mismatch/,
    );
    // a truncated zstd layer: a clear error naming the layer, zstd killed, nothing left running
    await mkdir(path.join(tmp, 'trunc'));
    await assert.rejects(applyLayer(Readable.from([zst.subarray(0, zst.length - 100)]), path.join(tmp, 'trunc'), { label: 'layer sha256:cut' }), /layer sha256:cut.*(zstd|truncated)/);
  });
});

const PY = String.raw`
import sys, tarfile, io
out, fmt = sys.argv[1], sys.argv[2]
f = {'gnu': tarfile.GNU_FORMAT, 'pax': tarfile.PAX_FORMAT}[fmt]
t = tarfile.open(out, 'w', format=f, encoding='utf-8', errors='surrogateescape')
def add(name, data=None, **kw):
    ti = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)
add('dir-\udcc3(/', type=tarfile.DIRTYPE, mode=0o755, mtime=1600000000)
add('dir-\udcc3(/bad-\udcff\udcfe-utf8.txt', b'binary name\n', mode=0o644, mtime=1600000001)
add('big-ids', b'ids\n', mode=0o600, uid=2**22 + 7, gid=2**23 + 9, mtime=1600000002)
add('pre-1970', b'old\n', mode=0o644, mtime=-86400 * 400)
add('link-\udc80', type=tarfile.SYMTYPE, linkname='target-\udcff', mtime=1600000003)
# the dirs of the long name come as entries of their own: a dir an extractor makes unasked gets the clock's time,
# which two extractions a second apart do not share
add('long/', type=tarfile.DIRTYPE, mode=0o755, mtime=1600000005)
add('long/' + 'n\udce9' * 80 + '/', type=tarfile.DIRTYPE, mode=0o755, mtime=1600000006)
add('long/' + 'n\udce9' * 80 + '/file', b'long binary name\n', mtime=1600000004)
t.close()
`;

for (const fmt of ['gnu', 'pax']) {
  test(`python3 tarfile (${fmt}): binary names, base-256 ids, pre-1970 mtime: same tree as GNU tar`, async () => {
    await withTmp(async (tmp) => {
      const tarFile = path.join(tmp, 'py.tar');
      await run('python3', ['-c', PY, tarFile, fmt]);
      const raw = await readFile(tarFile);
      if (fmt === 'gnu') assert.ok(raw.includes(Buffer.from([0x80, 0, 0, 0, 0, 0x40, 0, 7])), 'a base-256 uid field is in the tar');
      await layerfsApply(tarFile, path.join(tmp, 'a'));
      await gnuExtract(tarFile, path.join(tmp, 'b'));
      assertSameTree(path.join(tmp, 'a'), path.join(tmp, 'b'), fmt);
      assert.ok(fs.existsSync(Buffer.from(path.join(tmp, 'a') + '/dir-\xc3(/bad-\xff\xfe-utf8.txt', 'latin1')), 'the name is kept byte for byte');
      assert.equal(fs.statSync(path.join(tmp, 'a', 'big-ids')).uid, 2 ** 22 + 7);
      assert.equal(fs.statSync(path.join(tmp, 'a', 'pre-1970')).mtimeMs, -86400 * 400 * 1000);
    });
  });
}

test('round trip: apply, exportDiff, GNU tar extracts the same names (bytes) and holes; apply again: same tree', async () => {
  await withTmp(async (tmp) => {
    const srcDir = path.join(tmp, 'src');
    makeTree(srcDir);
    const tarFile = path.join(tmp, 'l.tar');
    await run('tar', ['-c', '-f', tarFile, '-C', srcDir, '--format=gnu', '--sparse', '.']);
    const a = path.join(tmp, 'a');
    await layerfsApply(tarFile, a);
    const chunks: Buffer[] = [];
    for await (const c of exportDiff(a)) chunks.push(c as Buffer);
    const out = path.join(tmp, 'export.tar');
    await writeFile(out, Buffer.concat(chunks));
    await gnuExtract(out, path.join(tmp, 'gnu'));
    assertSameTree(a, path.join(tmp, 'gnu'), 'exportDiff -> GNU tar');
    await layerfsApply(out, path.join(tmp, 'again'));
    assertSameTree(a, path.join(tmp, 'again'), 'exportDiff -> layerfs');
    const names = fs.readdirSync(Buffer.from(path.join(tmp, 'again')), { encoding: 'buffer' }).map((n) => n.toString('hex')).sort();
    assert.ok(names.includes(Buffer.from('bad-\xff\xfe-utf8.txt', 'latin1').toString('hex')));
    // the exported sparse file is PAX 1.0 sparse: its body is far smaller than the file
    assert.ok(chunks.reduce((n, c) => n + c.length, 0) < 4 << 20, 'the export stores the holes as holes');
  });
});
