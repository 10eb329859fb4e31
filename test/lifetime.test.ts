/**
 * Layer lifetime (src/usage): nothing in use is ever deleted. Real processes on real dirs: a writer root and a
 * reader root share one "NFS" dir, as in scanner.test; real runc containers on kernel overlay and FUSE mounts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk, cliSpawn } from './lib/cli.js';
import { makeImage, writeOciLayout, type TestImage } from './lib/images.js';
import { waitFor } from './lib/wait.js';
import { forceUnmount, run } from './lib/mounts.js';

const isId = (n: string) => /^[0-9a-f]{64}$/.test(n);

let scratch: string;
let busybox: Buffer;
const mounts: string[] = [];
const containers: { root: string; name: string }[] = [];
let seq = 0;

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-lifetime-'));
  busybox = await readFile('/bin/busybox');
});

after(async () => {
  for (const c of containers) await run('runc', ['--root', c.root, 'delete', '--force', c.name]).catch(() => undefined);
  for (const m of mounts.reverse()) await forceUnmount(m);
  await rm(scratch, { recursive: true, force: true });
});

/** One shared store with a writer root and a reader root. */
async function hosts(extra: Record<string, string> = {}) {
  const dir = path.join(scratch, `s${++seq}`);
  const shared = path.join(dir, 'nfs');
  const w = { LAYERFS_ROOT: path.join(dir, 'writer'), LAYERFS_SHARED: shared, LAYERFS_ROLE: 'writer', ...extra };
  const r = { LAYERFS_ROOT: path.join(dir, 'reader'), LAYERFS_SHARED: shared, LAYERFS_ROLE: 'reader', ...extra };
  return { dir, shared, w, r };
}

async function image(dir: string, name: string, tag: string): Promise<TestImage> {
  const img = await makeImage([
    [
      { name: 'bin/' },
      { name: 'bin/busybox', content: busybox, mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
      { name: 'etc/' },
      { name: 'etc/base', content: `base of ${tag}\n` },
      { name: 'proc/' },
      { name: 'dev/' },
      { name: 'sys/' },
      { name: 'tmp/', mode: 0o1777 },
    ],
    [{ name: 'app/' }, { name: 'app/blob', content: Buffer.alloc(200_000, tag) }, { name: `app/${tag}`, content: `hello from ${tag}\n` }],
  ]);
  await writeOciLayout(path.join(dir, `oci-${tag}`), [{ image: img, name }]);
  return img;
}

/** Complete RO layers on the shared store (record and data). */
async function storeLayers(shared: string): Promise<string[]> {
  const out: string[] = [];
  for (const n of (await readdir(path.join(shared, 'overlay-layers')).catch(() => [] as string[])).filter(isId)) {
    const rec = await stat(path.join(shared, 'overlay-layers', n, 'layer.json')).then(() => true, () => false);
    const data = await stat(path.join(shared, 'overlay', n, 'diff')).then(() => true, () => false);
    assert.ok(rec && data, `layer ${n} is half there: record ${rec}, data ${data}`);
    out.push(n);
  }
  return out.sort();
}

/**
 * Data dirs with a final name: each must be whole (a removal renames a data dir away before deleting it, so a
 * final name never shows a half-deleted tree). One without its record is a layer being published or retired.
 */
async function dataDirs(shared: string): Promise<string[]> {
  const out: string[] = [];
  for (const n of (await readdir(path.join(shared, 'overlay')).catch(() => [] as string[])).filter(isId)) {
    assert.ok(await stat(path.join(shared, 'overlay', n, 'link')).then(() => true, () => false), `data dir of ${n} lost its link file`);
    const app = await readdir(path.join(shared, 'overlay', n, 'diff', 'app')).catch(() => null);
    if (app) assert.deepEqual(app.sort().length, 2, `layer ${n} is whole`);
    else assert.ok((await readdir(path.join(shared, 'overlay', n, 'diff', 'etc'))).includes('base'), `layer ${n} is whole`);
    out.push(n);
  }
  return out.sort();
}

async function layersOf(env: Record<string, string>, ref: string): Promise<string[]> {
  return (JSON.parse(await cliOk(['image', 'inspect', ref], env)) as { layers: string[] }).layers;
}

/** A runc container on `rootfs` that sleeps; `exec` runs commands in it. */
async function container(bundle: string, rootfs: string) {
  const runcRoot = path.join(bundle, '..', 'runc');
  await run('runc', ['spec'], { cwd: bundle });
  const spec = JSON.parse(await readFile(path.join(bundle, 'config.json'), 'utf8'));
  spec.process.terminal = false;
  spec.process.args = ['/bin/busybox', 'sleep', '3600'];
  spec.root = { path: path.relative(bundle, rootfs), readonly: false };
  await writeFile(path.join(bundle, 'config.json'), JSON.stringify(spec));
  const name = `layerfs-life-${process.pid}-${++seq}`;
  containers.push({ root: runcRoot, name });
  await new Promise<void>((resolve, reject) => {
    const p = spawn('runc', ['--root', runcRoot, 'run', '--detach', '--bundle', bundle, name], { stdio: 'ignore' });
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`runc run exited ${code}`))));
  });
  return {
    /** Every regular file of the rootfs with its md5, read inside the container. */
    read: async () => (await run('runc', ['--root', runcRoot, 'exec', name, '/bin/busybox', 'sh', '-c', '/bin/busybox find / -xdev -type f | /bin/busybox sort | /bin/busybox xargs /bin/busybox md5sum'], { timeout: 60_000 })).stdout,
    stop: async () => {
      await run('runc', ['--root', runcRoot, 'delete', '--force', name]);
    },
  };
}

