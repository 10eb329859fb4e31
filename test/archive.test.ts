import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile, symlink, link, lstat, utimes, lutimes, chmod, chown } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { applyLayer, exportDiff } from '../src/archive/index.js';
import { LayerfsError } from '../src/common/errors.js';
import { mkWhiteout, native } from '../src/common/native.js';
import { buildTar, FIXED_MTIME, sha256, type TarEntry } from './lib/tarbuild.js';
import { paxHeader, rawEntry, rawTar } from './lib/rawtar.js';
import { comparable, snapshot, withTmp, xattrsOf } from './lib/treesnap.js';

const run = promisify(execFile);
const T = Math.floor(FIXED_MTIME.getTime() / 1000);
const hex = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
const src = (b: Buffer) => Readable.from([b]);
/** Feed in small uneven chunks so parsing across chunk boundaries is exercised. */
function chunked(b: Buffer, size = 777): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) parts.push(b.subarray(i, i + size));
  return Readable.from(parts);
}

async function layerDir(tmp: string, name = 'layer'): Promise<string> {
  const d = path.join(tmp, name);
  await mkdir(d);
  return d;
}

// security.capability v2: effective, permitted = CAP_SETUID(7) | CAP_NET_RAW(13): a value with a byte >= 0x80.
const CAP = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

