/**
 * `image pull` against a real registry (docker-registry, distribution 2.8) fed by skopeo, with a
 * counting HTTP proxy in front of it (counts blob GETs, can stall one blob, can play a Bearer-token
 * gate); then `image export` checked by skopeo and a re-import.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readdir, readFile, rm, writeFile, open } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chainIds, hostPlatform, parseChallenges, parseRef } from '../src/image/index.js';
import { cli, cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout, type TestImage } from './lib/images.js';
import { sha256 } from './lib/tarbuild.js';

const run = (cmd: string, args: string[]) =>
  new Promise<string>((resolve, reject) =>
    execFile(cmd, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => (err ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout))),
  );

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

const procs = new Set<ChildProcess>();
const servers = new Set<http.Server>();

interface Registry {
  port: number;
  storage: string;
  proc: ChildProcess;
  start(): Promise<void>;
  kill(): Promise<void>;
}

async function startRegistry(dir: string, htpasswd?: string): Promise<Registry> {
  const port = await freePort();
  const storage = path.join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const cfg = path.join(dir, 'config.yml');
  await writeFile(
    cfg,
    [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storage}`,
      'http:',
      `  addr: 127.0.0.1:${port}`,
      ...(htpasswd ? ['auth:', '  htpasswd:', '    realm: layerfs-test', `    path: ${htpasswd}`] : []),
      '',
    ].join('\n'),
  );
  const reg: Registry = {
    port,
    storage,
    proc: null as unknown as ChildProcess,
    async start() {
      const p = spawn('/usr/bin/docker-registry', ['serve', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
      let log = '';
      p.stderr!.on('data', (c: Buffer) => (log += c.toString()));
      procs.add(p);
      p.on('exit', () => procs.delete(p));
      reg.proc = p;
      for (let i = 0; i < 100; i++) {
        const ok = await new Promise<boolean>((r) =>
          http.get(`http://127.0.0.1:${port}/v2/`, (res) => (res.resume(), r(true))).on('error', () => r(false)),
        );
        if (ok) return;
        if (p.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`registry did not start: ${log}`);
    },
    async kill() {
      const p = reg.proc;
      if (p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await gone;
    },
  };
  await reg.start();
  return reg;
}

interface Proxy {
  port: number;
  /** Paths of blob GETs seen (e.g. `/v2/a/blobs/sha256:...`). */
  blobGets: string[];
  /** Stall the next GET of the named blob after `after` bytes (the proxy stops reading from the registry); resolves when stalled. */
  stall(digest: string, after: number): Promise<void>;
  /** Read on from the registry for stalled blobs (after it died: the rest of what it sent, then its EOF, which the proxy relays as a cut). */
  release(): void;
}