test('a reader\'s containers (runc on kernel overlay and FUSE) read every file before, during and after the writer\'s image rm; the layers go once the reader lets go', async () => {
  const { dir, shared, w, r } = await hosts();
  await image(dir, 'small:v1', 'v1');
  await cliOk(['image', 'import', path.join(dir, 'oci-v1')], w);
  const layers = await layersOf(w, 'small:v1');
  await cliOk(['scan'], r);
  const ctrs = [];
  for (const driver of ['overlay', 'fuse']) {
    const bundle = path.join(dir, `bundle-${driver}`);
    const rootfs = path.join(bundle, 'rootfs');
    await mkdir(rootfs, { recursive: true });
    mounts.push(rootfs);
    await cliOk(['mount', 'small:v1', rootfs, '--driver', driver], r);
    await writeFile(path.join(rootfs, 'mine'), `written on the reader (${driver})\n`);
    const c = await container(bundle, rootfs);
    const before = await c.read();
    assert.match(before, /\/app\/blob/);
    assert.match(before, /\/mine/);
    ctrs.push({ c, before, rootfs });
  }

  // the writer removes the image: the record goes at once, the layers stay for the reader
  const rm1 = await cliOk(['image', 'rm', 'small:v1'], w);
  assert.match(rm1, /removed image/);
  assert.doesNotMatch(rm1, /removed layer/);
  assert.match(rm1, /kept 2 layers: used by host .*2 mounts/);
  assert.deepEqual(await storeLayers(shared), [...layers].sort());
  for (const { c, before } of ctrs) assert.equal(await c.read(), before, 'during: the container reads the same files');

  // the reader's scan drops the image (no new mounts of it), the running containers still read everything
  await cliOk(['scan'], r);
  assert.equal((await cli(['mount', 'small:v1', path.join(dir, 'another')], r)).code, 1);
  for (const { c, before } of ctrs) assert.equal(await c.read(), before, 'after the scan: the same files');
  // a prune on the writer keeps them too, naming the reader
  const pr = await cliOk(['prune'], w);
  assert.match(pr, /kept 2 layers: used by host/);
  assert.deepEqual(await storeLayers(shared), [...layers].sort());

  // the reader lets go: containers stop, RW layers removed (its lease is renewed at each unmount)
  for (const { c, rootfs } of ctrs) {
    await c.stop();
    await cliOk(['umount', rootfs, '--rm'], r);
  }
  // the writer's daemon deletes them on its next pass (they stayed marked)
  assert.deepEqual((await readdir(path.join(shared, 'gc'))).sort(), [...layers].sort());
  const daemon = cliSpawn(['daemon', '--interval', '0.5'], w);
  try {
    await waitFor('the writer\'s daemon to delete the layers', async () => (await storeLayers(shared)).length === 0);
  } finally {
    daemon.kill('SIGTERM');
    await new Promise((res) => (daemon.exitCode !== null ? res(null) : daemon.on('exit', res)));
  }
  assert.deepEqual(await dataDirs(shared), []);
  assert.deepEqual(await readdir(path.join(shared, 'gc')), []);
  await cliOk(['scan'], r);
  assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], r)), []);
});