const EVERYTHING: TarEntry[] = [
  { name: 'etc/', mode: 0o755, mtime: new Date('2020-05-05T00:00:00Z') },
  { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\n', mode: 0o644 },
  { name: 'etc/shadow', content: 'secret', mode: 0o640, uid: 0, gid: 42 },
  { name: 'bin/', mode: 0o755 },
  { name: 'bin/su', content: Buffer.alloc(3000, 7), mode: 0o4755, uid: 0, gid: 0 },
  { name: 'bin/wall', content: 'w', mode: 0o2755, uid: 0, gid: 5 },
  { name: 'bin/own', content: 'o', mode: 0o6711, uid: 1000, gid: 1001 },
  { name: 'bin/sh', type: 'symlink', linkname: 'busybox', mtime: new Date('2019-01-01T00:00:00Z') },
  { name: 'bin/busybox', content: 'bb', mode: 0o755, pax: { 'SCHILY.xattr.user.comment': 'hello', 'SCHILY.xattr.security.test': 'v' } },
  { name: 'bin/bb-hard', type: 'link', linkname: 'bin/busybox' },
  { name: 'tmp/', mode: 0o1777 },
  { name: 'dev/', mode: 0o755 },
  { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
  { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
  { name: 'dev/fifo', type: 'fifo', mode: 0o600, uid: 7, gid: 8 },
  { name: 'home/user/', mode: 0o700, uid: 1000, gid: 1000, pax: { 'SCHILY.xattr.user.dir': 'd' } },
  { name: 'home/user/.profile', content: 'export X=1\n', uid: 1000, gid: 1000, mode: 0o600 },
  { name: 'var/.wh.cache', content: '' },
  { name: 'var/lib/.wh..wh..opq', content: '' }, // marker before the dir's own entry
  { name: 'var/lib/', mode: 0o751 },
  { name: 'opt/', mode: 0o755 },
  { name: 'opt/keep', content: 'k' },
  { name: 'opt/.wh..wh..opq', content: '' }, // marker after the dir and its files
  { name: 'empty', content: '' },
];

async function checkEverything(dir: string): Promise<void> {
  const s = await snapshot(dir);
  const get = (p: string) => {
    const v = s.get(p);
    assert.ok(v, `missing ${p}`);
    return v;
  };
  assert.deepEqual({ ...get('etc/passwd'), ino: 0, nlink: 0 }, {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: 26, sha: hex('root:x:0:0::/root:/bin/sh\n'), xattrs: {}, mtime: T, ino: 0, nlink: 0,
  });
  assert.equal(get('etc').mtime, Math.floor(Date.parse('2020-05-05T00:00:00Z') / 1000), 'dir mtime set after its contents');
  assert.equal(get('etc/shadow').gid, 42);
  assert.equal(get('etc/shadow').mode, 0o640);
  assert.equal(get('bin/su').mode, 0o4755);
  assert.equal(get('bin/su').sha, hex(Buffer.alloc(3000, 7)));
  assert.equal(get('bin/wall').mode, 0o2755);
  assert.equal(get('bin/wall').gid, 5);
  assert.deepEqual([get('bin/own').mode, get('bin/own').uid, get('bin/own').gid], [0o6711, 1000, 1001], 'setuid survives chown');
  assert.equal(get('bin/sh').type, 'symlink');
  assert.equal(get('bin/sh').link, 'busybox');
  assert.equal(get('bin/sh').mtime, Math.floor(Date.parse('2019-01-01T00:00:00Z') / 1000), 'symlink mtime via lutimes');
  assert.deepEqual(get('bin/busybox').xattrs, { 'security.test': Buffer.from('v').toString('hex'), 'user.comment': Buffer.from('hello').toString('hex') });
  assert.equal(get('bin/bb-hard').ino, get('bin/busybox').ino, 'hardlink shares the inode');
  assert.equal(get('bin/busybox').nlink, 2);
  assert.equal(get('tmp').mode, 0o1777);
  assert.equal(get('dev/null').type, 'char');
  assert.equal(get('dev/null').rdev, (1 << 8) | 3);
  assert.equal(get('dev/null').mode, 0o666);
  assert.equal(get('dev/sda').type, 'block');
  assert.equal(get('dev/sda').rdev, 8 << 8);
  assert.equal(get('dev/sda').gid, 6);
  assert.deepEqual([get('dev/fifo').type, get('dev/fifo').mode, get('dev/fifo').uid, get('dev/fifo').gid], ['fifo', 0o600, 7, 8]);
  assert.deepEqual([get('home/user').mode, get('home/user').uid, get('home').mode], [0o700, 1000, 0o755]);
  assert.deepEqual(get('home/user').xattrs, { 'user.dir': Buffer.from('d').toString('hex') });
  assert.equal(get('var/cache').type, 'char', 'whiteout -> char 0/0');
  assert.equal(get('var/cache').rdev, 0);
  assert.equal(s.has('var/.wh.cache'), false);
  assert.equal(get('var/lib').mode, 0o751);
  assert.equal(get('var/lib').xattrs['trusted.overlay.opaque'], Buffer.from('y').toString('hex'), 'opaque (marker before dir)');
  assert.equal(get('opt').xattrs['trusted.overlay.opaque'], Buffer.from('y').toString('hex'), 'opaque (marker after dir)');
  assert.equal(get('opt/keep').sha, hex('k'));
  assert.equal(s.has('opt/.wh..wh..opq'), false);
  assert.equal(get('empty').size, 0);
  assert.equal(get('empty').sha, hex(''));
}

test('applies every entry type with modes, owners, times, xattrs, whiteouts, opaque dirs', async () => {
  await withTmp(async (tmp) => {
    const tar = await buildTar(EVERYTHING);
    const dir = await layerDir(tmp);
    const r = await applyLayer(chunked(tar), dir);
    await checkEverything(dir);
    const fileBytes = EVERYTHING.filter((e) => e.content !== undefined && !e.name.includes('.wh.')).reduce((n, e) => n + Buffer.from(e.content!).length, 0);
    assert.equal(r.size, fileBytes, 'size is the sum of regular file sizes');
  });
});

test('digests: plain and gzip, returned digests are sha256 of the bytes', async () => {
  await withTmp(async (tmp) => {
    const tar = await buildTar(EVERYTHING);
    const gz = gzipSync(tar);
    const d1 = await layerDir(tmp, 'plain');
    const r1 = await applyLayer(src(tar), d1);
    assert.deepEqual(r1, { diffDigest: sha256(tar), compressedDigest: sha256(tar), size: r1.size, compressedSize: tar.length, compression: 'none' });
    const d2 = await layerDir(tmp, 'gz');
    const r2 = await applyLayer(chunked(gz, 100), d2, { expectDiffDigest: sha256(tar), expectCompressedDigest: sha256(gz) });
    assert.deepEqual(r2, { diffDigest: sha256(tar), compressedDigest: sha256(gz), size: r1.size, compressedSize: gz.length, compression: 'gzip' });
    await checkEverything(d2);
    // var/ and home/ have no entry of their own (created as parents): their mtime is "now"
    const c1 = comparable(await snapshot(d1), ['var', 'home']);
    assert.deepEqual(c1, comparable(await snapshot(d2), ['var', 'home']));
  });
});

test('diff digest covers bytes after the end-of-archive marker', async () => {
  await withTmp(async (tmp) => {
    const tar = Buffer.concat([await buildTar([{ name: 'a', content: 'x' }]), Buffer.alloc(10240)]);
    const r = await applyLayer(src(gzipSync(tar)), await layerDir(tmp));
    assert.equal(r.diffDigest, sha256(tar));
  });
});

test('reading stops at the end-of-archive marker; what follows is only digested (as GNU tar, Go archive/tar)', async () => {
  await withTmp(async (tmp) => {
    const first = await buildTar([{ name: 'a', content: 'x' }]);
    const second = await buildTar([{ name: 'b', content: 'y' }]);
    for (const [label, tail] of [['a second tar', second], ['garbage', Buffer.from('not a header '.repeat(100))]] as const) {
      const tar = Buffer.concat([first, tail]);
      const dir = await layerDir(tmp, label.replace(' ', '-'));
      const r = await applyLayer(chunked(tar, 300), dir);
      assert.equal(r.diffDigest, sha256(tar), label);
      assert.deepEqual([...(await snapshot(dir)).keys()], ['a'], label);
    }
  });
});

test('PAX numeric records, atime, LIBARCHIVE xattrs and a lone end block are honoured', async () => {
  await withTmp(async (tmp) => {
    const tar = Buffer.concat([
      paxHeader([['uid', '3000000'], ['gid', '4000000'], ['mtime', '1600000000.5'], ['atime', '1500000000'], ['LIBARCHIVE.xattr.user.b64', Buffer.from([0xde, 0xad, 0xbe, 0xef]).toString('base64')]]),
      rawEntry({ name: 'p', flag: '0', uid: 1, gid: 2 }, 'p'),
      Buffer.alloc(512), // one zero block at the very end: tolerated as GNU tar does
    ]);
    const dir = await layerDir(tmp);
    await applyLayer(src(tar), dir);
    const st = await lstat(path.join(dir, 'p'));
    if (process.geteuid?.() === 0) assert.deepEqual([st.uid, st.gid], [3000000, 4000000]);
    assert.equal(st.mtimeMs, 1600000000500);
    assert.equal(st.atimeMs, 1500000000000);
    assert.equal(xattrsOf(path.join(dir, 'p'))['user.b64'], 'deadbeef');
  });
});

test('digest mismatch rejects with EDIGEST (diff and compressed)', async () => {
  await withTmp(async (tmp) => {
    const tar = await buildTar([{ name: 'a', content: 'x' }]);
    const gz = gzipSync(tar);
    const wrong = sha256('nope');
    await assert.rejects(applyLayer(src(gz), await layerDir(tmp, 'l1'), { expectDiffDigest: wrong }), (e: unknown) => {
      assert.ok(e instanceof LayerfsError);
      assert.equal(e.code, 'EDIGEST');
      assert.match(e.message, /diff digest mismatch/);
      return true;
    });
    await assert.rejects(applyLayer(src(gz), await layerDir(tmp, 'l2'), { expectCompressedDigest: wrong }), { code: 'EDIGEST' });
    // the diff digest is not the compressed one
    await assert.rejects(applyLayer(src(gz), await layerDir(tmp, 'l3'), { expectCompressedDigest: sha256(tar) }), { code: 'EDIGEST' });
    await assert.rejects(applyLayer(src(gz), await layerDir(tmp, 'l4'), { expectDiffDigest: 'md5:abc' }), { code: 'EDIGEST' });
  });
});

test('binary xattr values from PAX (security.capability) are applied byte for byte', async () => {
  await withTmp(async (tmp) => {
    const tar = rawTar(
      paxHeader([['SCHILY.xattr.security.capability', CAP], ['SCHILY.xattr.user.bin', Buffer.from([0, 0xff, 0x80, 0x0a, 0x3d])]]),
      rawEntry({ name: 'ping', flag: '0', mode: 0o755, uid: 0, gid: 0 }, 'ELF'),
    );
    const dir = await layerDir(tmp);
    await applyLayer(src(tar), dir);
    const x = xattrsOf(path.join(dir, 'ping'));
    assert.equal(x['security.capability'], CAP.toString('hex'));
    assert.equal(x['user.bin'], '00ff800a3d');
  });
});

test('later entries replace earlier ones as tar does; dir over dir merges', async () => {
  await withTmp(async (tmp) => {
    const tar = await buildTar([
      { name: 'd/', mode: 0o700 },
      { name: 'd/f', content: 'one' },
      { name: 'd/', mode: 0o755, uid: 3 }, // merge: keeps d/f, new metadata
      { name: 'x/' },
      { name: 'x/inner', content: 'gone' },
      { name: 'x', content: 'file now' }, // file over dir: replaced
      { name: 'l', type: 'symlink', linkname: 'd/f' },
      { name: 'l', content: 'not through the link' }, // file over symlink: replaces the link
      { name: 'f', content: 'first' },
      { name: 'f', content: 'second' },
      { name: 'f2', content: 'v' },
      { name: 'f2', type: 'directory' },
      { name: 'f2/y', content: 'y' },
    ]);
    const dir = await layerDir(tmp);
    await applyLayer(src(tar), dir);
    const s = await snapshot(dir);
    assert.equal(s.get('d')!.mode, 0o755);
    assert.equal(s.get('d')!.uid, 3);
    assert.equal(s.get('d/f')!.sha, hex('one'));
    assert.equal(s.get('x')!.type, 'file');
    assert.equal(s.has('x/inner'), false);
    assert.equal(s.get('l')!.type, 'file');
    assert.equal(await readFile(path.join(dir, 'd/f'), 'utf8'), 'one');
    assert.equal(await readFile(path.join(dir, 'f'), 'utf8'), 'second');
    assert.equal(s.get('f2')!.type, 'dir');
    assert.equal(s.get('f2/y')!.sha, hex('y'));
  });
});

test('large and many files, missing parent dirs created, chunked input', async () => {
  await withTmp(async (tmp) => {
    const entries: TarEntry[] = [];
    const big = Buffer.alloc(5 * 1024 * 1024 + 123);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >> 9)) & 0xff;
    entries.push({ name: 'deep/er/big.bin', content: big, mode: 0o600, uid: 9 });
    for (let i = 0; i < 500; i++) entries.push({ name: `many/f${i}`, content: `file ${i} `.repeat(i % 50), mode: 0o644 });
    const tar = await buildTar(entries, { gzip: true });
    const dir = await layerDir(tmp);
    const r = await applyLayer(chunked(tar, 4099), dir);
    const s = await snapshot(dir);
    assert.equal(s.get('deep/er/big.bin')!.sha, hex(big));
    assert.equal(s.get('deep/er/big.bin')!.uid, 9);
    assert.equal(s.get('deep')!.mode, 0o755);
    for (let i = 0; i < 500; i++) assert.equal(s.get(`many/f${i}`)!.sha, hex(`file ${i} `.repeat(i % 50)), `many/f${i}`);
    assert.equal(r.size, entries.reduce((n, e) => n + Buffer.from(e.content!).length, 0));
  });
});

test('a corrupt zstd layer is refused naming the layer and zstd (zstd layers themselves: archive-wild.test.ts)', async () => {
  await withTmp(async (tmp) => {
    const z = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100)]);
    await assert.rejects(applyLayer(src(z), await layerDir(tmp), { label: 'layer sha256:abc' }), (e: unknown) => {
      assert.ok(e instanceof LayerfsError);
      assert.equal(e.code, 'EBADTAR');
      assert.match(e.message, /^layer sha256:abc: corrupt zstd stream/);
      return true;
    });
  });
});

