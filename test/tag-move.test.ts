/**
 * "Layer lifetime" item 9: a tag moved by the writer must resolve on readers. Two roots share one
 * dir as in scanner.test.ts: the writer imports image 1 as `tagtest:latest`, the reader scans, the
 * writer imports image 2 under the same name, the reader scans again: the name is image 2's,
 * whatever order the reader applies the two image records in. And `scan --full` repairs a name
 * index that disagrees with the image records.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { Index } from '../src/index/index.js';

async function layout(dir: string, content: string): Promise<void> {
  const img = await makeImage([
    [{ name: 'etc/' }, { name: 'etc/base', content: 'base' }],
    [{ name: 'app/' }, { name: 'app/which', content }],
  ]);
  await writeOciLayout(dir, [{ image: img }]);
}

describe('a tag moved by the writer', () => {
  let scratch: string;
  const nfs = () => path.join(scratch, 'nfs');
  const stage = () => path.join(scratch, 'stage');
  const W = () => ({ LAYERFS_ROOT: path.join(scratch, 'writer'), LAYERFS_SHARED: nfs(), LAYERFS_ROLE: 'writer' });
  /** A writer publishing into a staging dir, whose pieces the test copies into the shared dir in a chosen order. */
  const S = () => ({ LAYERFS_ROOT: path.join(scratch, 'stager'), LAYERFS_SHARED: stage(), LAYERFS_ROLE: 'writer' });
  const R = () => ({ LAYERFS_ROOT: path.join(scratch, 'reader'), LAYERFS_SHARED: nfs(), LAYERFS_ROLE: 'reader' });
  const resolve = async (ref: string): Promise<string | null> => {
    const r = await cli(['image', 'inspect', ref], R());
    if (r.code !== 0) {
      assert.match(r.stderr, /no such image/);
      return null;
    }
    return (JSON.parse(r.stdout) as { id: string }).id;
  };
  const import_ = async (env: Record<string, string>, dir: string, name: string) => (await cliOk(['image', 'import', dir, '--name', name], env)).trim();

  /** Copy what the staging writer published (layers, and the chosen image dirs) into the shared dir, as the writer would: renamed into place. */
  const copyLayers = async () => {
    for (const kind of ['overlay', 'overlay-layers']) await cp(path.join(stage(), kind), path.join(nfs(), kind), { recursive: true, verbatimSymlinks: true, force: true });
  };
  const copyImage = async (id: string) => {
    const tmp = path.join(nfs(), 'overlay-images', `.tmp-copy-${id}`);
    await cp(path.join(stage(), 'overlay-images', id), tmp, { recursive: true });
    await rm(path.join(nfs(), 'overlay-images', id), { recursive: true, force: true });
    await rename(tmp, path.join(nfs(), 'overlay-images', id));
  };
  /** A rewritten image.json, renamed into its existing dir (as Store.publishImage does), and the kind dir's mtime bumped. */
  const copyImageRecord = async (id: string) => {
    const tmp = path.join(nfs(), 'overlay-images', id, '.tmp-image.json');
    await writeFile(tmp, await readFile(path.join(stage(), 'overlay-images', id, 'image.json')));
    await rename(tmp, path.join(nfs(), 'overlay-images', id, 'image.json'));
    const now = new Date();
    await utimes(path.join(nfs(), 'overlay-images'), now, now);
  };

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-tag-'));
    for (const n of ['1', '2', 'a1', 'a2', 'b1', 'b2']) await layout(path.join(scratch, `oci-${n}`), `image ${n}\n`);
    await cliOk(['status'], W());
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test('the reader resolves the moved name to the new image after one scan (new record applied before the old one is re-read)', async () => {
    const id1 = await import_(W(), path.join(scratch, 'oci-1'), 'tagtest:latest');
    await cliOk(['scan'], R());
    assert.equal(await resolve('tagtest:latest'), id1);
    const id2 = await import_(W(), path.join(scratch, 'oci-2'), 'tagtest:latest');
    assert.notEqual(id1, id2);
    const scan = JSON.parse(await cliOk(['scan', '--json'], R())) as { added: { images: string[] }; updated: { images: string[] } };
    assert.deepEqual(scan.added.images, [id2]);
    assert.deepEqual(scan.updated.images, [id1], 'the old holder is re-read in the same scan, after the new image');
    const ls = JSON.parse(await cliOk(['image', 'ls', '--json'], R())) as { id: string; names: string[] }[];
    assert.deepEqual(ls.find((i) => i.id === id2)?.names, ['tagtest:latest']);
    assert.deepEqual(ls.find((i) => i.id === id1)?.names, []);
    assert.equal(await resolve('tagtest:latest'), id2);
    assert.equal(await resolve('tagtest'), id2);
  });

  test('either order across scans: the new image first, or the old holder first', async () => {
    await cliOk(['status'], S());
    // image a1 and b1 hold their names, on the staging store and (copied) on the shared one
    const a1 = await import_(S(), path.join(scratch, 'oci-a1'), 'taga:latest');
    const b1 = await import_(S(), path.join(scratch, 'oci-b1'), 'tagb:latest');
    await copyLayers();
    await copyImage(a1);
    await copyImage(b1);
    await cliOk(['scan'], R());
    assert.equal(await resolve('taga:latest'), a1);
    assert.equal(await resolve('tagb:latest'), b1);
    // the names move on the staging store: a1 and b1's records lose them, a2 and b2 get them
    const a2 = await import_(S(), path.join(scratch, 'oci-a2'), 'taga:latest');
    const b2 = await import_(S(), path.join(scratch, 'oci-b2'), 'tagb:latest');
    await copyLayers();

    // taga: the new image reaches the reader first, the old holder's rewritten record one scan later
    await copyImage(a2);
    await cliOk(['scan'], R());
    assert.equal(await resolve('taga:latest'), a2, 'the newest holder takes the name');
    await copyImageRecord(a1);
    const r = JSON.parse(await cliOk(['scan', '--json'], R())) as { updated: { images: string[] } };
    assert.deepEqual(r.updated.images, [a1]);
    assert.equal(await resolve('taga:latest'), a2, 're-reading the old holder does not take the name away');

    // tagb: the old holder's rewritten record first (the name goes), then the new image (it comes back)
    await copyImageRecord(b1);
    await cliOk(['scan'], R());
    assert.equal(await resolve('tagb:latest'), null);
    await copyImage(b2);
    await cliOk(['scan'], R());
    assert.equal(await resolve('tagb:latest'), b2);
  });

  test('scan --full repairs a name index that disagrees with the image records', async () => {
    const id2 = await resolve('tagtest:latest');
    assert.ok(id2);
    // an index broken the way the old putImage left it (the name gone), plus a name pointing at the wrong image and a stray name
    const index = await Index.open(path.join(R().LAYERFS_ROOT, 'index'));
    const a2 = await index.imageIdByName('taga:latest');
    try {
      const name = (index as unknown as { sub(n: string): { del(k: string): Promise<void>; put(k: string, v: string): Promise<void> } }).sub('name');
      await name.del('tagtest:latest');
      await name.put('taga:latest', id2);
      await name.put('stray:latest', id2);
    } finally {
      await index.close();
    }
    assert.equal(await resolve('tagtest:latest'), null);
    const plain = JSON.parse(await cliOk(['scan', '--json'], R())) as { repairedNames?: unknown[] };
    assert.deepEqual(plain.repairedNames ?? [], [], 'a plain scan does not look');
    const full = JSON.parse(await cliOk(['scan', '--json', '--full'], R())) as { repairedNames: { name: string; now: string | null }[] };
    assert.deepEqual(
      full.repairedNames.map((n) => [n.name, n.now]).sort(),
      [
        ['stray:latest', null],
        ['taga:latest', a2],
        ['tagtest:latest', id2],
      ].sort(),
    );
    assert.equal(await resolve('tagtest:latest'), id2);
    assert.equal(await resolve('taga:latest'), a2);
    assert.equal(await resolve('stray:latest'), null);
    assert.match(await cliOk(['scan', '--full'], R()), /^no change\n$/);
  });
});