test('a dead reader\'s lease expires (short TTL): then its layers go; host ls shows it, host forget drops it', async () => {
  const { dir, shared, w, r } = await hosts();
  // the TTL is the reader of the leases' to apply: the writer's commands here use 2 s once the reader is to be dead
  const wShort = { ...w, LAYERFS_LEASE_TTL: '2' };
  await image(dir, 'dead:1', 'dead');
  await cliOk(['image', 'import', path.join(dir, 'oci-dead')], w);
  await cliOk(['scan'], r);
  const m = path.join(dir, 'm');
  mounts.push(m);
  await cliOk(['mount', 'dead:1', m, '--ro', '--driver', 'overlay'], r);
  const readerId = (JSON.parse(await readFile(path.join(r.LAYERFS_ROOT, 'host.json'), 'utf8')) as { hostId: string }).hostId;

  const rm1 = await cliOk(['image', 'rm', 'dead:1'], w);
  assert.match(rm1, new RegExp(`kept 2 layers: used by host .*\\(${readerId}\\) \\(1 mount\\)`));
  // the reader runs no daemon: nothing renews its lease; once older than the TTL it protects nothing
  await waitFor('the reader\'s lease to expire', async () => {
    const hostsNow = JSON.parse(await cliOk(['host', 'ls', '--json'], wShort)) as { host: string; expired: boolean; self: boolean }[];
    return hostsNow.find((h) => h.host === readerId)?.expired;
  });
  const pr = await cliOk(['prune'], wShort);
  assert.equal((pr.match(/removed layer/g) ?? []).length, 2, pr);
  assert.deepEqual(await storeLayers(shared), []);
  await forceUnmount(m);

  const forget = await cliOk(['host', 'forget', readerId], w);
  assert.match(forget, /forgot host/);
  const left = JSON.parse(await cliOk(['host', 'ls', '--json'], w)) as { host: string }[];
  assert.ok(!left.some((h) => h.host === readerId));
  const again = await cli(['host', 'forget', readerId], w);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /has no lease/);
});

test('lease ages are read on the shared store\'s clock, not the hosts\' (clock skew): a fresh file is live whatever its host\'s clock wrote, an old one is expired', async () => {
  const { dir, shared, w } = await hosts({ LAYERFS_LEASE_TTL: '60' });
  await image(dir, 'skew:1', 'skew');
  await cliOk(['image', 'import', path.join(dir, 'oci-skew')], w);
  const layers = await layersOf(w, 'skew:1');
  await mkdir(path.join(shared, 'leases'), { recursive: true });
  const lease = (host: string, written: string) => JSON.stringify({ v: 1, host, hostname: host, seq: 1, written, layers, mounts: 1, containers: 0, snapshots: 0 });
  // host A's clock is a day behind, but it just renewed (the store stamps the file now): live
  await writeFile(path.join(shared, 'leases', 'aaaaaaaaaaaaaaaa.json'), lease('aaaaaaaaaaaaaaaa', new Date(Date.now() - 86_400_000).toISOString()));
  // host B's clock says "now", but the store's mtime of its lease is an hour old: it stopped renewing
  const b = path.join(shared, 'leases', 'bbbbbbbbbbbbbbbb.json');
  await writeFile(b, lease('bbbbbbbbbbbbbbbb', new Date().toISOString()));
  await utimes(b, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
  const hl = JSON.parse(await cliOk(['host', 'ls', '--json'], w)) as { host: string; expired: boolean }[];
  assert.equal(hl.find((h) => h.host === 'aaaaaaaaaaaaaaaa')?.expired, false);
  assert.equal(hl.find((h) => h.host === 'bbbbbbbbbbbbbbbb')?.expired, true);
  const rm1 = await cliOk(['image', 'rm', 'skew:1'], w);
  assert.match(rm1, /kept 2 layers: used by host aaaaaaaaaaaaaaaa/);
  assert.doesNotMatch(rm1, /bbbbbbbbbbbbbbbb/);
  await cliOk(['host', 'forget', 'aaaaaaaaaaaaaaaa'], w);
  assert.equal((((await cliOk(['prune'], w)).match(/removed layer/g)) ?? []).length, 2);
});

for (const driver of ['overlay', 'fuse'] as const) {
  test(`${driver}: --ro and layer-mount views protect their layers on one host; umount then lets them go`, async () => {
    const { dir, shared, w } = await hosts();
    await image(dir, 'roview:1', `rov-${driver}`);
    await cliOk(['image', 'import', path.join(dir, `oci-rov-${driver}`)], w);
    const layers = await layersOf(w, 'roview:1');
    const rov = path.join(dir, 'rov');
    mounts.push(rov);
    await cliOk(['mount', 'roview:1', rov, '--ro', '--driver', driver], w);
    const rm1 = await cliOk(['image', 'rm', 'roview:1'], w);
    assert.match(rm1, new RegExp(`kept 2 layers: used by mount ${rov}`));
    assert.equal(await readFile(path.join(rov, 'app', `rov-${driver}`), 'utf8'), `hello from rov-${driver}\n`);
    assert.equal((JSON.parse(await cliOk(['status', '--json'], w)) as { mounts: number }).mounts, 1);
    const inUse = await cli(['layer', 'rm', layers[1]!], w);
    assert.equal(inUse.code, 1);
    assert.match(inUse.stderr, new RegExp(`still used by mount ${rov}`));

    // a view of one layer alone protects that layer
    const lm = path.join(dir, 'lm');
    mounts.push(lm);
    await cliOk(['layer', 'mount', layers[0]!, lm], w);
    await cliOk(['umount', rov], w);
    assert.deepEqual(await storeLayers(shared), [layers[0]!], 'the top layer went at umount, the viewed one stays');
    const inUse2 = await cli(['layer', 'rm', layers[0]!], w);
    assert.equal(inUse2.code, 1);
    assert.match(inUse2.stderr, new RegExp(`still used by mount ${lm}`));
    assert.equal(await readFile(path.join(lm, 'etc', 'base'), 'utf8'), `base of rov-${driver}\n`);
    await cliOk(['umount', lm], w);
    assert.deepEqual(await storeLayers(shared), []);
    assert.equal((JSON.parse(await cliOk(['status', '--json'], w)) as { mounts: number }).mounts, 0);
  });
}

/** A child process stopped by its own SIGSTOP (LAYERFS_PAUSE_AT). */
async function stopped(pid: number): Promise<boolean> {
  const st = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) === 'T';
}