test('same result as GNU tar for a real tree with xattrs (tar made by GNU tar)', async () => {
  await withTmp(async (tmp) => {
    const tree = path.join(tmp, 'tree');
    await mkdir(path.join(tree, 'a/b'), { recursive: true });
    await writeFile(path.join(tree, 'a/b/file'), 'content');
    await writeFile(path.join(tree, 'a/cap'), 'bin');
    native.lsetxattr(path.join(tree, 'a/cap'), 'security.capability', CAP, 0);
    native.lsetxattr(path.join(tree, 'a/b/file'), 'user.k', Buffer.from([1, 2, 0xfe]), 0);
    await link(path.join(tree, 'a/b/file'), path.join(tree, 'a/hard'));
    await symlink('../nowhere', path.join(tree, 'a/sym'));
    await chown(path.join(tree, 'a/b'), 12, 34);
    await chmod(path.join(tree, 'a/b'), 0o2775);
    await lutimes(path.join(tree, 'a/sym'), 1e9, 1e9);
    await utimes(path.join(tree, 'a'), 1.5e9, 1.5e9);
    const tarPath = path.join(tmp, 't.tar');
    await run('tar', ['--xattrs', '--xattrs-include=*', '-C', tree, '-cf', tarPath, '.']);
    const gnu = await layerDir(tmp, 'gnu');
    await run('tar', ['--xattrs', '--xattrs-include=*', '--same-owner', '-p', '-C', gnu, '-xf', tarPath]);
    const ours = await layerDir(tmp, 'ours');
    const tarBuf = await readFile(tarPath);
    const r = await applyLayer(src(tarBuf), ours);
    assert.equal(r.diffDigest, sha256(tarBuf));
    assert.deepEqual(comparable(await snapshot(ours)), comparable(await snapshot(gnu)));
    assert.equal(xattrsOf(path.join(ours, 'a/cap'))['security.capability'], CAP.toString('hex'));
  });
});

