/**
 * layerfs as a containerd proxy snapshotter (issue #8): a real containerd (Debian's package) with
 * its own config, root, state and socket under a temp dir, the `layerfs snapshotter` it dials, ctr
 * and runc. Some checks talk gRPC to the snapshotter directly (what containerd's metadata layer
 * hides: backend keys, inherited labels, error codes).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, open, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { cli, cliOk, cliSpawn } from './lib/cli.js';
import { makeImage, ociArchive } from './lib/images.js';
import { forceUnmount, run } from './lib/mounts.js';
import { loadSnapshotsService } from '../src/snapshotter/server.js';

let scratch: string;
let root: string;
let shared: string;
let sock: string;
let ctdSock: string;
let containerd: ChildProcess | undefined;
let snapshotter: ChildProcess | undefined;
let client: grpc.Client;
const IMAGE = 'docker.io/library/lfstest:latest';
const S = ['snapshots', '--snapshotter', 'layerfs'];

function ctr(args: string[], timeout = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ctr', ['-a', ctdSock, ...args], { timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => (err ? reject(new Error(`ctr ${args.join(' ')}: ${stderr || (err as Error).message}`)) : resolve(stdout)));
  });
}

function ctrFails(args: string[]): Promise<string> {
  return ctr(args).then(
    (out) => {
      throw new Error(`ctr ${args.join(' ')} succeeded: ${out}`);
    },
    (err: Error) => err.message,
  );
}

const layerfs = (args: string[]) => cliOk(['--root', root, '--shared', shared, '--role', 'writer', ...args]);
async function layerfsFails(args: string[]): Promise<string> {
  const r = await cli(['--root', root, '--shared', shared, '--role', 'writer', ...args]);
  assert.notEqual(r.code, 0, `layerfs ${args.join(' ')} succeeded: ${r.stdout}`);
  return r.stderr;
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * containerd removes backend snapshots in its garbage collector, after the metadata removal; a
 * deletion made while a collection runs may wait for the next one: trigger one with a deletion.
 */
async function gcUntil(what: string, fn: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 5; i++) {
    try {
      await until(what, fn, 2000);
      return;
    } catch {
      await ctr([...S, 'prepare', `gc-kick-${i}`]);
      await ctr([...S, 'rm', `gc-kick-${i}`]);
    }
  }
  await until(what, fn, 2000);
}

async function startSnapshotter(driver: 'overlay' | 'fuse'): Promise<void> {
  const p = cliSpawn(['--root', root, '--shared', shared, '--role', 'writer', 'snapshotter', '--address', sock, '--driver', driver], { LAYERFS_LOG_LEVEL: process.env.LAYERFS_TEST_KEEP ? 'debug' : 'info' });
  snapshotter = p;
  const log = await open(path.join(scratch, 'snapshotter.log'), 'a');
  let ready = false;
  p.stderr!.on('data', (b: Buffer) => {
    if (b.toString().includes('listening on')) ready = true;
    void log.write(b);
  });
  p.on('exit', () => void log.close());
  await until('the snapshotter to listen', async () => ready);
}

async function stopSnapshotter(): Promise<void> {
  const p = snapshotter;
  if (!p || p.exitCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
  if (p.exitCode === null) p.kill('SIGKILL');
}

function rpc<T>(method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => (client as unknown as Record<string, (r: object, cb: (e: grpc.ServiceError | null, v: T) => void) => void>)[method]!(req, (e, v) => (e ? reject(e) : resolve(v))));
}

interface WireInfo {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}

