/**
 * Issue #6: a shared store across hosts. Real processes and real dirs: two (or three) local roots
 * share one "NFS" dir (<tmp>/nfs); the writer imports, a reader's daemon or `layerfs scan` follows.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile, lstat, readlink } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { forceUnmount } from './lib/mounts.js';
import { cli, cliOk, cliSpawn } from './lib/cli.js';
import { makeImage, writeOciLayout, type TestImage } from './lib/images.js';
import { genStore } from '../scripts/gen-store.js';
import { Index } from '../src/index/index.js';

const isId = (n: string) => /^[0-9a-f]{64}$/.test(n);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Daemon {
  child: ChildProcess;
  log: () => string;
  exited: Promise<number | null>;
}

function startDaemon(env: Record<string, string>, args: string[]): Daemon {
  const child = cliSpawn(['daemon', ...args], env);
  let log = '';
  child.stderr!.on('data', (c) => (log += c));
  child.stdout!.on('data', (c) => (log += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, log: () => log, exited };
}

async function stopDaemon(d: Daemon): Promise<number | null> {
  if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill('SIGTERM');
  return d.exited;
}

const logLines = (log: string): Record<string, unknown>[] =>
  log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms: number): Promise<{ value: T; waited: number }> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return { value: v, waited: Date.now() - t0 };
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

async function layout(dir: string, tag: string, base = 'base'): Promise<TestImage> {
  const img = await makeImage([
    [{ name: 'etc/' }, { name: 'etc/base', content: base }],
    [{ name: 'app/' }, { name: `app/${tag}`, content: `hello from ${tag}\n` }],
  ]);
  await writeOciLayout(dir, [{ image: img, name: tag }]);
  return img;
}

/** What the shared store holds that is complete: layer ids with data + layer.json, image ids with image.json. */
async function storeContents(shared: string): Promise<{ layers: string[]; images: string[] }> {
  const layers: string[] = [];
  for (const n of (await readdir(path.join(shared, 'overlay-layers'))).filter(isId)) {
    const ok = await stat(path.join(shared, 'overlay-layers', n, 'layer.json')).then(() => true, () => false);
    const data = await stat(path.join(shared, 'overlay', n, 'diff')).then(() => true, () => false);
    if (ok && data) layers.push(n);
  }
  const images: string[] = [];
  for (const n of (await readdir(path.join(shared, 'overlay-images'))).filter(isId)) {
    if (await stat(path.join(shared, 'overlay-images', n, 'image.json')).then(() => true, () => false)) images.push(n);
  }
  return { layers: layers.sort(), images: images.sort() };
}