test('a removal racing a mount on another host: a lease written before the records are retired keeps the layers; a mount after that is refused', async () => {
  const { dir, shared, w, r } = await hosts();
  await image(dir, 'race:1', 'race');
  await cliOk(['image', 'import', path.join(dir, 'oci-race')], w);
  const layers = await layersOf(w, 'race:1');
  await cliOk(['scan'], r);
  // 1. the writer has read the leases (none) and decided to delete; the reader mounts right then
  const rm1 = cliSpawn(['image', 'rm', 'race:1'], { ...w, LAYERFS_PAUSE_AT: 'removal:checked' });
  let out1 = '';
  rm1.stdout!.on('data', (c) => (out1 += c));
  const done1 = new Promise((res) => rm1.on('exit', res));
  await waitFor('the removal to pause after its checks', () => stopped(rm1.pid!));
  const m = path.join(dir, 'm');
  mounts.push(m);
  await cliOk(['mount', 'race:1', m, '--ro', '--driver', 'overlay'], r);
  rm1.kill('SIGCONT');
  await done1;
  assert.equal(rm1.exitCode, 0);
  assert.match(out1, /kept 2 layers: used by host/, 'the second look at the leases saw the reader');
  assert.deepEqual(await storeLayers(shared), [...layers].sort());
  assert.equal(await readFile(path.join(m, 'app', 'race'), 'utf8'), 'hello from race\n');
  await cliOk(['umount', m], r);

  // 2. the records are retired; a mount now is refused, and the layers go
  await image(dir, 'race:2', 'race2');
  await cliOk(['image', 'import', path.join(dir, 'oci-race2')], w);
  await cliOk(['scan'], r);
  const rm2 = cliSpawn(['prune'], { ...w, LAYERFS_PAUSE_AT: 'removal:retired' });
  const done2 = new Promise((res) => rm2.on('exit', res));
  // prune sees race:1's layers (unused now); race:2 keeps its own
  await waitFor('the prune to pause with the records retired', () => stopped(rm2.pid!));
  // (the reader's scan dropped the image record; its index still has the layers: view one of them)
  const refused = await cli(['layer', 'mount', layers[1]!, m], r);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, new RegExp(`layer ${layers[1]}: is being removed from the shared store`));
  rm2.kill('SIGCONT');
  await done2;
  assert.equal(rm2.exitCode, 0);
  assert.deepEqual(await storeLayers(shared), (await layersOf(w, 'race:2')).sort());
});