/** A counting proxy in front of a registry; with `bearer`, it plays a token-auth registry (token for user:pass). */
async function startProxy(target: () => number, opts: { bearer?: { user: string; pass: string } } = {}): Promise<Proxy> {
  const port = await freePort();
  const blobGets: string[] = [];
  let stallRule: { digest: string; after: number; hit: () => void } | null = null;
  const stalledStreams: http.IncomingMessage[] = [];
  const TOKEN = 'token-' + randomBytes(8).toString('hex');
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (opts.bearer && url.startsWith('/token')) {
      const want = 'Basic ' + Buffer.from(`${opts.bearer.user}:${opts.bearer.pass}`).toString('base64');
      const q = new URL(url, 'http://x').searchParams;
      if (req.headers.authorization !== want || q.get('service') !== 'layerfs-test' || !q.get('scope')?.startsWith('repository:')) {
        res.writeHead(401).end('{"details":"bad credentials"}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: TOKEN }));
      return;
    }
    if (opts.bearer && req.headers.authorization !== `Bearer ${TOKEN}`) {
      res
        .writeHead(401, {
          'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="layerfs-test",scope="repository:${url.split('/')[2]}:pull"`,
          'content-type': 'application/json',
        })
        .end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    if (req.method === 'GET' && /\/blobs\/sha256:/.test(url)) blobGets.push(url);
    const headers = { ...req.headers };
    delete headers.authorization;
    const up = http.request({ host: '127.0.0.1', port: target(), method: req.method, path: url, headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      let rule = stallRule && url.endsWith(stallRule.digest) ? stallRule : null;
      if (rule) stallRule = null;
      let n = 0;
      const cut = () => res.destroy();
      ur.on('error', cut);
      ur.on('aborted', cut);
      ur.on('close', () => {
        if (!ur.complete) cut();
      });
      ur.on('data', (c: Buffer) => {
        n += c.length;
        if (rule && n >= rule.after) {
          res.write(c);
          ur.pause();
          stalledStreams.push(ur);
          rule.hit();
          rule = null;
          return;
        }
        if (!res.write(c) && !stalledStreams.includes(ur)) {
          ur.pause();
          res.once('drain', () => ur.resume());
        }
      });
      ur.on('end', () => res.end());
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  servers.add(server);
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    port,
    blobGets,
    stall(digest, after) {
      return new Promise<void>((hit) => {
        stallRule = { digest, after, hit };
      });
    },
    release() {
      for (const ur of stalledStreams.splice(0)) ur.resume();
    },
  };
}

function entriesOf(tag: string, n = 2) {
  return [{ name: `${tag}/` }, ...Array.from({ length: n }, (_, i) => ({ name: `${tag}/f${i}`, content: `${tag} file ${i}\n`.repeat(50) }))];
}

describe('image pull from a registry', () => {
  let scratch: string;
  let reg: Registry;
  let proxy: Proxy;
  let storeN = 0;
  const newStore = () => {
    const d = path.join(scratch, `store${storeN++}`);
    return { LAYERFS_ROOT: path.join(d, 'root'), LAYERFS_SHARED: path.join(d, 'nfs'), LAYERFS_ROLE: 'writer' };
  };
  const push = async (img: TestImage | null, layout: string, repo: string, opts: { all?: boolean; creds?: string; port?: number; tag?: string } = {}) => {
    const tag = opts.tag ?? 'v1';
    if (img) await writeOciLayout(layout, [{ image: img, name: tag }]);
    await run('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      ...(opts.all ? ['--all'] : []),
      ...(opts.creds ? ['--dest-creds', opts.creds] : []),
      `oci:${layout}:${tag}`,
      `docker://127.0.0.1:${opts.port ?? reg.port}/${repo}:${tag}`,
    ]);
  };
  const pull = (env: Record<string, string>, ref: string, extra: string[] = []) => cli(['image', 'pull', '--insecure', ref, '--json', ...extra], env);
  /** Layer descriptors as the registry holds them (skopeo gzips plain-tar layers on push). */
  const registryLayers = async (repo: string, tag = 'v1'): Promise<{ digest: string; size: number }[]> => {
    const res = await fetch(`http://127.0.0.1:${reg.port}/v2/${repo}/manifests/${tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    return ((await res.json()) as { layers: { digest: string; size: number }[] }).layers;
  };
  const blobPath = (r: Registry, digest: string) => path.join(r.storage, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data');
  const storeState = async (env: Record<string, string>) => {
    const ls = (d: string) => readdir(d).catch(() => [] as string[]);
    const overlay = await ls(path.join(env.LAYERFS_SHARED!, 'overlay'));
    return {
      images: (await ls(path.join(env.LAYERFS_SHARED!, 'overlay-images'))).filter((n) => n !== 'RO'),
      layers: (await ls(path.join(env.LAYERFS_SHARED!, 'overlay-layers'))).filter((n) => n !== 'RO'),
      temps: overlay.filter((n) => n.startsWith('.tmp-')),
      data: overlay.filter((n) => /^[0-9a-f]{64}$/.test(n)),
    };
  };

  let base: TestImage;
  let baseEnv: Record<string, string>;
  let baseId: string;

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-pull-'));
    reg = await startRegistry(path.join(scratch, 'reg'));
    proxy = await startProxy(() => reg.port);
  });
  after(async () => {
    for (const p of procs) p.kill('SIGKILL');
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    await rm(scratch, { recursive: true, force: true });
  });

  test('a multi-layer image: layers are the chainIDs, contents applied, manifest and config kept', async () => {
    base = await makeImage([entriesOf('a'), entriesOf('b'), entriesOf('c')]);
    await push(base, path.join(scratch, 'oci-base'), 'lib/base');
    baseEnv = newStore();
    const r = await pull(baseEnv, `127.0.0.1:${proxy.port}/lib/base:v1`);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    baseId = out.id;
    assert.equal(`sha256:${out.id}`, base.configDigest);
    assert.deepEqual(out.layers, chainIds(base.diffIds).map((d) => d.slice(7)));
    assert.deepEqual(out.fetched, [true, true, true]);
    assert.deepEqual(out.names, [`127.0.0.1:${proxy.port}/lib/base:v1`]);
    assert.equal(out.manifestDigest, base.manifestDigest, 'the manifest is kept as the registry served it');
    assert.equal(await readFile(path.join(baseEnv.LAYERFS_ROOT, 'overlay', out.layers[2], 'diff/c/f1'), 'utf8'), 'c file 1\n'.repeat(50));
    assert.deepEqual(await readFile(path.join(baseEnv.LAYERFS_SHARED, 'overlay-images', out.id, 'config')), base.config);
    const insp = JSON.parse(await cliOk(['image', 'inspect', `127.0.0.1:${proxy.port}/lib/base:v1`, '--json'], baseEnv));
    assert.equal(insp.id, out.id);
    // pulling it again fetches no layer
    const before = proxy.blobGets.length;
    const again = JSON.parse(await cliOk(['image', 'pull', '--insecure', '-q', `127.0.0.1:${proxy.port}/lib/base:v1`, '--json'], baseEnv));
    assert.deepEqual(again.fetched, [false, false, false]);
    assert.deepEqual(proxy.blobGets.slice(before).map((u) => u.split('/').pop()), [base.configDigest], 'only the config is fetched');
    // by digest, too
    const byDigest = await pull(baseEnv, `127.0.0.1:${proxy.port}/lib/base@${base.manifestDigest}`);
    assert.equal(byDigest.code, 0, byDigest.stderr);
    assert.equal(JSON.parse(byDigest.stdout).id, out.id);
  });

  test('a second image sharing layers: shared layers are neither downloaded nor extracted again', async () => {
    const second = await makeImage([entriesOf('a'), entriesOf('b'), entriesOf('z')]);
    assert.deepEqual(second.diffIds.slice(0, 2), base.diffIds.slice(0, 2));
    await push(second, path.join(scratch, 'oci-second'), 'lib/second');
    const before = proxy.blobGets.length;
    const r = await pull(baseEnv, `127.0.0.1:${proxy.port}/lib/second:v1`);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual(out.fetched, [false, false, true]);
    const got = proxy.blobGets.slice(before).map((u) => u.split('/').pop()).sort();
    assert.deepEqual(got, [second.configDigest, sha256(second.blobs[2]!)].sort(), 'config + the one new layer');
    assert.deepEqual(out.layers.slice(0, 2), (await JSON.parse(await cliOk(['image', 'inspect', baseId, '--json'], baseEnv))).layers.slice(0, 2));
  });

  test('a zstd image (skopeo --dest-compress-format zstd): pulled, digests checked, the layers recorded as zstd', async () => {
    const img = await makeImage([entriesOf('z1', 20), entriesOf('z2', 3)], { gzip: false });
    const layout = path.join(scratch, 'oci-zstd');
    await writeOciLayout(layout, [{ image: img, name: 'v1' }]);
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--dest-compress-format', 'zstd', '--dest-compress', `oci:${layout}:v1`, `docker://127.0.0.1:${reg.port}/lib/zstd:v1`]);
    const remote = await registryLayers('lib/zstd');
    const res = await fetch(`http://127.0.0.1:${reg.port}/v2/lib/zstd/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    const man = (await res.json()) as { layers: { mediaType: string }[] };
    assert.deepEqual(man.layers.map((l) => l.mediaType), ['application/vnd.oci.image.layer.v1.tar+zstd', 'application/vnd.oci.image.layer.v1.tar+zstd']);
    const env = newStore();
    const r = await pull(env, `127.0.0.1:${proxy.port}/lib/zstd:v1`);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(`sha256:${out.id}`, img.configDigest);
    assert.equal(await readFile(path.join(env.LAYERFS_ROOT, 'overlay', out.layers[0], 'diff/z1/f19'), 'utf8'), 'z1 file 19\n'.repeat(50));
    const l1 = JSON.parse(await cliOk(['layer', 'inspect', out.layers[1]], env));
    assert.deepEqual([l1.compression, l1.compressedDigest, l1.diffDigest], ['zstd', remote[1]!.digest, img.diffIds[1]]);
  });

  test('an image index with two platforms: the host platform is pulled', async () => {
    const host = hostPlatform().architecture;
    const other = host === 'arm64' ? 'amd64' : 'arm64';
    const mine = await makeImage([entriesOf('host')], { arch: host });
    const theirs = await makeImage([entriesOf('foreign')], { arch: other });
    const layout = path.join(scratch, 'oci-multi');
    await writeOciLayout(layout, [{ image: mine }, { image: theirs }]);
    // nest: index.json -> one image index blob (tag "v1") -> two platform manifests
    const entry = (img: TestImage, architecture: string) => ({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: img.manifestDigest,
      size: img.manifest.length,
      platform: { os: 'linux', architecture },
    });
    const idx = { manifests: [entry(theirs, other), entry(mine, host)] };
    const indexBlob = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: idx.manifests }));
    await writeFile(path.join(layout, 'blobs/sha256', sha256(indexBlob).slice(7)), indexBlob);
    await writeFile(
      path.join(layout, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: sha256(indexBlob), size: indexBlob.length, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }],
      }),
    );
    await push(null, layout, 'lib/multi', { all: true });
    const env = newStore();
    const r = await pull(env, `127.0.0.1:${proxy.port}/lib/multi:v1`);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(`sha256:${out.id}`, mine.configDigest, `the ${host} image`);
    assert.deepEqual(out.layers, [mine.diffIds[0]!.slice(7)]);
  });

  test('a corrupted blob: the pull fails naming the blob, and nothing is left in the store', async () => {
    const img = await makeImage([entriesOf('bad'), entriesOf('top')]);
    await push(img, path.join(scratch, 'oci-corrupt'), 'lib/corrupt');
    const bottom = (await registryLayers('lib/corrupt'))[0]!.digest;
    // flip a byte of the gzip header's MTIME: same size, still a valid gzip of the same tar, so
    // only the blob digest can tell
    const fh = await open(blobPath(reg, bottom), 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 4);
    await fh.write(Buffer.from([b[0]! ^ 0xff]), 0, 1, 4);
    await fh.close();
    const env = newStore();
    const r = await pull(env, `127.0.0.1:${proxy.port}/lib/corrupt:v1`);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`"code":"EDIGEST".*layer 1/2 blob ${bottom}: .*digest`), r.stderr);
    assert.deepEqual(await storeState(env), { images: [], layers: [], temps: [], data: [] });
  });

  test('a registry that disappears mid-pull: clear error, nothing half visible; a re-run resumes', async () => {
    const bigContent = randomBytes(40 << 20);
    const img = await makeImage([entriesOf('low'), [{ name: 'blob.bin', content: bigContent }], entriesOf('high')], { gzip: false });
    await push(img, path.join(scratch, 'oci-big'), 'lib/big');
    const remote = await registryLayers('lib/big');
    const big = remote[1]!.digest;
    const env = newStore();
    const chain = chainIds(img.diffIds).map((d) => d.slice(7));
    const stalled = proxy.stall(big, 4 << 20);
    const pulling = pull(env, `127.0.0.1:${proxy.port}/lib/big:v1`);
    let down = false;
    try {
      await Promise.race([stalled, pulling.then((r) => Promise.reject(new Error(`the pull ended before the stall (${r.code}): ${r.stderr}`)))]);
      // the big layer is held mid-stream; let the small bottom layer finish and be published first
      // (under load it can still be downloading when the stall begins)
      const deadline = Date.now() + 60_000;
      while (!(await storeState(env)).layers.includes(chain[0]!)) {
        if (Date.now() > deadline) throw new Error('the bottom layer was never published while the big one was stalled');
        await new Promise((res) => setTimeout(res, 50));
      }
      await reg.kill();
      down = true;
      proxy.release();
      const r = await pulling;
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, new RegExp(`"code":"EREGISTRY".*layer 2/3 blob ${big}: download interrupted after \\d+ of ${remote[1]!.size} bytes`), r.stderr);
      const st = await storeState(env);
      assert.deepEqual(st.images, []);
      assert.deepEqual(st.temps, []);
      assert.deepEqual(st.layers, [chain[0]], 'only the complete bottom layer was published');
      assert.deepEqual(st.data, [chain[0]]);
    } finally {
      proxy.release();
      // back again (also when an assertion failed, so later tests get their registry)
      if (down) await reg.start();
    }
    // the re-run fetches only what is missing
    const before = proxy.blobGets.length;
    const again = await pull(env, `127.0.0.1:${proxy.port}/lib/big:v1`);
    assert.equal(again.code, 0, again.stderr);
    const out = JSON.parse(again.stdout);
    assert.deepEqual(out.fetched, [false, true, true]);
    assert.deepEqual(out.layers, chain);
    const got = proxy.blobGets.slice(before).map((u) => u.split('/').pop());
    assert.ok(!got.includes(remote[0]!.digest), 'the completed layer is not downloaded again');
    assert.ok(got.includes(big));
    assert.deepEqual(await readFile(path.join(env.LAYERFS_ROOT, 'overlay', chain[1]!, 'diff/blob.bin')), bigContent);
  });

  test('a registry with basic auth: refused without credentials, works with --creds or a docker config.json', async () => {
    const dir = path.join(scratch, 'reg-auth');
    await mkdir(dir, { recursive: true });
    const htpasswd = path.join(dir, 'htpasswd');
    await writeFile(htpasswd, await run('htpasswd', ['-Bbn', 'alice', 's3cret']));
    const areg = await startRegistry(dir, htpasswd);
    try {
      const img = await makeImage([entriesOf('auth')]);
      await push(img, path.join(scratch, 'oci-auth'), 'lib/private', { creds: 'alice:s3cret', port: areg.port });
      const ref = `127.0.0.1:${areg.port}/lib/private:v1`;
      const env = { ...newStore(), DOCKER_CONFIG: path.join(scratch, 'no-docker-config') };
      const none = await pull(env, ref);
      assert.notEqual(none.code, 0);
      assert.match(none.stderr, /requires authentication: give --creds/);
      const wrong = await pull(env, ref, ['--creds', 'alice:nope']);
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, /refused the credentials/);
      assert.deepEqual((await storeState(env)).images, []);
      const ok = await pull(env, ref, ['--creds', 'alice:s3cret']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(`sha256:${JSON.parse(ok.stdout).id}`, img.configDigest);
      // from $DOCKER_CONFIG/config.json
      const dc = path.join(scratch, 'docker-config');
      await mkdir(dc, { recursive: true });
      await writeFile(path.join(dc, 'config.json'), JSON.stringify({ auths: { [`127.0.0.1:${areg.port}`]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
      const env2 = { ...newStore(), DOCKER_CONFIG: dc };
      const viaConfig = await pull(env2, ref);
      assert.equal(viaConfig.code, 0, viaConfig.stderr);
    } finally {
      await areg.kill();
    }
  });

  test('a registry with bearer tokens (WWW-Authenticate challenge, token service)', async () => {
    const gate = await startProxy(() => reg.port, { bearer: { user: 'bob', pass: 'tok' } });
    const env = newStore();
    const ref = `127.0.0.1:${gate.port}/lib/base:v1`;
    const none = await pull(env, ref);
    assert.notEqual(none.code, 0);
    assert.match(none.stderr, /token service .* requires credentials/);
    const ok = await pull(env, ref, ['--creds', 'bob:tok']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).id, baseId);
  });

  test('image export: skopeo accepts the OCI archive, and it imports again', async () => {
    for (const gzip of [false, true]) {
      const out = path.join(scratch, `export-${gzip}.tar`);
      await cliOk(['image', 'export', `127.0.0.1:${proxy.port}/lib/base:v1`, out, ...(gzip ? ['--gzip'] : ['--compression', 'none'])], baseEnv);
      const insp = JSON.parse(await run('skopeo', ['inspect', `oci-archive:${out}`])) as { Layers: string[]; Architecture: string };
      assert.equal(insp.Layers.length, 3);
      const cfg = JSON.parse(await run('skopeo', ['inspect', '--config', `oci-archive:${out}`])) as { rootfs: { diff_ids: string[] } };
      if (!gzip) assert.deepEqual(cfg.rootfs.diff_ids, insp.Layers, 'plain tars: blob digest = diff id');
      const env = newStore();
      const imp = JSON.parse(await cliOk(['image', 'import', out, '--json'], env));
      assert.equal(imp.layers.length, 3);
      assert.deepEqual(imp.names, [`127.0.0.1:${proxy.port}/lib/base:v1`], 'the name comes back from index.json');
      assert.equal(await readFile(path.join(env.LAYERFS_ROOT, 'overlay', imp.layers[1], 'diff/b/f0'), 'utf8'), 'b file 0\n'.repeat(50));
    }
  });
});

describe('registry references and auth challenges', () => {
  test('references: host detection, docker.io defaults, tags and digests', () => {
    const d = 'sha256:' + 'ab'.repeat(32);
    assert.deepEqual(
      { ...parseRef('127.0.0.1:5000/busybox') },
      { registry: '127.0.0.1:5000', endpoint: '127.0.0.1:5000', repository: 'busybox', tag: 'latest', digest: null, reference: 'latest', name: '127.0.0.1:5000/busybox:latest' },
    );
    const byDigest = parseRef(`host.example/ns/app@${d}`);
    assert.deepEqual([byDigest.registry, byDigest.repository, byDigest.reference, byDigest.name], ['host.example', 'ns/app', d, `host.example/ns/app@${d}`]);
    const hub = parseRef('alpine:3.19');
    assert.deepEqual([hub.registry, hub.endpoint, hub.repository, hub.tag], ['docker.io', 'registry-1.docker.io', 'library/alpine', '3.19']);
    assert.equal(parseRef('localhost/x/y:1').registry, 'localhost');
    assert.equal(parseRef('user/repo').repository, 'user/repo');
    assert.throws(() => parseRef('Bad/Name'), /bad repository name/);
    assert.throws(() => parseRef('h.io/a@sha256:12'), /digest/);
  });

  test('WWW-Authenticate: bearer and basic challenges', () => {
    assert.deepEqual(parseChallenges('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'), [
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' } },
    ]);
    assert.deepEqual(parseChallenges('Basic realm="Registry Realm"'), [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
    assert.deepEqual(
      parseChallenges('Basic realm="a", Bearer realm="b",service=s').map((c) => [c.scheme, c.params.realm]),
      [
        ['basic', 'a'],
        ['bearer', 'b'],
      ],
    );
  });
});
