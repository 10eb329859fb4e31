/**
 * Spare FUSE servers (src/fuse/spawn.ts, issue #16 item 10): a mount served by a server started ahead works like
 * one from a cold start, is found by listServers (the mount-table recovery) with its dirs although its own command
 * line says only `--spare`, and an idle spare goes away when turned off. Start-up times are a benchmark
 * (scripts/bench-fuse-start.ts), not asserted here.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { listServers, startFuseMount, stopFuseMount } from '../src/fuse/index.js';
import { spareArgsFile, spareReady, useSpareServers } from '../src/fuse/spawn.js';
import { forceUnmount, waitProcessGone } from './lib/mounts.js';

const dirs: string[] = [];
const mounts: string[] = [];
after(async () => {
  useSpareServers(false);
  for (const m of mounts) await forceUnmount(m);
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function spareProcs(): Promise<number[]> {
  const out: number[] = [];
  const { readdir } = await import('node:fs/promises');
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const cmd = await readFile(`/proc/${n}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('server-main.js\0--spare') && (await readFile(`/proc/${n}/stat`, 'utf8').catch(() => '')).split(') ')[1]?.split(' ')[1] === String(process.pid)) out.push(Number(n));
  }
  return out;
}

test('a mount served by a spare server works, and listServers finds its dirs', async () => {
  const T = await mkdtemp(path.join(os.tmpdir(), 'layerfs-spare-'));
  dirs.push(T);
  const lower = path.join(T, 'lower');
  await mkdir(path.join(lower, 'etc'), { recursive: true });
  await writeFile(path.join(lower, 'etc', 'hello'), 'hello\n');
  const upper = path.join(T, 'upper');
  const work = path.join(T, 'work');
  useSpareServers(true);
  await spareReady();
  const [sparePid] = await spareProcs();
  assert.ok(sparePid, 'a spare server waits');
  const n = 2;
  for (let i = 0; i < n; i++) {
    const mnt = path.join(T, `mnt${i}`);
    for (const d of [mnt, `${upper}${i}`, `${work}${i}`]) await mkdir(d, { recursive: true });
    mounts.push(mnt);
    const { pid } = await startFuseMount({ lowerdirs: [lower], upperdir: `${upper}${i}`, workdir: `${work}${i}`, mountpoint: mnt });
    if (i === 0) assert.equal(pid, sparePid, 'the first mount is served by the spare that waited');
    assert.equal(await readFile(path.join(mnt, 'etc', 'hello'), 'utf8'), 'hello\n');
    await writeFile(path.join(mnt, 'etc', 'new'), `${i}\n`);
    assert.equal(await readFile(path.join(`${upper}${i}`, 'etc', 'new'), 'utf8'), `${i}\n`);
    const s = (await listServers()).find((x) => x.pid === pid);
    assert.ok(s, `listServers finds the server of ${mnt}`);
    assert.deepEqual({ mountpoint: s.mountpoint, lowerdirs: s.lowerdirs, upperdir: s.upperdir }, { mountpoint: mnt, lowerdirs: [lower], upperdir: `${upper}${i}` });
    await stopFuseMount(mnt);
    assert.ok(await waitProcessGone(pid, 30_000), 'the server exits once unmounted');
    await assert.rejects(readFile(spareArgsFile(pid)), { code: 'ENOENT' }, 'its argument file is removed');
  }
  // the next spare waits, and is not listed as a server (it serves nothing yet)
  await spareReady();
  const idle = await spareProcs();
  assert.equal(idle.length, 1, `one idle spare: ${idle.join(', ')}`);
  assert.ok(!(await listServers()).some((x) => x.pid === idle[0]));
  useSpareServers(false);
  assert.ok(await waitProcessGone(idle[0]!, 30_000), 'the idle spare exits when turned off');
});