function list(filters: string[] = []): Promise<WireInfo[]> {
  return new Promise((resolve, reject) => {
    const out: WireInfo[] = [];
    const s = (client as unknown as { List: (r: object) => grpc.ClientReadableStream<{ info: WireInfo[] }> }).List({ filters });
    s.on('data', (m: { info: WireInfo[] }) => out.push(...m.info));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
}

/** containerd's metadata layer keys backend snapshots `<namespace>/<n>/<key>`. */
async function backendKey(key: string): Promise<string> {
  const hit = (await list()).find((i) => i.name.endsWith(`/${key}`));
  assert.ok(hit, `backend snapshot for ${key}`);
  return hit.name;
}

async function rwLayerOf(key: string): Promise<string> {
  const layers = JSON.parse(await layerfs(['--json', 'layer', 'ls'])) as { id: string; rw: boolean; name?: string }[];
  const hit = layers.find((l) => l.rw && l.name?.endsWith(`/${key}`));
  assert.ok(hit, `RW layer for ${key}`);
  return hit.id;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

let chain: string[] = []; // chainIDs of the image, bottom first

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-ctd-'));
  root = path.join(scratch, 'root');
  shared = path.join(scratch, 'nfs');
  sock = path.join(scratch, 'layerfs.sock');
  ctdSock = path.join(scratch, 'containerd.sock');
  const busybox = await readFile('/bin/busybox');
  const ln = (n: string) => ({ name: `bin/${n}`, type: 'symlink' as const, linkname: 'busybox' });
  const image = await makeImage([
    [{ name: 'bin/' }, { name: 'bin/busybox', content: busybox, mode: 0o755 }, ln('sh'), ln('cat'), ln('ls'), ln('sleep'), { name: 'etc/' }, { name: 'etc/hello', content: 'hello from the bottom layer\n' }, { name: 'etc/gone', content: 'deleted above\n' }, { name: 'proc/' }, { name: 'dev/' }, { name: 'sys/' }, { name: 'tmp/', mode: 0o1777 }],
    [{ name: 'etc/' }, { name: 'etc/mid', content: 'middle layer\n' }, { name: 'etc/.wh.gone' }],
    [{ name: 'etc/' }, { name: 'etc/top', content: 'top layer\n' }],
  ]);
  await writeFile(path.join(scratch, 'image.tar'), await ociArchive(image, 'latest'));
  const cfg = path.join(scratch, 'containerd.toml');
  await writeFile(
    cfg,
    [
      'version = 2',
      `root = "${scratch}/containerd/root"`,
      `state = "${scratch}/containerd/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]',
      '[debug]',
      `  level = "${process.env.LAYERFS_TEST_KEEP ? 'debug' : 'info'}"`,
      '[grpc]',
      `  address = "${ctdSock}"`,
      '[ttrpc]',
      `  address = "${ctdSock}.ttrpc"`,
      '[plugins."io.containerd.gc.v1.scheduler"]',
      '  deletion_threshold = 1', // collect (and so remove backend snapshots) after every deletion
      '[proxy_plugins.layerfs]',
      '  type = "snapshot"',
      `  address = "${sock}"`,
      '',
    ].join('\n'),
  );
  await startSnapshotter('overlay');
  const log = await open(path.join(scratch, 'containerd.log'), 'w');
  containerd = spawn('containerd', ['--config', cfg], { stdio: ['ignore', log.fd, log.fd] });
  await log.close();
  await until('containerd', () => ctr(['version'], 5000));
  const Svc = loadSnapshotsService();
  client = new Svc(`unix://${sock}`, grpc.credentials.createInsecure());
});

after(async () => {
  try {
    if (containerd && containerd.exitCode === null) {
      for (const t of (await ctr(['tasks', 'ls', '-q']).catch(() => '')).split('\n').filter(Boolean)) await ctr(['tasks', 'kill', '-s', 'KILL', t]).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 300));
      for (const c of (await ctr(['containers', 'ls', '-q']).catch(() => '')).split('\n').filter(Boolean)) {
        await ctr(['tasks', 'rm', '-f', c]).catch(() => undefined);
        await ctr(['containers', 'rm', c]).catch(() => undefined);
      }
      const gone = new Promise((r) => containerd!.once('exit', r));
      containerd.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
      if (containerd.exitCode === null) containerd.kill('SIGKILL');
    }
  } finally {
    client?.close();
    await stopSnapshotter();
    // shims our containerd started (their command line names our socket)
    for (const pid of await readdir('/proc').catch(() => [] as string[])) {
      if (!/^\d+$/.test(pid)) continue;
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes('containerd-shim') && cmd.includes(scratch)) process.kill(Number(pid), 'SIGKILL');
    }
    const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(scratch))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) await forceUnmount(m);
    if (process.env.LAYERFS_TEST_KEEP) process.stderr.write(`kept ${scratch}\n`);
    else await rm(scratch, { recursive: true, force: true });
  }
});

