import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { cliOk, cliSpawn } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';

const isId = (n: string) => /^[0-9a-f]{64}$/.test(n);

test('kill -9 of an import half way leaves nothing partial visible; the index agrees with the disk', async () => {
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-crash-'));
  try {
    const env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' };
    // five uncompressed layers of 40 MB each: long enough to be killed in the middle
    const layers = Array.from({ length: 5 }, (_, i) => [
      { name: `d${i}/` },
      ...Array.from({ length: 40 }, (_, j) => ({ name: `d${i}/f${j}`, content: randomBytes(1 << 20) })),
    ]);
    const img = await makeImage(layers, { gzip: false });
    const layout = path.join(scratch, 'oci');
    await writeOciLayout(layout, [{ image: img, name: 'big' }]);

    const child = cliSpawn(['image', 'import', layout], env);
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // wait until the first layer is published and indexed (its progress line says done; layers are
    // applied in parallel but published bottom-up), then kill in the middle of the rest
    const sharedOverlay = path.join(env.LAYERFS_SHARED, 'overlay');
    const deadline = Date.now() + 60_000;
    for (;;) {
      const names = await readdir(sharedOverlay).catch(() => [] as string[]);
      if (names.some(isId) && /layer 1\/5 \S+: done/.test(stderr)) break;
      if (Date.now() > deadline) throw new Error(`import never published a layer: ${stderr}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    const code = await exited;
    assert.equal(code, null, 'the import was killed before it finished');

    // nothing incomplete is visible: no image, and every listed layer is complete with a ready parent
    const images = JSON.parse(await cliOk(['image', 'ls', '--json'], env));
    assert.deepEqual(images, []);
    const listed = JSON.parse(await cliOk(['layer', 'ls', '--json'], env)) as { id: string; parent: string | null }[];
    const ids = new Set(listed.map((l) => l.id));
    assert.ok(listed.length >= 1 && listed.length < 5, `some but not all layers made it (${listed.length})`);
    for (const l of listed) {
      assert.ok((await stat(path.join(env.LAYERFS_SHARED, 'overlay-layers', l.id, 'layer.json'))).isFile());
      assert.ok((await stat(path.join(env.LAYERFS_SHARED, 'overlay', l.id, 'diff'))).isDirectory());
      if (l.parent) assert.ok(ids.has(l.parent));
    }
    // the index agrees with the disk: a rebuild gives the same answers
    const before = await cliOk(['layer', 'ls', '--json'], env);
    await cliOk(['index', 'rebuild'], env);
    assert.equal(await cliOk(['layer', 'ls', '--json'], env), before);

    // importing again completes, reusing what was done, and clears the dead import's temp dirs
    const out = JSON.parse(await cliOk(['image', 'import', layout, '--json'], env));
    assert.equal(out.extracted.filter((x: boolean) => !x).length, listed.length);
    const leftovers = (await readdir(sharedOverlay)).filter((n) => n.startsWith('.tmp-'));
    assert.deepEqual(leftovers, []);
    assert.equal(JSON.parse(await cliOk(['layer', 'ls', '--json'], env)).length, 5);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
});
