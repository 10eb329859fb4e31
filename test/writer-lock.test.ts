/**
 * "Layer lifetime" item 7: a write waiting for the shared store's writer lock says who holds it
 * (at once, then every 10 s) and gives up after --lock-timeout (env LAYERFS_LOCK_TIMEOUT) naming
 * the holder. The holder here is a fake one "on another host": a lock file nobody may break.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cliOk, cliSpawn, watch } from './lib/cli.js';
import { waitUntil } from './lib/wait.js';
import { makeImage, writeOciLayout } from './lib/images.js';

const isId = (n: string) => /^[0-9a-f]{64}$/.test(n);

const run = (args: string[], env: Record<string, string>) => watch(cliSpawn(args, env));

describe("waiting for the shared store's writer lock", () => {
  let scratch: string;
  const nfs = () => path.join(scratch, 'nfs');
  const W = () => ({ LAYERFS_ROOT: path.join(scratch, 'writer'), LAYERFS_SHARED: nfs(), LAYERFS_ROLE: 'writer', LAYERFS_LOCK_TIMEOUT: '' });
  const lockFile = () => path.join(nfs(), '.writer.lock');
  const holder = { host: 'h2-elsewhere', pid: 4242, since: '2025-01-02T03:04:05.000Z', purpose: 'image import other.tar' };
  const heldBy = `held by pid 4242 on host h2-elsewhere since 2025-01-02T03:04:05.000Z (image import other.tar)`;
  const hold = () => writeFile(lockFile(), JSON.stringify(holder), { flag: 'wx' });
  const images = async () => (await readdir(path.join(nfs(), 'overlay-images'))).filter(isId).sort();
  let first: string;

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-lock-'));
    for (const n of ['one', 'two']) {
      const img = await makeImage([[{ name: 'etc/' }, { name: `etc/${n}`, content: n }]]);
      await writeOciLayout(path.join(scratch, `oci-${n}`), [{ image: img, name: n }]);
    }
    first = (await cliOk(['image', 'import', path.join(scratch, 'oci-one')], W())).trim();
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test('image import names the holder at once, then gives up after --lock-timeout naming it', async () => {
    await hold();
    try {
      const before = await images();
      const src = path.join(scratch, 'oci-two');
      const r = run(['image', 'import', src, '--lock-timeout', '4'], W());
      await waitUntil('the waiting message', () => r.stderr().includes('waiting for'), 30_000);
      assert.ok(r.running(), 'told while still waiting, before the timeout');
      assert.equal(r.stderr(), `layerfs: waiting for the shared store's writer lock, ${heldBy}\n`);
      assert.notEqual(await r.exited, 0);
      const lines = r.stderr().trimEnd().split('\n');
      assert.equal(lines.at(-1), `layerfs: image import ${src}: gave up after 4 s waiting for the shared store's writer lock, ${heldBy}`);
      assert.equal(r.stdout(), '');
      assert.deepEqual(await images(), before, 'nothing written');
    } finally {
      await rm(lockFile(), { force: true });
    }
  });

  test('image rm waits the same way (timeout from LAYERFS_LOCK_TIMEOUT)', async () => {
    await hold();
    try {
      const r = run(['image', 'rm', first], { ...W(), LAYERFS_LOCK_TIMEOUT: '2' });
      await waitUntil('the waiting message', () => r.stderr().includes('waiting for'), 30_000);
      assert.notEqual(await r.exited, 0);
      assert.match(r.stderr(), new RegExp(`^layerfs: waiting for the shared store's writer lock, held by pid 4242 on host h2-elsewhere .*\\n`));
      assert.match(r.stderr(), new RegExp(`layerfs: image rm ${first}: gave up after 2 s waiting for the shared store's writer lock, held by pid 4242 on host h2-elsewhere since ${holder.since} \\(image import other.tar\\)\\n$`));
      assert.ok((await images()).includes(first), 'the image is still there');
    } finally {
      await rm(lockFile(), { force: true });
    }
  });

  test('a waiter repeats the notice every 10 s and gets the lock once the holder lets go', async () => {
    await hold();
    const r = run(['image', 'import', path.join(scratch, 'oci-two'), '--lock-timeout', '120'], W());
    try {
      await waitUntil('the waiting message', () => r.stderr().includes('waiting for'), 30_000);
      await waitUntil('the repeated message', () => r.stderr().includes('still waiting'), 40_000);
      assert.match(r.stderr(), new RegExp(`^layerfs: waiting for the shared store's writer lock, ${heldBy.replace(/[()]/g, '\\$&')}\\nlayerfs: still waiting \\(10 s of 120 s\\) for the shared store's writer lock, held by pid 4242 `));
      assert.ok(r.running());
    } finally {
      await rm(lockFile(), { force: true });
    }
    assert.equal(await r.exited, 0, r.stderr());
    const id = r.stdout().trim();
    assert.ok((await images()).includes(id));
    assert.ok(!r.stderr().includes('gave up'));
  });
});