test('ctr images import unpacks into layerfs: committed snapshots are RO layers with chainIDs', async () => {
  await ctr(['images', 'import', '--base-name', 'docker.io/library/lfstest', '--snapshotter', 'layerfs', path.join(scratch, 'image.tar')]);
  assert.match(await ctr(['images', 'ls', '-q']), /lfstest:latest/);
  const ls = (await ctr([...S, 'ls'])).trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/));
  assert.equal(ls.length, 3);
  assert.ok(ls.every((f) => f[f.length - 1] === 'Committed'));
  const byParent = new Map(ls.map((f) => [f.length === 3 ? f[1]! : '', f[0]!]));
  chain = [byParent.get('')!];
  while (byParent.get(chain[chain.length - 1]!)) chain.push(byParent.get(chain[chain.length - 1]!)!);
  assert.equal(chain.length, 3, 'one chain of three');
  const tree = await ctr([...S, 'tree']);
  assert.match(tree, new RegExp(`^ ${chain[0]}\\n  \\\\_ ${chain[1]}\\n    \\\\_ ${chain[2]}`));
  const info = JSON.parse(await ctr([...S, 'info', chain[2]!]));
  assert.equal(info.Kind, 'Committed');
  assert.equal(info.Parent, chain[1]);
  const usage = await ctr([...S, 'usage']);
  for (const c of chain) assert.match(usage, new RegExp(c.replace(':', '\\:')));
  // the chainIDs are layerfs RO layers on the shared store, parents as containerd has them
  for (let i = 0; i < 3; i++) {
    const id = chain[i]!.slice(7);
    const rec = JSON.parse(await readFile(path.join(shared, 'overlay-layers', id, 'layer.json'), 'utf8'));
    assert.equal(rec.rw, false);
    assert.equal(rec.parent, i ? chain[i - 1]!.slice(7) : null);
  }
  assert.equal(await readFile(path.join(shared, 'overlay', chain[2]!.slice(7), 'diff', 'etc', 'top'), 'utf8'), 'top layer\n');
  // the whiteout is stored in the kernel format
  assert.ok((await run('stat', ['-c', '%F %t:%T', path.join(shared, 'overlay', chain[1]!.slice(7), 'diff', 'etc', 'gone')])).stdout.startsWith('character special file 0:0'));
});

test('ctr run on layerfs: the container sees the image, its writes land in a layerfs RW layer, removal frees it', async () => {
  const out = await ctr(['run', '--snapshotter', 'layerfs', '--rm', IMAGE, `lfs-rm-${process.pid}`, '/bin/sh', '-c', 'cat /etc/hello /etc/mid /etc/top; ls /etc; echo x > /scratch']);
  assert.equal(out, 'hello from the bottom layer\nmiddle layer\ntop layer\nhello\nmid\ntop\n');
  const id = `lfs-keep-${process.pid}`;
  await ctr(['run', '--snapshotter', 'layerfs', IMAGE, id, '/bin/sh', '-c', 'echo written-by-container > /written && rm /etc/hello']);
  const rw = await rwLayerOf(id);
  const upper = path.join(root, 'overlay', rw, 'diff');
  assert.equal(await readFile(path.join(upper, 'written'), 'utf8'), 'written-by-container\n');
  assert.ok((await run('stat', ['-c', '%F', path.join(upper, 'etc', 'hello')])).stdout.startsWith('character special file'));
  const info = JSON.parse(await ctr([...S, 'info', id]));
  assert.equal(info.Kind, 'Active');
  assert.equal(info.Parent, chain[2]);
  await ctr(['containers', 'rm', id]);
  await gcUntil('the RW layer to be removed', async () => !(await exists(path.join(root, 'overlay', rw))));
  assert.ok(!(await ctr([...S, 'ls'])).includes(id));
  // the --rm container's snapshot went the same way: only the three committed layers are left
  const layers = JSON.parse(await layerfs(['--json', 'layer', 'ls'])) as { rw: boolean }[];
  assert.deepEqual(layers.map((l) => l.rw), [false, false, false]);
});