const CRASHES = [
  { cmd: 'image rm', point: 'removal:retired' },
  { cmd: 'image rm', point: 'removal:destroyed-one' },
  { cmd: 'prune', point: 'removal:retired' },
  { cmd: 'prune', point: 'removal:destroyed-one' },
];
for (const { cmd, point } of CRASHES) {
  test(`kill -9 during a removal (${cmd}, at ${point}): no half-deleted layer is ever visible; the next pass finishes; index and disk agree`, async () => {
    const { dir, shared, w, r } = await hosts();
    await image(dir, 'crash:1', `crash${seq}`);
    await cliOk(['image', 'import', path.join(dir, `oci-crash${seq}`)], w);
    await cliOk(['scan'], r);
    if (cmd === 'prune') {
      // the image's record goes by hand (as another writer's crash would leave it): prune finds its layers unused
      const id = (JSON.parse(await cliOk(['image', 'inspect', 'crash:1'], w)) as { id: string }).id;
      await rm(path.join(shared, 'overlay-images', id), { recursive: true });
      await cliOk(['index', 'rebuild'], w);
    }
    const killed = await cli(cmd === 'prune' ? ['prune'] : ['image', 'rm', 'crash:1'], { ...w, LAYERFS_CRASH_AT: point });
    assert.equal(killed.signal, 'SIGKILL', `the removal was killed at ${point}: ${killed.stderr}`);
    assert.doesNotMatch(killed.stdout, /removed/);
    // what readers see meanwhile: whole layers or none (storeLayers and dataDirs assert it), never the image
    await storeLayers(shared);
    await dataDirs(shared);
    await cliOk(['scan'], r);
    assert.deepEqual(JSON.parse(await cliOk(['image', 'ls', '--json'], r)), []);
    // restart: the next pass (prune) restores what it must and finishes the rest
    await cliOk(['prune'], w);
    assert.deepEqual(await storeLayers(shared), []);
    assert.deepEqual(await dataDirs(shared), []);
    assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], w)), []);
    await cliOk(['index', 'rebuild'], w);
    assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], w)), []);
    assert.deepEqual(await readdir(path.join(shared, 'gc')).catch(() => []), [], 'no removal marks left');
    assert.deepEqual((await readdir(path.join(shared, 'overlay-layers'))).filter((n) => n.startsWith('.')), [], 'no retired records left');
    await cliOk(['scan'], r);
    assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], r)), []);
  });
}