describe('shared store across hosts', () => {
  let scratch: string;
  const nfs = () => path.join(scratch, 'nfs');
  const host = (name: string, role: 'writer' | 'reader') => ({ LAYERFS_ROOT: path.join(scratch, name), LAYERFS_SHARED: nfs(), LAYERFS_ROLE: role });

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-scan-'));
    await cliOk(['status'], host('hostA', 'writer')); // the writer lays out the shared store
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test('image import on a reader fails with a clear error', async () => {
    await layout(path.join(scratch, 'oci-ro'), 'ro');
    const r = await cli(['image', 'import', path.join(scratch, 'oci-ro')], host('hostR', 'reader'));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^layerfs: image import .*: this host is a reader: only the writer host changes the shared store\n$/);
    // and it wrote nothing to the shared store
    const names = await readdir(path.join(nfs(), 'overlay')).catch(() => [] as string[]);
    assert.equal(names.filter(isId).length, 0);
  });

  test('a reader daemon follows the writer: import shows up within two intervals, removal drops it', async () => {
    const A = host('hostA', 'writer');
    const B = host('hostB', 'reader');
    await layout(path.join(scratch, 'oci1'), 'one');
    const d = startDaemon(B, ['--interval', '0.5', '--log-level', 'info']);
    try {
      await waitFor('daemon start', async () => d.log().includes('daemon started'), 10_000);
      // a second daemon on the same root refuses to start
      const second = await cli(['daemon', '--interval', '0.5'], B);
      assert.notEqual(second.code, 0);
      assert.match(second.stderr, /daemon on .*hostB: already running/);

      const id = (await cliOk(['image', 'import', path.join(scratch, 'oci1')], A)).trim();
      // how soon is scripts/bench-scan.sh's to measure; here the reader's daemon must list it, on a busy machine too
      await waitFor(
        'the reader to list the image',
        async () => (JSON.parse(await cliOk(['image', 'ls', '--json', '--role', 'reader'], B)) as { id: string }[]).some((i) => i.id === id),
        60_000,
      );
      const layers = JSON.parse(await cliOk(['layer', 'ls', '--json'], B)) as { id: string; missing?: boolean }[];
      assert.equal(layers.length, 2);
      // the reader's RO symlinks point into the shared store; the data reads through them
      const top = (JSON.parse(await cliOk(['image', 'inspect', id], B)) as { topLayer: string }).topLayer;
      assert.equal(await readlink(path.join(B.LAYERFS_ROOT, 'overlay', top)), `RO/${top}`);
      assert.equal(await readFile(path.join(B.LAYERFS_ROOT, 'overlay', top, 'diff', 'app', 'one'), 'utf8'), 'hello from one\n');

      // the reader mounts the image (kernel overlay) and reads through it
      const mnt = path.join(scratch, 'reader-mnt');
      try {
        await cliOk(['mount', id, mnt, '--driver', 'overlay'], B);
        assert.equal(await readFile(path.join(mnt, 'app', 'one'), 'utf8'), 'hello from one\n');
        // the writer removes the image: the reader's lease keeps its layers on the store; the reader drops the image
        const rmOut = await cliOk(['image', 'rm', id], A);
        assert.match(rmOut, /kept 2 layers: used by host/);
        await waitFor('the reader to drop the image', async () => (JSON.parse(await cliOk(['image', 'ls', '--json'], B)) as unknown[]).length === 0, 10_000);
        const ls = JSON.parse(await cliOk(['layer', 'ls', '--json'], B)) as { id: string; rw: boolean; missing?: boolean }[];
        assert.equal(ls.filter((l) => !l.rw && !l.missing).length, 2, 'the layers are still there, not missing');
        assert.equal(await readFile(path.join(mnt, 'app', 'one'), 'utf8'), 'hello from one\n');
      } finally {
        await cliOk(['umount', mnt, '--rm'], B).catch(() => undefined);
        await forceUnmount(mnt);
      }
      // once the reader lets go (its lease is renewed at the unmount), the writer's next pass deletes them
      assert.match(await cliOk(['prune'], A), /removed layer/);
      // once nothing uses them, the next scan drops them
      await waitFor('the reader to drop the image', async () => (JSON.parse(await cliOk(['image', 'ls', '--json'], B)) as unknown[]).length === 0, 10_000);
      await waitFor('the reader to drop the layers', async () => (JSON.parse(await cliOk(['layer', 'ls', '--json'], B)) as unknown[]).length === 0, 10_000);
      assert.deepEqual((await readdir(path.join(B.LAYERFS_ROOT, 'overlay'))).filter(isId), [], 'symlinks removed');
      assert.deepEqual((await readdir(path.join(B.LAYERFS_ROOT, 'overlay-images'))).filter(isId), []);
    } finally {
      const code = await stopDaemon(d);
      assert.equal(code, 0, `daemon exits cleanly on SIGTERM: ${d.log()}`);
      assert.match(d.log(), /daemon stopped/);
    }
    await assert.rejects(stat(path.join(B.LAYERFS_ROOT, 'daemon.lock')), 'pid lock released');
  });

  test('a layer removed from the store while a local RW layer uses it is kept as missing, then dropped', async () => {
    const A = host('hostA', 'writer');
    const B = host('hostM', 'reader');
    const id = (await cliOk(['image', 'import', path.join(scratch, 'oci1')], A)).trim();
    await cliOk(['scan'], B);
    const top = (JSON.parse(await cliOk(['image', 'inspect', id], B)) as { topLayer: string }).topLayer;
    // an RW layer on top of the image, as a mount would make (written the way Store.createRWLayer does)
    const rw = 'f'.repeat(64);
    await mkdir(path.join(B.LAYERFS_ROOT, 'overlay', rw, 'diff'), { recursive: true });
    await mkdir(path.join(B.LAYERFS_ROOT, 'overlay-layers', rw), { recursive: true });
    await writeFile(
      path.join(B.LAYERFS_ROOT, 'overlay-layers', rw, 'layer.json'),
      JSON.stringify({ id: rw, parent: top, diffDigest: null, compressedDigest: null, size: 0, rw: true, created: new Date().toISOString() }),
    );
    await cliOk(['index', 'rebuild'], B);
    await cliOk(['image', 'rm', id], A);
    const r = JSON.parse(await cliOk(['scan', '--json', '--log-level', 'warn'], B));
    assert.deepEqual(r.removed.images, [id]);
    assert.equal(r.missing.length, 2, 'both layers under the RW layer are kept');
    const ls = await cliOk(['layer', 'ls'], B);
    assert.equal(ls.split('\n').filter((l) => / missing /.test(l)).length, 2, ls);
    const st = JSON.parse(await cliOk(['status', '--json'], B));
    assert.equal(st.missingLayers.length, 2);
    // the RW layer goes (umount --rm): the next scan drops the missing layers
    // (what the driver's `umount --rm` does: RW layer dir and its index record gone)
    await rm(path.join(B.LAYERFS_ROOT, 'overlay-layers', rw), { recursive: true });
    await rm(path.join(B.LAYERFS_ROOT, 'overlay', rw), { recursive: true });
    const index = await Index.open(path.join(B.LAYERFS_ROOT, 'index'));
    try {
      await index.delLayer(rw);
    } finally {
      await index.close();
    }
    const r2 = JSON.parse(await cliOk(['scan', '--json'], B));
    assert.equal(r2.removed.layers.length, 2, 'the missing layers are dropped');
    assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], B)), []);
    assert.deepEqual(JSON.parse(await cliOk(['status', '--json'], B)).missingLayers, []);
  });

  test('a layer dir visible before its layer.json, and an image before its layers, are not listed until complete', async () => {
    // publish into a staging store with the real writer, then copy it into the shared store piece by piece
    const stage = path.join(scratch, 'stage');
    const W = { LAYERFS_ROOT: path.join(scratch, 'hostS'), LAYERFS_SHARED: stage, LAYERFS_ROLE: 'writer' };
    await layout(path.join(scratch, 'oci2'), 'two', 'base-two');
    const imgId = (await cliOk(['image', 'import', path.join(scratch, 'oci2')], W)).trim();
    const layerIds = (JSON.parse(await cliOk(['image', 'inspect', imgId], W)) as { layers: string[] }).layers;
    const R = host('hostP', 'reader');
    const scan = async () => JSON.parse(await cliOk(['scan', '--json'], R));
    const listed = async () => ({
      layers: (JSON.parse(await cliOk(['layer', 'ls', '--json'], R)) as { id: string }[]).map((l) => l.id).filter((l) => layerIds.includes(l)).sort(),
      images: (JSON.parse(await cliOk(['image', 'ls', '--json'], R)) as { id: string }[]).map((i) => i.id).filter((i) => i === imgId),
    });
    await scan();
    const copy = (kind: string, id: string) => cp(path.join(stage, kind, id), path.join(nfs(), kind, id), { recursive: true, verbatimSymlinks: true });

    // 1. both data dirs, no layer.json yet
    for (const l of layerIds) {
      await copy('overlay', l);
      await copy('overlay', `l/${(await readFile(path.join(stage, 'overlay', l, 'link'), 'utf8')).trim()}`);
    }
    let r = await scan();
    assert.deepEqual(r.added.layers, []);
    assert.deepEqual((await listed()).layers, []);
    // 2. the image record, its layers not ready
    await copy('overlay-images', imgId);
    r = await scan();
    assert.deepEqual(r.added.images, []);
    assert.deepEqual(r.waiting.images, [imgId]);
    // 3. an empty layer dir in overlay-layers (mkdir before the layer.json rename) for the bottom layer
    await mkdir(path.join(nfs(), 'overlay-layers', layerIds[0]!));
    r = await scan();
    assert.deepEqual(r.added.layers, []);
    // 4. the top layer's layer.json before the bottom one: its parent is not ready, so neither is it
    await copy('overlay-layers', layerIds[1]!);
    r = await scan();
    assert.deepEqual(r.added.layers, []);
    assert.deepEqual((await listed()).layers, []);
    assert.deepEqual(r.warnings, [], 'incomplete is not an error');
    // 5. the bottom layer.json appears (inside an existing dir: the kind dir's mtime does not move)
    await cp(path.join(stage, 'overlay-layers', layerIds[0]!, 'layer.json'), path.join(nfs(), 'overlay-layers', layerIds[0]!, 'layer.json'));
    r = await scan();
    assert.deepEqual(r.added.layers.sort(), [...layerIds].sort());
    assert.deepEqual(r.added.images, [imgId]);
    assert.deepEqual(await listed(), { layers: [...layerIds].sort(), images: [imgId] });
    // the data reads through the reader's links
    assert.equal(await readFile(path.join(R.LAYERFS_ROOT, 'overlay', layerIds[1]!, 'diff', 'app', 'two'), 'utf8'), 'hello from two\n');
    // and a rebuild of the reader's index agrees with what the scanner made
    const before = await cliOk(['layer', 'ls', '--json'], R);
    await cliOk(['index', 'rebuild'], R);
    assert.equal(await cliOk(['layer', 'ls', '--json'], R), before);
  });

  test('garbage in the store does not stop the scan and is warned about once', async () => {
    const A = host('hostA', 'writer');
    const G = host('hostG', 'reader');
    await layout(path.join(scratch, 'oci3'), 'three', 'base-three');
    const good = (await cliOk(['image', 'import', path.join(scratch, 'oci3')], A)).trim();
    // garbage: a random dir, a random file, a broken layer.json (with its data dir), a broken image.json
    const badLayer = 'b'.repeat(64);
    const badImage = 'c'.repeat(64);
    await mkdir(path.join(nfs(), 'overlay-images', 'random-dir'));
    await writeFile(path.join(nfs(), 'overlay-layers', 'README'), 'not a layer');
    await mkdir(path.join(nfs(), 'overlay', badLayer, 'diff'), { recursive: true });
    await mkdir(path.join(nfs(), 'overlay-layers', badLayer));
    await writeFile(path.join(nfs(), 'overlay-layers', badLayer, 'layer.json'), '{"id": "bbbb", broken');
    await mkdir(path.join(nfs(), 'overlay-images', badImage));
    await writeFile(path.join(nfs(), 'overlay-images', badImage, 'image.json'), 'null');
    const d = startDaemon(G, ['--interval', '0.3', '--log-level', 'debug']);
    try {
      // several scans, and a store change in the middle (forces fresh listings)
      await waitFor('5 scans', async () => logLines(d.log()).filter((l) => String(l.msg).startsWith('scan:')).length >= 5, 20_000);
      await writeFile(path.join(nfs(), 'overlay', 'junk-file'), 'x');
      const n = logLines(d.log()).filter((l) => String(l.msg).startsWith('scan:')).length;
      await waitFor('5 more scans', async () => logLines(d.log()).filter((l) => String(l.msg).startsWith('scan:')).length >= n + 5, 20_000);
    } finally {
      assert.equal(await stopDaemon(d), 0);
    }
    const warns = logLines(d.log()).filter((l) => l.msg === 'ignoring a bad entry in the shared store');
    const perEntry = new Map<string, number>();
    for (const w of warns) perEntry.set(String(w.entry), (perEntry.get(String(w.entry)) ?? 0) + 1);
    assert.deepEqual(
      Object.fromEntries([...perEntry].sort()),
      Object.fromEntries(
        [
          ['overlay-images/random-dir', 1],
          ['overlay-layers/README', 1],
          [`overlay-layers/${badLayer}`, 1],
          [`overlay-images/${badImage}`, 1],
          ['overlay/junk-file', 1],
        ].sort(),
      ),
    );
    assert.equal(logLines(d.log()).filter((l) => l.level === 50).length, 0, 'no scan failed');
    const images = JSON.parse(await cliOk(['image', 'ls', '--json'], G)) as { id: string }[];
    assert.ok(images.some((i) => i.id === good), 'the good image is listed');
    assert.ok(!images.some((i) => i.id === badImage));
    // clean up for the next tests
    for (const p of ['overlay-images/random-dir', 'overlay-layers/README', `overlay/${badLayer}`, `overlay-layers/${badLayer}`, `overlay-images/${badImage}`, 'overlay/junk-file']) {
      await rm(path.join(nfs(), p), { recursive: true, force: true });
    }
  });

  test('two writers importing at once: both images complete, the store consistent', async () => {
    const A = host('hostA', 'writer');
    const C = host('hostC', 'writer');
    // the two images share their base layer: both writers want to publish it
    await layout(path.join(scratch, 'oci4'), 'four', 'shared-base');
    await layout(path.join(scratch, 'oci5'), 'five', 'shared-base');
    // while a writer lock is held (by this live process), an import waits and writes nothing
    const lockFile = path.join(nfs(), '.writer.lock');
    await writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: process.pid, since: new Date().toISOString(), purpose: 'test' }), { flag: 'wx' });
    const blocked = cliSpawn(['image', 'import', path.join(scratch, 'oci4')], C);
    const blockedExit = new Promise<number | null>((r) => blocked.on('exit', (c) => r(c)));
    const before = await storeContents(nfs());
    await sleep(1500);
    assert.equal(blocked.exitCode, null, 'the import waits for the writer lock');
    assert.deepEqual(await storeContents(nfs()), before, 'and has written nothing');
    assert.deepEqual((await readdir(path.join(nfs(), 'overlay'))).filter((n) => n.startsWith('.tmp-')), []);
    await rm(lockFile);
    assert.equal(await blockedExit, 0);
    await cliOk(['image', 'rm', 'four'], C);

    const [ra, rc] = await Promise.all([cli(['image', 'import', path.join(scratch, 'oci4')], A), cli(['image', 'import', path.join(scratch, 'oci5')], C)]);
    assert.equal(ra.code, 0, ra.stderr);
    assert.equal(rc.code, 0, rc.stderr);
    const id4 = ra.stdout.trim();
    const id5 = rc.stdout.trim();
    // consistent: every layer complete, every image's layers present, no temp dirs, no lock left
    const s = await storeContents(nfs());
    assert.ok(s.images.includes(id4) && s.images.includes(id5));
    for (const n of await readdir(path.join(nfs(), 'overlay'))) assert.ok(!n.startsWith('.tmp-'), n);
    await assert.rejects(stat(lockFile));
    for (const img of [id4, id5]) {
      const rec = JSON.parse(await readFile(path.join(nfs(), 'overlay-images', img, 'image.json'), 'utf8')) as { layers: string[] };
      for (const l of rec.layers) assert.ok(s.layers.includes(l), `layer ${l} of ${img} is complete`);
    }
    for (const l of s.layers) {
      const rec = JSON.parse(await readFile(path.join(nfs(), 'overlay-layers', l, 'layer.json'), 'utf8')) as { parent: string | null };
      if (rec.parent) assert.ok(s.layers.includes(rec.parent));
      const short = (await readFile(path.join(nfs(), 'overlay', l, 'link'), 'utf8')).trim();
      assert.equal(await readlink(path.join(nfs(), 'overlay', 'l', short)), `../${l}/diff`);
    }
    // a reader sees both, and a full rebuild of it agrees with its scans
    const R = host('hostR2', 'reader');
    await cliOk(['scan'], R);
    const images = (JSON.parse(await cliOk(['image', 'ls', '--json'], R)) as { id: string }[]).map((i) => i.id);
    assert.ok(images.includes(id4) && images.includes(id5));
    // removing one image on writer A must not take the base layer the other image (imported by C) uses
    await cliOk(['image', 'rm', id4], A);
    const after = await storeContents(nfs());
    const rec5 = JSON.parse(await readFile(path.join(nfs(), 'overlay-images', id5, 'image.json'), 'utf8')) as { layers: string[] };
    for (const l of rec5.layers) assert.ok(after.layers.includes(l), `layer ${l} of image five survives`);
    await cliOk(['image', 'rm', id5], C);
  });

  test('kill -9 of the daemon in the middle of a scan, restart: the index matches the store', async () => {
    const K = host('hostK', 'reader');
    await cliOk(['scan'], K); // index made, nothing new
    await genStore(nfs(), 2000, 200, 10, 'kill');
    const d = startDaemon(K, ['--interval', '0.2', '--log-level', 'debug']);
    await waitFor('the first scan to start', async () => d.log().includes('"scan start"'), 20_000);
    await sleep(300);
    d.child.kill('SIGKILL');
    await d.exited;
    assert.ok(!d.log().includes('scan: store changed'), 'killed before the scan finished');
    // restart: the stale pid lock is broken, the scan completes
    const d2 = startDaemon(K, ['--interval', '0.2', '--log-level', 'debug']);
    try {
      await waitFor('a scan after restart to finish', async () => logLines(d2.log()).filter((l) => String(l.msg).startsWith('scan:')).length >= 2, 60_000);
    } finally {
      assert.equal(await stopDaemon(d2), 0);
    }
    const s = await storeContents(nfs());
    const layers = (JSON.parse(await cliOk(['layer', 'ls', '--json'], K)) as { id: string }[]).map((l) => l.id).sort();
    const images = (JSON.parse(await cliOk(['image', 'ls', '--json'], K)) as { id: string }[]).map((i) => i.id).sort();
    assert.deepEqual(layers, s.layers);
    assert.deepEqual(images, s.images);
    // and the symlinks: exactly the indexed ones
    const links = [];
    for (const n of (await readdir(path.join(K.LAYERFS_ROOT, 'overlay'))).filter(isId)) if ((await lstat(path.join(K.LAYERFS_ROOT, 'overlay', n))).isSymbolicLink()) links.push(n);
    assert.deepEqual(links.sort(), s.layers);
    // a rebuild from scratch gives the same answer
    await cliOk(['index', 'rebuild'], K);
    assert.deepEqual((JSON.parse(await cliOk(['layer', 'ls', '--json'], K)) as { id: string }[]).map((l) => l.id).sort(), s.layers);
  });
});
