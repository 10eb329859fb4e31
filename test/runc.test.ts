/** A layerfs mount as a real container rootfs: runc runs a command on it, for both drivers. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cliOk } from './lib/cli.js';
import { FUSE_TRANSPORTS, transportEnv, type TestTransport } from './lib/fuse.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, run } from './lib/mounts.js';

let scratch: string;
let env: Record<string, string>;
const mounts: string[] = [];
const containers: string[] = [];

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-runc-'));
  env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' };
  const busybox = await readFile('/bin/busybox'); // Debian busybox-static: a static shell for the rootfs
  const image = await makeImage([
    [
      { name: 'bin/' },
      { name: 'bin/busybox', content: busybox, mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
      { name: 'bin/cat', type: 'symlink', linkname: 'busybox' },
      { name: 'etc/' },
      { name: 'etc/hello', content: 'hello from the bottom layer\n' },
      { name: 'proc/' },
      { name: 'dev/' },
      { name: 'sys/' },
      { name: 'tmp/', mode: 0o1777 },
    ],
    [{ name: 'etc/' }, { name: 'etc/top', content: 'top layer\n' }],
  ]);
  await writeOciLayout(path.join(scratch, 'oci'), [{ image, name: 'runc/busybox' }]);
  await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
});

after(async () => {
  for (const c of containers) await run('runc', ['--root', path.join(scratch, 'runc'), 'delete', '--force', c]).catch(() => undefined);
  for (const m of mounts) await forceUnmount(m);
  await rm(scratch, { recursive: true, force: true });
});

const RUNC_CASES: { driver: 'overlay' | 'fuse'; transport?: TestTransport }[] = [{ driver: 'overlay' }, ...FUSE_TRANSPORTS.map((transport) => ({ driver: 'fuse' as const, transport }))];
for (const { driver, transport } of RUNC_CASES) {
  const tag = transport ? `${driver}-${transport}` : driver;
  test(`runc runs a container on a ${driver} mount${transport ? ` (${transport})` : ''}; its write lands in the RW layer`, async () => {
    const bundle = path.join(scratch, `bundle-${tag}`);
    const rootfs = path.join(bundle, 'rootfs');
    await mkdir(bundle, { recursive: true });
    mounts.push(rootfs);
    const id = (await cliOk(['mount', 'runc/busybox', rootfs, '--driver', driver], { ...env, ...(transport ? transportEnv(transport) : {}) })).trim();
    await run('runc', ['spec'], { cwd: bundle });
    const spec = JSON.parse(await readFile(path.join(bundle, 'config.json'), 'utf8'));
    spec.process.terminal = false;
    spec.process.args = ['/bin/sh', '-c', 'cat /etc/hello /etc/top && echo written-by-container > /written'];
    spec.root = { path: 'rootfs', readonly: false };
    await writeFile(path.join(bundle, 'config.json'), JSON.stringify(spec));
    const name = `layerfs-test-${tag}-${process.pid}`;
    containers.push(name);
    const out = await run('runc', ['--root', path.join(scratch, 'runc'), 'run', '--bundle', bundle, name], { timeout: 60_000 });
    assert.equal(out.stdout, 'hello from the bottom layer\ntop layer\n');
    const upper = path.join(env.LAYERFS_ROOT!, 'overlay', id, 'diff');
    assert.equal(await readFile(path.join(upper, 'written'), 'utf8'), 'written-by-container\n');
    await cliOk(['umount', rootfs, '--rm'], env);
  });
}