test('RW layers are durable containers: reused by --name, mounted by id or name, listed with size and mount point, removed when unmounted', async () => {
  const { dir, w } = await hosts();
  await image(dir, 'rwdur:1', 'rwdur');
  await cliOk(['image', 'import', path.join(dir, 'oci-rwdur')], w);
  const m = path.join(dir, 'm');
  mounts.push(m);
  const id = (await cliOk(['mount', 'rwdur:1', m, '--name', 'keepme'], w)).trim();
  await writeFile(path.join(m, 'kept'), 'still here\n');
  await cliOk(['umount', m], w);
  type Row = { id: string; name?: string; size: number; mountpoint: string | null; rw: boolean };
  let rows = JSON.parse(await cliOk(['layer', 'ls', '--json'], w)) as Row[];
  const row = rows.find((l) => l.id === id)!;
  assert.equal(row.name, 'keepme');
  assert.equal(row.size, 'still here\n'.length);
  assert.equal(row.mountpoint, null);
  const table = await cliOk(['layer', 'ls'], w);
  assert.match(table, /NAME .*MOUNTPOINT/);
  assert.match(table, /keepme/);

  // the same name mounts the same RW layer again, with what was written
  assert.equal((await cliOk(['mount', 'rwdur:1', m, '--name', 'keepme'], w)).trim(), id);
  assert.equal(await readFile(path.join(m, 'kept'), 'utf8'), 'still here\n');
  rows = JSON.parse(await cliOk(['layer', 'ls', '--json'], w)) as Row[];
  assert.equal(rows.find((l) => l.id === id)!.mountpoint, m);
  const busy = await cli(['layer', 'rm', id], w);
  assert.equal(busy.code, 1);
  assert.match(busy.stderr, /still used by mount .*unmount it first/);
  await cliOk(['umount', m], w);

  // by id (a FUSE mount this time), and after its server is killed
  const f = path.join(dir, 'f');
  mounts.push(f);
  assert.equal((await cliOk(['mount', id, f, '--driver', 'fuse'], w)).trim(), id);
  assert.equal(await readFile(path.join(f, 'kept'), 'utf8'), 'still here\n');
  const pid = (await run('pgrep', ['-f', `server-main.js.* ${f}$`])).stdout.trim().split('\n')[0]!;
  process.kill(Number(pid), 'SIGKILL');
  await waitFor('the killed server to leave a dead mount', async () => (await stat(path.join(f, 'kept')).then(() => false, (e: NodeJS.ErrnoException) => e.code === 'ENOTCONN' || e.code === 'ECONNABORTED')));
  assert.equal((await cliOk(['mount', 'keepme', f, '--driver', 'fuse'], w)).trim(), id);
  assert.equal(await readFile(path.join(f, 'kept'), 'utf8'), 'still here\n');

  // a name taken on another image is refused
  await image(dir, 'other:1', 'other');
  await cliOk(['image', 'import', path.join(dir, 'oci-other')], w);
  const clash = await cli(['mount', 'other:1', path.join(dir, 'o'), '--name', 'keepme'], w);
  assert.equal(clash.code, 1);
  assert.match(clash.stderr, /RW layer keepme: exists on another image/);

  // umount by name with --rm deletes it; an unmounted one goes with layer rm
  await cliOk(['umount', 'keepme', '--rm'], w);
  assert.equal(await stat(path.join(w.LAYERFS_ROOT, 'overlay', id)).then(() => true, () => false), false);
  const id2 = (await cliOk(['mount', 'rwdur:1', m], w)).trim();
  await cliOk(['umount', m], w);
  await cliOk(['layer', 'rm', id2], w);
  assert.ok(!(JSON.parse(await cliOk(['layer', 'ls', '--json'], w)) as Row[]).some((l) => l.rw));
});

test('prune: a failed import\'s orphan base layer and temp leftovers go; --dry-run only says so; --rw takes old unmounted RW layers', async () => {
  const { dir, shared, w } = await hosts();
  const img = await image(dir, 'broken:1', 'broken');
  // corrupt the top layer's blob: the import fails after publishing the base layer
  const blob = path.join(dir, 'oci-broken', 'blobs', 'sha256', (JSON.parse(img.manifest.toString()) as { layers: { digest: string }[] }).layers[1]!.digest.slice(7));
  const bytes = await readFile(blob);
  bytes[bytes.length - 10]! ^= 0xff;
  await writeFile(blob, bytes);
  assert.equal((await cli(['image', 'import', path.join(dir, 'oci-broken')], w)).code, 1);
  const orphans = await storeLayers(shared);
  assert.equal(orphans.length, 1);
  await mkdir(path.join(shared, 'overlay', '.tmp-leftover', 'diff'), { recursive: true });

  const dry = await cliOk(['prune', '--dry-run'], w);
  assert.match(dry, new RegExp(`would remove layer ${orphans[0]}`));
  assert.deepEqual(await storeLayers(shared), orphans);
  const pr = await cliOk(['prune'], w);
  assert.match(pr, new RegExp(`removed layer ${orphans[0]}`));
  assert.deepEqual(await storeLayers(shared), []);
  assert.ok(!(await readdir(path.join(shared, 'overlay'))).includes('.tmp-leftover'));

  // RW layers only with --rw, only unmounted ones, only older than --rw-age
  await image(dir, 'rwp:1', 'rwp');
  await cliOk(['image', 'import', path.join(dir, 'oci-rwp')], w);
  const m = path.join(dir, 'm');
  mounts.push(m);
  const idle = (await cliOk(['mount', 'rwp:1', m], w)).trim();
  await cliOk(['umount', m], w);
  const busy = (await cliOk(['mount', 'rwp:1', m], w)).trim();
  assert.doesNotMatch(await cliOk(['prune'], w), /removed RW layer/);
  assert.doesNotMatch(await cliOk(['prune', '--rw', '--rw-age', '1h'], w), /removed RW layer/);
  const pr2 = await cliOk(['prune', '--rw', '--rw-age', '0s'], w);
  assert.match(pr2, new RegExp(`removed RW layer ${idle}`));
  assert.doesNotMatch(pr2, new RegExp(`removed RW layer ${busy}`));
  await cliOk(['umount', m, '--rm'], w);
});
