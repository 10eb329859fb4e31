/**
 * A FUSE server started by `layerfs mount --driver fuse` holds no file of the root's index: the CLI had the LevelDB
 * open (LOCK, LOG, MANIFEST, the log) when it spawned the server, and the server lives as long as the mount. Both
 * transports. Every mount is undone in the after hook, also when a test fails.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readlink, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Index } from '../src/index/index.js';
import { cliOk } from './lib/cli.js';
import { FUSE_TRANSPORTS, transportEnv } from './lib/fuse.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, isMounted, waitProcessGone } from './lib/mounts.js';

async function serverPid(root: string, mnt: string): Promise<number> {
  const idx = await Index.open(path.join(root, 'index'));
  try {
    const rec = (await idx.listMounts()).find((m) => m.mountpoint === mnt);
    assert.ok(rec?.pid, `a mount record with the server's pid for ${mnt}`);
    return rec.pid;
  } finally {
    await idx.close();
  }
}

/** What the process's fds point at. */
async function fdTargets(pid: number): Promise<string[]> {
  const out: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) out.push(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''));
  return out;
}

describe('FUSE servers inherit none of the CLI\'s files', () => {
  let scratch: string;
  let env: Record<string, string>;
  const mounts: string[] = [];
  const pids: number[] = [];

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-fds-'));
    env = { LAYERFS_ROOT: path.join(scratch, 'root'), LAYERFS_ROLE: 'writer' };
    await writeOciLayout(path.join(scratch, 'oci'), [{ image: await makeImage([[{ name: 'etc/' }, { name: 'etc/f', content: 'f\n' }]]), name: 'fds/img' }]);
    await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
  });

  after(async () => {
    for (const m of mounts) {
      await cliOk(['umount', m, '--rm'], env).catch(() => forceUnmount(m));
    }
    for (const pid of pids) await waitProcessGone(pid, 10_000);
    await rm(scratch, { recursive: true, force: true });
  });

  for (const t of [...new Set(FUSE_TRANSPORTS.map((x) => (x === 'direct-pt' ? 'direct' : x)))]) {
    test(`${t}: /proc/<server>/fd links to nothing under <root>/index`, async () => {
      const mnt = path.join(scratch, `mnt-${t}`);
      await mkdir(mnt, { recursive: true });
      mounts.push(mnt);
      await cliOk(['mount', 'fds/img', mnt, '--driver', 'fuse'], { ...env, ...transportEnv(t) });
      assert.ok(await isMounted(mnt));
      const pid = await serverPid(env.LAYERFS_ROOT!, mnt);
      pids.push(pid);
      const indexDir = path.join(env.LAYERFS_ROOT!, 'index');
      const held = (await fdTargets(pid)).filter((l) => l.startsWith(indexDir));
      assert.deepEqual(held, [], `server ${pid} holds ${held.join(', ')}`);
      // and it still serves
      assert.deepEqual(await readdir(path.join(mnt, 'etc')), ['f']);
    });
  }
});
