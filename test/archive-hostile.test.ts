/**
 * Hostile layer tars: each must be rejected with an error naming the offending entry, and nothing
 * may be written outside the layer dir. Layout per case: <scratch>/layer (target) and
 * <scratch>/outside (a sibling holding a secret file), compared before and after.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { applyLayer } from '../src/archive/index.js';
import { LayerfsError } from '../src/common/errors.js';
import { buildTar, sha256, type TarEntry } from './lib/tarbuild.js';
import { END, fixChecksum, gnuLongName, paxHeader, rawEntry, rawHeader, rawTar } from './lib/rawtar.js';
import { comparable, snapshot, withTmp } from './lib/treesnap.js';

interface Case {
  name: string;
  /** Build the tar; gets the absolute path of the "outside" dir for absolute-symlink attacks. */
  tar: (outside: string) => Promise<Buffer> | Buffer;
  /** Substring the error message must contain (the entry name, normally). */
  names: string;
  /** Extra message check. */
  why?: RegExp;
  code?: string;
  opts?: Parameters<typeof applyLayer>[2];
}

const t = (entries: TarEntry[]) => buildTar(entries);

const cases: Case[] = [
  {
    name: 'traversal with ..',
    tar: () => t([{ name: '../outside/pwned', content: 'x' }]),
    names: '../outside/pwned',
    why: /"\.\."/,
  },
  {
    name: 'traversal with .. in the middle',
    tar: () => t([{ name: 'a/' }, { name: 'a/../../outside/pwned', content: 'x' }]),
    names: 'a/../../outside/pwned',
  },
  {
    name: 'symlink to a sibling dir, then a file written through it',
    tar: () => t([{ name: 'esc', type: 'symlink', linkname: '../outside' }, { name: 'esc/pwned', content: 'x' }]),
    names: 'esc/pwned',
    why: /symlink/,
  },
  {
    name: 'symlink chain, then a file through the first link',
    tar: () =>
      t([
        { name: 'a', type: 'symlink', linkname: 'b' },
        { name: 'b', type: 'symlink', linkname: 'c' },
        { name: 'c', type: 'symlink', linkname: '../outside' },
        { name: 'a/pwned', content: 'x' },
      ]),
    names: 'a/pwned',
    why: /symlink/,
  },
  {
    name: 'absolute symlink, then a file through it',
    tar: (outside) => t([{ name: 'abs', type: 'symlink', linkname: outside }, { name: 'abs/pwned', content: 'x' }]),
    names: 'abs/pwned',
  },
  {
    name: 'symlink replaces a dir, then a directory created through it',
    tar: () =>
      t([{ name: 'd/' }, { name: 'd', type: 'symlink', linkname: '../outside' }, { name: 'd/sub/' }, { name: 'd/sub/pwned', content: 'x' }]),
    names: 'd/sub',
  },
  {
    name: 'opaque marker written through a symlinked dir',
    tar: () => t([{ name: 'esc', type: 'symlink', linkname: '../outside' }, { name: 'esc/.wh..wh..opq', content: '' }]),
    names: 'esc/.wh..wh..opq',
  },
  {
    name: 'whiteout created through a symlinked dir',
    tar: () => t([{ name: 'esc', type: 'symlink', linkname: '../outside' }, { name: 'esc/.wh.secret', content: '' }]),
    names: 'esc/.wh.secret',
  },
  {
    name: 'hardlink out of the layer with ..',
    tar: () => t([{ name: 'h', type: 'link', linkname: '../outside/secret' }]),
    names: '"h"',
    why: /hardlink target/,
  },
  {
    name: 'hardlink to an absolute host path (stripped, and not in the layer)',
    tar: () => t([{ name: 'h', type: 'link', linkname: '/etc/passwd' }]),
    names: '"h"',
    why: /not an earlier entry/,
  },
  {
    name: 'hardlink to a missing entry',
    tar: () => t([{ name: 'x', content: 'x' }, { name: 'h', type: 'link', linkname: 'nothere' }]),
    names: '"h"',
  },
  {
    name: 'hardlink through a symlinked parent',
    tar: () => t([{ name: 'esc', type: 'symlink', linkname: '../outside' }, { name: 'h', type: 'link', linkname: 'esc/secret' }]),
    names: '"h"',
  },
  {
    name: 'PAX path with ..',
    tar: () => rawTar(paxHeader([['path', '../outside/pwned']]), rawEntry({ name: 'innocent', flag: '0' }, 'x')),
    names: '../outside/pwned',
  },
  {
    name: 'PAX linkpath with .. on a hardlink',
    tar: () => rawTar(rawEntry({ name: 'f', flag: '0' }, 'x'), paxHeader([['linkpath', '../../outside/secret']]), rawEntry({ name: 'h', flag: '1', linkname: 'f' })),
    names: '"h"',
  },
  {
    name: 'GNU long name with ..',
    tar: () => rawTar(gnuLongName('a/' + 'b'.repeat(120) + '/../../../outside/pwned'), rawEntry({ name: 'short', flag: '0', format: 'gnu' }, 'x')),
    names: '../outside/pwned',
  },
  {
    name: 'name containing a NUL (PAX path)',
    tar: () => rawTar(paxHeader([['path', 'a\u0000/../../outside/pwned']]), rawEntry({ name: 'x', flag: '0' }, 'x')),
    names: 'a\\\\x00', // printable: the NUL escaped
    why: /NUL/,
  },
  {
    name: 'a file where a directory is needed',
    tar: () => t([{ name: 'f', content: 'x' }, { name: 'f/child', content: 'y' }]),
    names: 'f/child',
    why: /not a directory/,
  },
  {
    name: 'forged trusted.overlay.opaque xattr',
    tar: () => t([{ name: 'd/', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } }]),
    names: '"d/"',
    why: /trusted\.overlay\.opaque/,
  },
  {
    name: 'forged trusted.overlay.redirect xattr on a file',
    tar: () => t([{ name: 'f', content: 'x', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } }]),
    names: '"f"',
  },
  {
    name: 'whiteout of ..',
    tar: () => t([{ name: 'd/' }, { name: 'd/.wh...', content: '' }]),
    names: 'd/.wh...',
    why: /whiteout/,
  },
  {
    name: 'whiteout with a climbing path',
    tar: () => t([{ name: '../.wh.outside', content: '' }]),
    names: '../.wh.outside',
  },
  {
    name: 'truncated tar (inside a body)',
    tar: async () => (await t([{ name: 'big', content: Buffer.alloc(5000, 1) }])).subarray(0, 512 + 2000),
    names: 'big',
    why: /truncated/,
  },
  {
    name: 'truncated tar (no end-of-archive marker)',
    tar: async () => {
      const b = await t([{ name: 'a', content: 'x' }]);
      return b.subarray(0, 1024);
    },
    names: '"a"',
    why: /truncated/,
  },
  {
    name: 'corrupt header checksum',
    tar: () => Buffer.concat([rawEntry({ name: 'ok', flag: '0' }, 'x'), rawHeader({ name: 'bad', flag: '0', badChecksum: true }), END]),
    names: 'bad',
    why: /checksum/,
  },
  {
    name: 'not a tar at all',
    tar: () => Buffer.from('hello world, this is not a tar file'.repeat(40)),
    names: 'tar entry',
  },
  {
    name: 'corrupt gzip',
    tar: async () => {
      const gz = gzipSync(await t([{ name: 'a', content: Buffer.alloc(20000, 3) }, { name: 'b', content: 'b' }]));
      for (let i = 20; i < 40; i++) gz[i] ^= 0x5a;
      return gz;
    },
    names: 'layer',
    why: /gzip/,
  },
  {
    name: 'truncated gzip',
    tar: async () => {
      const gz = gzipSync(await t([{ name: 'a', content: 'x'.repeat(10000) }]));
      return gz.subarray(0, gz.length - 12);
    },
    names: 'layer',
    why: /gzip|truncated/,
  },
  {
    name: 'diff digest mismatch',
    tar: () => t([{ name: 'a', content: 'x' }]),
    opts: { expectDiffDigest: sha256('something else') },
    names: 'layer',
    why: /diff digest mismatch/,
    code: 'EDIGEST',
  },
  {
    name: 'empty stream',
    tar: () => Buffer.alloc(0),
    names: '(start of archive)',
    why: /truncated/,
  },
  {
    name: 'PAX header and then the end of the stream',
    tar: () => Buffer.concat([rawEntry({ name: 'a', flag: '0' }, 'x'), paxHeader([['path', 'late']])]),
    names: 'PaxHeaders/x',
    why: /truncated/,
  },
  {
    // tar-stream skips zero blocks after an extended header; GNU tar and Go's archive/tar stop there
    name: 'end-of-archive marker between a PAX header and its entry (hidden entry)',
    tar: () => Buffer.concat([paxHeader([['path', 'hidden']]), END, rawEntry({ name: 'x', flag: '0' }, 'x'), END]),
    names: 'hidden',
    why: /end-of-archive/,
  },
  {
    name: 'zero block followed by a non-zero block',
    tar: () => Buffer.concat([rawEntry({ name: 'a', flag: '0' }, 'x'), Buffer.alloc(512), rawEntry({ name: 'b', flag: '0' }, 'y'), END]),
    names: '"a"',
    why: /garbage after a zero block/,
  },
  {
    name: 'unknown entry type',
    tar: () => rawTar(rawEntry({ name: 'odd', flag: 'X' })),
    names: 'odd',
    why: /unsupported tar entry type/,
  },
  {
    // an old GNU sparse member whose map claims data beyond its real size (sparse members are applied: archive-wild.test.ts)
    name: 'GNU sparse entry with a map beyond its size',
    tar: () => {
      const h = rawHeader({ name: 'sparse', flag: 'S', format: 'gnu', size: 512 });
      h.write('00000001000\0', 386, 12, 'latin1'); // offset 512
      h.write('00000001000\0', 398, 12, 'latin1'); // 512 bytes
      h.write('00000000100\0', 483, 12, 'latin1'); // real size 64
      fixChecksum(h);
      return rawTar(h, Buffer.alloc(512, 7));
    },
    names: 'sparse',
    why: /sparse map segment .* beyond the file size/,
  },
  {
    name: 'negative base-256 size',
    tar: () => {
      const h = rawHeader({ name: 'neg', flag: '0' });
      h.fill(0xff, 124, 136); // base-256 -1
      fixChecksum(h);
      return rawTar(h);
    },
    names: 'neg',
    why: /negative size/,
  },
  {
    name: 'base-256 size beyond 2^53',
    tar: () => {
      const h = rawHeader({ name: 'huge', flag: '0' });
      h.fill(0, 124, 136);
      h[124] = 0x80;
      h.fill(0xff, 128, 136);
      fixChecksum(h);
      return rawTar(h);
    },
    names: 'huge',
    why: /size field out of range/,
  },
  {
    name: 'garbage header: binary name shown escaped',
    tar: () => rawTar(rawHeader({ name: 'ok\u0001\u001b[31m', flag: '0', badChecksum: true })),
    names: 'ok\\\\x01\\\\x1b[31m',
    why: /checksum/,
  },
  {
    name: 'octal field with a non-octal digit',
    tar: () => {
      const h = rawHeader({ name: 'badmode', flag: '0' });
      h.write('0000968\0', 100, 8, 'latin1');
      fixChecksum(h);
      return rawTar(h);
    },
    names: 'badmode',
    why: /bad mode field/,
  },
  {
    name: 'GNU sparse entry (PAX 1.0 records)',
    tar: () => rawTar(paxHeader([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0'], ['GNU.sparse.name', 'sp']]), rawEntry({ name: 'GNUSparseFile.0/sp', flag: '0' }, 'x')),
    names: 'sp',
    why: /sparse/,
  },
];

async function outsideState(scratch: string): Promise<unknown> {
  const outside = comparable(await snapshot(path.join(scratch, 'outside')));
  const top = (await readdir(scratch)).sort();
  return { outside, top };
}

for (const c of cases) {
  test(`hostile: ${c.name}`, async () => {
    await withTmp(async (scratch) => {
      const layer = path.join(scratch, 'layer');
      const outside = path.join(scratch, 'outside');
      await mkdir(layer);
      await mkdir(outside);
      await writeFile(path.join(outside, 'secret'), 'do not touch');
      const before = await outsideState(scratch);
      const tar = await c.tar(outside);
      await assert.rejects(applyLayer(Readable.from([tar]), layer, c.opts), (e: unknown) => {
        assert.ok(e instanceof Error, 'rejects with an Error');
        assert.ok(e.message.includes(c.names), `message ${JSON.stringify(e.message)} should name ${c.names}`);
        if (c.why) assert.match(e.message, c.why);
        assert.ok(e instanceof LayerfsError, `LayerfsError expected, got ${e.message}`);
        assert.equal(e.code, c.code ?? 'EBADTAR');
        return true;
      });
      assert.deepEqual(await outsideState(scratch), before, 'nothing changed outside the layer');
      assert.equal(await readFile(path.join(outside, 'secret'), 'utf8'), 'do not touch');
    });
  });
}

test('absolute names and ./ prefixes are stripped and land inside the layer', async () => {
  await withTmp(async (scratch) => {
    const layer = path.join(scratch, 'layer');
    const outside = path.join(scratch, 'outside');
    await mkdir(layer);
    await mkdir(outside);
    const before = await outsideState(scratch);
    const tar = rawTar(
      rawEntry({ name: `${outside}/abs-file`, flag: '0' }, 'a'),
      rawEntry({ name: '/etc/evil', flag: '0' }, 'e'),
      rawEntry({ name: './././dot', flag: '0' }, 'd'),
      rawEntry({ name: '//double//slash', flag: '0' }, 's'),
      rawEntry({ name: 'h', flag: '1', linkname: '/etc/evil' }),
    );
    await applyLayer(Readable.from([tar]), layer);
    assert.equal(await readFile(path.join(layer, outside.slice(1), 'abs-file'), 'utf8'), 'a');
    assert.equal(await readFile(path.join(layer, 'etc/evil'), 'utf8'), 'e');
    assert.equal(await readFile(path.join(layer, 'h'), 'utf8'), 'e');
    assert.equal(await readFile(path.join(layer, 'dot'), 'utf8'), 'd');
    assert.equal(await readFile(path.join(layer, 'double/slash'), 'utf8'), 's');
    assert.deepEqual(await outsideState(scratch), before);
  });
});

test('symlinks pointing outside are kept as data and never followed; a later file replaces the link', async () => {
  await withTmp(async (scratch) => {
    const layer = path.join(scratch, 'layer');
    const outside = path.join(scratch, 'outside');
    await mkdir(layer);
    await mkdir(outside);
    await writeFile(path.join(outside, 'secret'), 'do not touch');
    const before = await outsideState(scratch);
    const tar = await buildTar([
      { name: 'rel', type: 'symlink', linkname: '../outside/secret' },
      { name: 'abs', type: 'symlink', linkname: path.join(outside, 'secret') },
      { name: 'abs', content: 'replaced the link, not the target' },
      { name: 'rel', type: 'character-device', devmajor: 1, devminor: 3 },
      { name: 'dirlink', type: 'symlink', linkname: outside },
      { name: 'dirlink/', mode: 0o700 }, // dir over symlink: the link is replaced by a real dir
      { name: 'dirlink/inside', content: 'i' },
    ]);
    await applyLayer(Readable.from([tar]), layer);
    assert.deepEqual(await outsideState(scratch), before);
    assert.equal(await readFile(path.join(layer, 'abs'), 'utf8'), 'replaced the link, not the target');
    assert.equal(await readFile(path.join(layer, 'dirlink/inside'), 'utf8'), 'i');
  });
});

test('an error leaves no background write running after the rejection', async () => {
  await withTmp(async (scratch) => {
    const layer = path.join(scratch, 'layer');
    await mkdir(layer);
    const entries: TarEntry[] = [];
    for (let i = 0; i < 300; i++) entries.push({ name: `f${i}`, content: Buffer.alloc(30000, i) });
    entries.push({ name: '../escape', content: 'x' });
    await assert.rejects(applyLayer(Readable.from([await buildTar(entries)]), layer), /escape/);
    const n1 = (await readdir(layer)).length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await readdir(layer)).length, n1, 'no files appear after rejection');
  });
});