test('a snapshot in use by a running container is not removed', async () => {
  const id = `lfs-busy-${process.pid}`;
  await ctr(['run', '-d', '--snapshotter', 'layerfs', IMAGE, id, '/bin/sleep', '300']);
  try {
    const key = await backendKey(id);
    await assert.rejects(rpc('Remove', { key }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /in use/.test(e.details));
    assert.equal((await rpc<{ info: WireInfo }>('Stat', { key })).info.kind, 'ACTIVE');
  } finally {
    await ctr(['tasks', 'rm', '-f', id]).catch(() => undefined);
    await ctr(['containers', 'rm', id]);
  }
  await gcUntil('the busy snapshot to go after the container', async () => !(await list()).some((i) => i.name.endsWith(`/${id}`)));
});

test('ctr snapshots prepare / mounts / commit / view / label / rm', async () => {
  await ctr([...S, 'prepare', 'work1', chain[2]!]);
  const mnt = path.join(scratch, 'mnt-work1');
  await mkdir(mnt);
  const cmd = (await ctr([...S, 'mounts', mnt, 'work1'])).trim();
  assert.match(cmd, /^mount -t overlay overlay .* -o index=off,workdir=.*,upperdir=.*\/diff,lowerdir=/);
  assert.equal(cmd.split('lowerdir=')[1]!.split(':').length, 3);
  await run('sh', ['-c', cmd]);
  try {
    assert.equal(await readFile(path.join(mnt, 'etc', 'top'), 'utf8'), 'top layer\n');
    await writeFile(path.join(mnt, 'etc', 'committed'), 'from work1\n');
  } finally {
    await forceUnmount(mnt);
  }
  const t0 = performance.now();
  await ctr([...S, 'commit', 'layer4', 'work1']);
  const commitMs = performance.now() - t0;
  const l4 = JSON.parse(await ctr([...S, 'info', 'layer4']));
  assert.equal(l4.Kind, 'Committed');
  assert.equal(l4.Parent, chain[2]);
  assert.ok(!(await ctr([...S, 'ls'])).includes('work1'));
  // layer4 is an RO layer on the shared store (the upper dir moved there)
  const ro = (JSON.parse(await layerfs(['--json', 'layer', 'ls'])) as { id: string; rw: boolean; parent: string | null }[]).find((l) => l.parent === chain[2]!.slice(7));
  assert.ok(ro && !ro.rw, `RO layer on top of the image (commit took ${commitMs.toFixed(0)} ms)`);
  assert.equal(await readFile(path.join(shared, 'overlay', ro.id, 'diff', 'etc', 'committed'), 'utf8'), 'from work1\n');
  // layerfs' own removal refuses a layer a containerd snapshot holds, naming the snapshot
  const refused = await layerfsFails(['layer', 'rm', ro.id]);
  assert.match(refused, /still used by containerd snapshot .*layer4/);
  assert.match(await layerfsFails(['layer', 'rm', chain[2]!.slice(7)]), /still used by .*containerd snapshot/);

  // views: one layer -> a read-only bind of its diff dir; more -> an overlay of lowers only.
  // (ctr puts no gc.root label on views: containerd's GC collects them, and so removes them from
  // layerfs, as soon as the ctr command's lease ends; so the mounts are taken from `view --mounts`.)
  type CtrMount = { Type: string; Source: string; Options: string[] };
  const vb = JSON.parse(await ctr([...S, 'view', '--mounts', 'view-bottom', chain[0]!])) as CtrMount[];
  assert.deepEqual(vb, [{ Type: 'bind', Source: path.join(root, 'overlay', chain[0]!.slice(7), 'diff'), Options: ['ro', 'rbind'] }]);
  const vt = JSON.parse(await ctr([...S, 'view', '--mounts', 'view-top', chain[2]!])) as CtrMount[];
  assert.equal(vt.length, 1);
  assert.equal(vt[0]!.Type, 'overlay');
  assert.deepEqual(vt[0]!.Options.map((o) => o.split('=')[0]), ['index=off', 'lowerdir'].map((o) => o.split('=')[0]));
  assert.equal(vt[0]!.Options[1]!.split(':').length, 3);
  await run('mount', ['-t', 'overlay', 'overlay', '-o', vt[0]!.Options.join(','), mnt]);
  try {
    assert.equal(await readFile(path.join(mnt, 'etc', 'top'), 'utf8'), 'top layer\n');
    assert.ok(!(await exists(path.join(mnt, 'etc', 'gone'))), 'the whiteout hides /etc/gone');
    await assert.rejects(writeFile(path.join(mnt, 'etc', 'x'), 'x'), /EROFS/);
  } finally {
    await forceUnmount(mnt);
  }

  // labels: containerd keeps its own, and passes `containerd.io/snapshot/` ones to the snapshotter
  await ctr([...S, 'prepare', 'work2', 'layer4']);
  // a parent with children is refused: by containerd, and by layerfs itself
  assert.match(await ctrFails([...S, 'rm', 'layer4']), /child/);
  await assert.rejects(rpc('Remove', { key: await backendKey('layer4') }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION);

  await ctr([...S, 'label', 'work2', 'containerd.io/snapshot/team=storage']);
  assert.equal(JSON.parse(await ctr([...S, 'info', 'work2'])).Labels['containerd.io/snapshot/team'], 'storage');
  const k2 = await backendKey('work2');
  assert.equal((await rpc<{ info: WireInfo }>('Stat', { key: k2 })).info.labels['containerd.io/snapshot/team'], 'storage');
  assert.deepEqual((await list(['labels."containerd.io/snapshot/team"==storage'])).map((i) => i.name), [k2]);
  await ctr([...S, 'label', 'work2', 'containerd.io/snapshot/team=']);
  assert.equal((await rpc<{ info: WireInfo }>('Stat', { key: k2 })).info.labels['containerd.io/snapshot/team'], undefined);
  await rpc('Update', { info: { name: k2, labels: { a: '1', b: '2' } }, update_mask: { paths: ['labels'] } });
  await rpc('Update', { info: { name: k2, labels: { c: '3' } }, update_mask: { paths: ['labels.c', 'labels.a'] } });
  assert.deepEqual((await rpc<{ info: WireInfo }>('Stat', { key: k2 })).info.labels, { b: '2', c: '3' });

  // filters and error codes, straight to the snapshotter
  assert.deepEqual((await list([`parent==${await backendKey('layer4')}`])).map((i) => i.name), [k2]);
  assert.equal((await list(['kind==committed'])).length, 4);
  assert.deepEqual((await list(['kind==active'])).map((i) => i.name), [k2]);
  assert.ok((await list(['kind==view', 'kind==active'])).every((i) => i.kind === 'VIEW' || i.name === k2));
  assert.deepEqual((await list(['kind==active,labels.b==2', 'name==nope'])).map((i) => i.name), [k2]);
  assert.deepEqual(await list(['kind==active,labels.b==3']), []);
  await assert.rejects(rpc('Stat', { key: 'nope' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  await assert.rejects(rpc('Prepare', { key: k2, parent: '' }), (e: grpc.ServiceError) => e.code === grpc.status.ALREADY_EXISTS);
  await assert.rejects(rpc('Prepare', { key: 'x', parent: k2 }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
  await assert.rejects(rpc('Prepare', { key: 'x', parent: 'missing' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  await assert.rejects(rpc('Commit', { name: 'y', key: await backendKey('layer4') }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION);
  await assert.rejects(rpc('Update', { info: { name: k2 }, update_mask: { paths: ['kind'] } }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);

  // remove children, then the parent: its RO layer leaves the shared store
  await ctr([...S, 'rm', 'work2']);
  await ctr([...S, 'rm', 'layer4']).catch(async (e: Error) => {
    throw new Error(`${e.message}\n${await ctr([...S, 'ls'])}\n${await ctr([...S, 'tree'])}`);
  });
  await gcUntil('layer4 to leave the shared store', async () => !(await exists(path.join(shared, 'overlay-layers', ro.id))));
  assert.deepEqual((await list(['kind==committed'])).map((i) => i.name.replace(/^.*\//, '')).sort(), [...chain].sort());
  await rpc('Cleanup', {});
});

test('restart the snapshotter while containerd runs: snapshots are still listed and mountable', async () => {
  await stopSnapshotter();
  await startSnapshotter('overlay');
  const ls = await until('containerd to reconnect', () => ctr([...S, 'ls'], 10_000));
  for (const c of chain) assert.ok(ls.includes(c));
  const out = await ctr(['run', '--snapshotter', 'layerfs', '--rm', IMAGE, `lfs-restart-${process.pid}`, '/bin/cat', '/etc/top']);
  assert.equal(out, 'top layer\n');
  // the index is a cache: with it deleted, the restarted snapshotter rebuilds the snapshot records from disk
  await stopSnapshotter();
  await rm(path.join(root, 'index'), { recursive: true, force: true });
  await startSnapshotter('overlay');
  const again = await until('containerd to reconnect after an index rebuild', () => ctr([...S, 'ls'], 10_000));
  for (const c of chain) assert.ok(again.includes(c), `${c} listed after the rebuild`);
  const out2 = await ctr(['run', '--snapshotter', 'layerfs', '--rm', IMAGE, `lfs-rebuilt-${process.pid}`, '/bin/cat', '/etc/top']);
  assert.equal(out2, 'top layer\n');
});

test('--driver fuse: the snapshotter mounts the FUSE view and hands containerd a bind mount of it', async () => {
  await stopSnapshotter();
  await startSnapshotter('fuse');
  await until('containerd to reconnect', () => ctr([...S, 'ls'], 10_000));
  const resp = await rpc<{ mounts: { type: string; source: string; options: string[] }[] }>('Prepare', { key: 'fuse-probe', parent: (await list()).find((i) => i.name.endsWith(chain[2]!))!.name });
  assert.equal(resp.mounts.length, 1);
  assert.equal(resp.mounts[0]!.type, 'bind');
  assert.deepEqual(resp.mounts[0]!.options, ['rw', 'rbind']);
  const mi = await readFile('/proc/self/mountinfo', 'utf8');
  assert.ok(mi.split('\n').some((l) => l.split(' ')[4] === resp.mounts[0]!.source && / - fuse/.test(l)), 'the bind source is a FUSE mount');
  assert.equal(await readFile(path.join(resp.mounts[0]!.source, 'etc', 'mid'), 'utf8'), 'middle layer\n');
  await rpc('Remove', { key: 'fuse-probe' });
  assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(resp.mounts[0]!.source), 'Remove unmounted the FUSE view');
  const id = `lfs-fuse-${process.pid}`;
  const out = await ctr(['run', '--snapshotter', 'layerfs', IMAGE, id, '/bin/sh', '-c', 'cat /etc/top; echo fuse-write > /w']);
  assert.equal(out, 'top layer\n');
  const rw = await rwLayerOf(id);
  assert.equal(await readFile(path.join(root, 'overlay', rw, 'diff', 'w'), 'utf8'), 'fuse-write\n');
  await ctr(['containers', 'rm', id]);
  await gcUntil('the FUSE RW layer to be removed', async () => !(await exists(path.join(root, 'overlay', rw))));
});