test('exportDiff round trip: whiteouts, opaque dirs, hardlinks, devices, xattrs', async () => {
  await withTmp(async (tmp) => {
    const entries: TarEntry[] = [
      ...EVERYTHING,
      { name: 'long/' + 'n'.repeat(120) + '/' + 'é'.repeat(70), content: 'long name' },
      { name: 'biguid', content: 'u', uid: 3000000, gid: 4000000 },
      { name: 'sym-long', type: 'symlink', linkname: 'x'.repeat(150) },
    ];
    const d1 = await layerDir(tmp, 'one');
    await applyLayer(src(await buildTar(entries)), d1);
    const tarChunks: Buffer[] = [];
    for await (const c of exportDiff(d1)) tarChunks.push(c as Buffer);
    const exported = Buffer.concat(tarChunks);
    // GNU tar can read what we wrote
    const tarPath = path.join(tmp, 'export.tar');
    await writeFile(tarPath, exported);
    const { stdout } = await run('tar', ['-tf', tarPath], { maxBuffer: 1 << 24 });
    const names = stdout.split('\n').filter(Boolean);
    assert.ok(names.includes('var/.wh.cache'));
    assert.ok(names.includes('opt/.wh..wh..opq'));
    assert.ok(names.includes('var/lib/.wh..wh..opq'));
    assert.ok(!names.some((n) => n.startsWith('./') || n.startsWith('/')));
    const d2 = await layerDir(tmp, 'two');
    const r = await applyLayer(src(exported), d2);
    assert.equal(r.diffDigest, sha256(exported));
    assert.deepEqual(comparable(await snapshot(d2)), comparable(await snapshot(d1)));
    // deterministic: exporting again gives the same bytes
    const again: Buffer[] = [];
    for await (const c of exportDiff(d2)) again.push(c as Buffer);
    assert.equal(sha256(Buffer.concat(again)), sha256(exported));
  });
});

