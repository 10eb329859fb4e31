/**
 * The daemon owns the root's index and serves the CLI on <root>/api.sock (src/api): the same answers as without a
 * daemon, the socket for the root's owner only, a daemon killed mid-request, the index lent to another process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk, cliSpawn } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { waitFor } from './lib/wait.js';
import { forceUnmount } from './lib/mounts.js';
import { ApiClient } from '../src/api/index.js';
import { Index } from '../src/index/index.js';

let scratch: string;
let env: Record<string, string>;
const local = () => ({ ...env, LAYERFS_DAEMON: '0' });
const mounts: string[] = [];
const daemons: ChildProcess[] = [];

async function startDaemon(): Promise<ChildProcess> {
  const d = cliSpawn(['daemon', '--interval', '1'], env);
  daemons.push(d);
  let log = '';
  d.stderr!.on('data', (c) => (log += c));
  // serving: a connect succeeds (a killed daemon's socket file may still be there, refusing)
  await waitFor('the daemon to serve its socket', async () => {
    if (d.exitCode !== null) throw new Error(`daemon exited: ${log}`);
    const c = await ApiClient.connect(path.join(env.LAYERFS_ROOT!, 'api.sock'));
    c?.close();
    return c !== null;
  });
  return d;
}

async function stopDaemon(d: ChildProcess): Promise<void> {
  if (d.exitCode === null && d.signalCode === null) {
    d.kill('SIGTERM');
    await new Promise((r) => d.once('exit', r));
  }
}

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-api-'));
  env = { LAYERFS_ROOT: path.join(scratch, 'root') };
  for (const tag of ['a', 'b']) {
    const img = await makeImage([[{ name: 'etc/' }, { name: 'etc/base', content: 'base' }], [{ name: 'app/' }, { name: `app/${tag}`, content: `hello ${tag}\n` }]]);
    await writeOciLayout(path.join(scratch, `oci-${tag}`), [{ image: img, name: `api/${tag}:1` }]);
    await cliOk(['image', 'import', path.join(scratch, `oci-${tag}`)], env);
  }
});

after(async () => {
  for (const d of daemons) await stopDaemon(d);
  for (const m of mounts) await forceUnmount(m);
  await rm(scratch, { recursive: true, force: true });
});

test('through the daemon the CLI gives the same answers as without it; mounts and removals go through it', async () => {
  const m = path.join(scratch, 'm');
  mounts.push(m);
  const queries = [['image', 'ls', '--json'], ['image', 'inspect', 'api/a:1'], ['host', 'ls', '--json']];
  await cliOk(['mount', 'api/a:1', m, '--name', 'c1'], local());
  const without = await Promise.all(queries.map((q) => cliOk(q, local())));
  const layersWithout = JSON.parse(await cliOk(['layer', 'ls', '--json'], local())) as unknown[];
  const d = await startDaemon();
  try {
    for (let i = 0; i < queries.length; i++) {
      const withDaemon = await cliOk(queries[i]!, env);
      if (queries[i]![0] === 'host') {
        // ages move; the hosts and what they hold do not
        const strip = (s: string) => (JSON.parse(s) as Record<string, unknown>[]).map(({ ageMs: _a, seq: _s, written: _w, ...h }) => h);
        assert.deepEqual(strip(withDaemon), strip(without[i]!));
      } else assert.equal(withDaemon, without[i], `${queries[i]!.join(' ')} through the daemon`);
    }
    assert.deepEqual(JSON.parse(await cliOk(['layer', 'ls', '--json'], env)), layersWithout);
    // the CLI did not open the index: the daemon holds it (a local open would wait for LevelDB's LOCK)
    const st = JSON.parse(await cliOk(['status', '--json'], env)) as { mounts: number };
    assert.equal(st.mounts, 1);
    // changes through the daemon, with relative paths resolved in the caller's cwd
    const rel = path.relative(process.cwd(), path.join(scratch, 'm2'));
    mounts.push(path.join(scratch, 'm2'));
    const id = (await cliOk(['mount', 'api/b:1', rel], env)).trim();
    assert.equal(await readFile(path.join(scratch, 'm2', 'app', 'b'), 'utf8'), 'hello b\n');
    await writeFile(path.join(scratch, 'm2', 'x'), 'x');
    const md = JSON.parse(await cliOk(['mount-info', rel, '--json'], env)) as { UpperDir: string };
    assert.equal(md.UpperDir, path.join(env.LAYERFS_ROOT!, 'overlay', id, 'diff'));
    await cliOk(['umount', rel, '--rm'], env);
    await cliOk(['umount', m, '--rm'], env);
    assert.equal((JSON.parse(await cliOk(['status', '--json'], env)) as { mounts: number }).mounts, 0);
    const rmOut = await cliOk(['image', 'rm', 'api/b:1'], env);
    assert.match(rmOut, /removed image/);
    // errors come back as our errors
    const missing = await cli(['image', 'inspect', 'no/such:1'], env);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, 'layerfs: image no/such:1: no such image\n');
  } finally {
    await stopDaemon(d);
  }
  assert.equal(await stat(path.join(env.LAYERFS_ROOT!, 'api.sock')).then(() => true, () => false), false, 'the socket goes with the daemon');
  assert.deepEqual((JSON.parse(await cliOk(['image', 'ls', '--json'], local())) as { names: string[] }[]).map((i) => i.names), [['api/a:1']]);
});

test('the socket is for the root\'s owner only: another user is refused', async () => {
  const d = await startDaemon();
  try {
    const sock = path.join(env.LAYERFS_ROOT!, 'api.sock');
    assert.equal((await stat(sock)).mode & 0o777, 0o600);
    const script = `require('net').connect(${JSON.stringify(sock)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(0); });`;
    const out = await new Promise<string>((resolve) => {
      let o = '';
      const p = spawn(process.execPath, ['-e', script], { uid: 65534, gid: 65534 });
      p.stdout.on('data', (c) => (o += c));
      p.on('exit', () => resolve(o.trim()));
    });
    assert.equal(out, 'EACCES');
  } finally {
    await stopDaemon(d);
  }
});

test('a daemon killed in the middle of a change: the CLI says so; then it answers without the daemon and nothing half-made is visible', async () => {
  // a big uncompressed layer: the import runs long enough to be killed in the middle
  const big = await makeImage([[{ name: 'd/' }, ...Array.from({ length: 60 }, (_, j) => ({ name: `d/f${j}`, content: randomBytes(1 << 20) }))]], { gzip: false });
  await writeOciLayout(path.join(scratch, 'oci-big'), [{ image: big, name: 'api/big:1' }]);
  const d = await startDaemon();
  const imp = cli(['image', 'import', path.join(scratch, 'oci-big')], env);
  // the daemon has started applying (a staged layer dir appears on the store), then dies
  await waitFor('the import to start', async () => readdir(path.join(env.LAYERFS_ROOT!, 'shared', 'overlay')).then((ns) => ns.some((n) => n.startsWith('.tmp-'))));
  d.kill('SIGKILL');
  await new Promise((r) => (d.exitCode !== null || d.signalCode !== null ? r(null) : d.once('exit', r)));
  const r = await imp;
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^layerfs: daemon on .*: went away during importImage/m); // (after the import's progress lines)
  // no daemon now (its socket is left behind, refused): the CLI opens the index itself
  const images = JSON.parse(await cliOk(['image', 'ls', '--json'], env)) as { names: string[] }[];
  assert.ok(!images.some((i) => i.names.includes('api/big:1')), 'no half-imported image');
  const ids = (await readdir(path.join(env.LAYERFS_ROOT!, 'shared', 'overlay-layers'))).filter((n) => /^[0-9a-f]{64}$/.test(n));
  for (const id of ids) assert.ok(await stat(path.join(env.LAYERFS_ROOT!, 'shared', 'overlay', id, 'diff')).then(() => true, () => false), `layer ${id} is whole`);
  // and the import completes when run again (the next writer clears the leftovers)
  await cliOk(['image', 'import', path.join(scratch, 'oci-big')], env);
});

test('the daemon lends its index to a process that needs it (the snapshotter) and serves again afterwards', async () => {
  const d = await startDaemon();
  try {
    const client = (await ApiClient.connect(path.join(env.LAYERFS_ROOT!, 'api.sock')))!;
    await client.borrowIndex();
    const index = await Index.open(path.join(env.LAYERFS_ROOT!, 'index'), { waitMs: 0 });
    assert.ok((await index.listImages()).length >= 1);
    await index.close();
    // while lent, a CLI request waits; it is answered once the index is back
    const pending = cliOk(['image', 'ls', '--json'], env);
    client.close();
    assert.ok((JSON.parse(await pending) as unknown[]).length >= 1);
  } finally {
    await stopDaemon(d);
  }
});
