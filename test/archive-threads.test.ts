/** applyLayer's helper threads: the sha256 ring (hasher.ts) and the small-file writer (writer.ts). */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, lstat, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { applyLayer } from '../src/archive/index.js';
import { streamHash } from '../src/archive/hasher.js';
import { buildTar, FIXED_MTIME, type TarEntry } from './lib/tarbuild.js';
import { withTmp } from './lib/treesnap.js';

test('hasher: worker sha256 equals crypto sha256 across ring wrap-around, tiny and oversized chunks', async () => {
  const data = randomBytes(70 << 20);
  for (const maxChunk of [700, 1 << 20, 40 << 20]) {
    const h = streamHash();
    const ref = createHash('sha256');
    let off = 0;
    let seed = maxChunk;
    while (off < data.length) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const n = Math.min(data.length - off, 1 + (seed % maxChunk));
      const c = data.subarray(off, off + n);
      ref.update(c);
      const w = h.update(c);
      if (w) await w;
      off += n;
      if (maxChunk === 700 && off > 3 << 20) break;
    }
    assert.equal(await h.digest(), 'sha256:' + ref.digest('hex'), `chunks up to ${maxChunk}`);
  }
  const empty = streamHash();
  assert.equal(await empty.digest(), 'sha256:' + createHash('sha256').digest('hex'));
});

test('writer: thousands of small files across batches, hardlinks to queued files, a path replaced while queued', async () => {
  await withTmp(async (tmp) => {
    const entries: TarEntry[] = [{ name: 'd/', mode: 0o755 }];
    const want = new Map<string, Buffer>();
    for (let i = 0; i < 1500; i++) {
      const content = randomBytes(i % 97 === 0 ? 60_000 : i % 300);
      const name = `d/f${i}`;
      entries.push({ name, content, mode: i % 2 ? 0o644 : 0o600, uid: i % 3, gid: i % 5 });
      want.set(name, content);
      if (i % 250 === 7) {
        entries.push({ name: `d/h${i}`, type: 'link', linkname: name });
        want.set(`d/h${i}`, content);
      }
    }
    const replaced = randomBytes(1234);
    entries.push({ name: 'd/f10', content: replaced, mode: 0o640 });
    want.set('d/f10', replaced);
    const tar = await buildTar(entries);
    const dir = path.join(tmp, 'layer');
    await mkdir(dir);
    const res = await applyLayer(Readable.from([tar]), dir);
    assert.equal(res.diffDigest, 'sha256:' + createHash('sha256').update(tar).digest('hex'));
    for (const [name, content] of want) assert.deepEqual(await readFile(path.join(dir, name)), content, name);
    const st = await lstat(path.join(dir, 'd/f3'));
    assert.equal(st.mode & 0o7777, 0o644);
    assert.equal(st.mtimeMs, FIXED_MTIME.getTime());
    if (process.geteuid?.() === 0) assert.deepEqual([st.uid, st.gid], [0, 3]);
    assert.equal((await lstat(path.join(dir, 'd/f10'))).mode & 0o7777, 0o640);
    assert.equal((await stat(path.join(dir, 'd/h7'))).ino, (await stat(path.join(dir, 'd/f7'))).ino);
  });
});

test('writer: a failing create is reported with its entry and stops the apply', async () => {
  await withTmp(async (tmp) => {
    const dir = path.join(tmp, 'layer');
    await mkdir(dir);
    // A file entry under a name the kernel refuses (too long) fails in the writer thread.
    const long = 'n'.repeat(300);
    const tar = await buildTar([{ name: 'a', content: 'ok' }, { name: long, content: 'boom' }, { name: 'b', content: 'later' }]);
    await assert.rejects(applyLayer(Readable.from([tar]), dir), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ENAMETOOLONG');
      assert.match(e.message, /nnnn/);
      return true;
    });
  });
});

test('applyLayerThreaded: the same tree and result as applyLayer; errors keep code and what; a failing source fails the apply after its clean-up', async () => {
  const { applyLayerThreaded } = await import('../src/archive/apply-thread.js');
  const { LayerfsError } = await import('../src/common/errors.js');
  const { byteTree } = await import('./lib/bytetree.js');
  await withTmp(async (tmp) => {
    const entries: TarEntry[] = [{ name: 'd/' }, ...Array.from({ length: 300 }, (_, i) => ({ name: `d/f${i}`, content: randomBytes(i * 37) })), { name: 'big', content: randomBytes(3 << 20) }];
    const tar = await buildTar(entries);
    const chunks = (b: Buffer) => Readable.from(Array.from({ length: Math.ceil(b.length / 9999) }, (_, i) => b.subarray(i * 9999, (i + 1) * 9999)));
    const a = path.join(tmp, 'a');
    const b = path.join(tmp, 'b');
    await mkdir(a);
    await mkdir(b);
    let seen = 0;
    const ra = await applyLayerThreaded(chunks(tar), a, { onBytes: (n) => (seen = n) });
    const rb = await applyLayer(chunks(tar), b);
    assert.deepEqual(ra, rb);
    assert.equal(seen, tar.length);
    assert.deepEqual(byteTree(a, { mtimeDirs: true }), byteTree(b, { mtimeDirs: true }));
    // an error from the thread: a LayerfsError with its code and what
    const c = path.join(tmp, 'c');
    await mkdir(c);
    await assert.rejects(applyLayerThreaded(chunks(tar), c, { expectDiffDigest: 'sha256:' + '0'.repeat(64), label: 'layer sha256:x' }), (e: unknown) => {
      assert.ok(e instanceof LayerfsError);
      assert.equal(e.code, 'EDIGEST');
      assert.equal(e.what, 'layer sha256:x');
      return true;
    });
    // the source fails half way: that error, and nothing left running in the dir afterwards
    const d = path.join(tmp, 'd');
    await mkdir(d);
    const failing = Readable.from(
      (async function* () {
        yield tar.subarray(0, 200000);
        throw Object.assign(new Error('source went away'), { code: 'ECONNRESET' });
      })(),
    );
    await assert.rejects(applyLayerThreaded(failing, d), /source went away/);
  });
});