test('exportDiff reads kernel-format whiteouts made directly in an upper dir', async () => {
  await withTmp(async (tmp) => {
    const up = await layerDir(tmp, 'upper');
    await mkdir(path.join(up, 'd'));
    native.lsetxattr(path.join(up, 'd'), 'trusted.overlay.opaque', Buffer.from('y'), 0);
    native.lsetxattr(path.join(up, 'd'), 'trusted.overlay.origin', Buffer.from('zz'), 0);
    mkWhiteout(path.join(up, 'gone'));
    await writeFile(path.join(up, 'd', 'f'), 'f');
    const chunks: Buffer[] = [];
    for await (const c of exportDiff(up)) chunks.push(c as Buffer);
    const tarPath = path.join(tmp, 'e.tar');
    await writeFile(tarPath, Buffer.concat(chunks));
    const { stdout } = await run('tar', ['-tvf', tarPath]);
    assert.match(stdout, / d\/\n/);
    assert.match(stdout, / d\/\.wh\.\.wh\.\.opq\n/);
    assert.match(stdout, / \.wh\.gone\n/);
    assert.doesNotMatch(stdout, /origin/);
    // no trusted.overlay.* other than what whiteouts/opaque carry comes back
    const back = await layerDir(tmp, 'back');
    await applyLayer(src(Buffer.concat(chunks)), back);
    assert.deepEqual(Object.keys(xattrsOf(path.join(back, 'd'))), ['trusted.overlay.opaque']);
    assert.equal((await lstat(path.join(back, 'gone'))).isCharacterDevice(), true);
  });
});
