/**
 * A deleted index is rebuilt from the disk, mounts included: the records of this root's live mounts (kernel overlay
 * RW and read-only, FUSE RW and read-only, a `layer mount` view) come back from the mount table and the FUSE
 * servers' arguments, so umount, status and mount-info work as before. Another root's mounts are not claimed.
 * Everything runs through the real CLI; every mount is undone in the after hook, also when a test fails.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Index, type MountRecord } from '../src/index/index.js';
import { cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, isMounted, run, waitProcessGone } from './lib/mounts.js';

const TWO = [
  [{ name: 'etc/' }, { name: 'etc/base', content: 'base\n' }],
  [{ name: 'etc/' }, { name: 'etc/top', content: 'top\n' }],
];
const ONE = [[{ name: 'only/' }, { name: 'only/file', content: 'one layer\n' }]];

/** The mount records of a root, sorted, read from its index (no CLI command may be running on that root). */
async function records(root: string): Promise<MountRecord[]> {
  const idx = await Index.open(path.join(root, 'index'));
  try {
    return (await idx.listMounts()).sort((a, b) => a.mountpoint.localeCompare(b.mountpoint));
  } finally {
    await idx.close();
  }
}

/** A record without what a recovery cannot know (when it was made, how many users it had). */
function shape(m: MountRecord): Omit<MountRecord, 'created' | 'refs'> {
  const { created: _c, refs: _r, ...rest } = m;
  return rest;
}

describe('index rebuild recovers mount records from the mount table', () => {
  let scratch: string;
  let A: Record<string, string>;
  let B: Record<string, string>;
  const mounts: string[] = [];
  const mnt = (name: string) => {
    const p = path.join(scratch, 'mnt', name);
    mounts.push(p);
    return p;
  };
  let rwOvl: string, roOvl: string, rwFuse: string, roFuse: string, view: string, otherRw: string, otherRo: string;
  let rwOvlId: string, rwFuseId: string, topLayer: string;
  let before5: MountRecord[];

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-recover-'));
    A = { LAYERFS_ROOT: path.join(scratch, 'rootA'), LAYERFS_SHARED: path.join(scratch, 'nfsA'), LAYERFS_ROLE: 'writer' };
    B = { LAYERFS_ROOT: path.join(scratch, 'rootB'), LAYERFS_SHARED: path.join(scratch, 'nfsB'), LAYERFS_ROLE: 'writer' };
    await writeOciLayout(path.join(scratch, 'oci-two'), [{ image: await makeImage(TWO), name: 'rec/two' }]);
    await writeOciLayout(path.join(scratch, 'oci-one'), [{ image: await makeImage(ONE), name: 'rec/one' }]);
    for (const env of [A, B]) for (const oci of ['oci-two', 'oci-one']) await cliOk(['image', 'import', path.join(scratch, oci)], env);
    const two = JSON.parse(await cliOk(['image', 'inspect', 'rec/two', '--json'], A));
    topLayer = two.topLayer;

    [rwOvl, roOvl, rwFuse, roFuse, view, otherRw, otherRo] = ['rw-ovl', 'ro-ovl', 'rw-fuse', 'ro-fuse', 'view', 'other-rw', 'other-ro'].map(mnt) as string[] as [string, string, string, string, string, string, string];
    rwOvlId = (await cliOk(['mount', 'rec/two', rwOvl, '--driver', 'overlay'], A)).trim();
    // a one-layer image: the kernel view needs the `empty` lower
    await cliOk(['mount', 'rec/one', roOvl, '--driver', 'overlay', '--ro'], A);
    rwFuseId = (await cliOk(['mount', 'rec/two', rwFuse, '--driver', 'fuse'], A)).trim();
    await cliOk(['mount', 'rec/two', roFuse, '--driver', 'fuse', '--ro'], A);
    await cliOk(['layer', 'mount', topLayer, view], A);
    // another root, sharing nothing: its mounts are its own
    await cliOk(['mount', 'rec/two', otherRw, '--driver', 'overlay'], B);
    await cliOk(['mount', 'rec/two', otherRo, '--driver', 'fuse', '--ro'], B);
    for (const m of mounts) assert.ok(await isMounted(m), `${m} mounted`);
    await writeFile(path.join(rwOvl, 'etc/written'), 'by overlay\n');
    await writeFile(path.join(rwFuse, 'etc/written'), 'by fuse\n');
  });

  after(async () => {
    // FUSE servers exit when their mount goes
    const pids = [...(await records(A.LAYERFS_ROOT!).catch(() => [])), ...(await records(B.LAYERFS_ROOT!).catch(() => []))].flatMap((m) => (m.pid ? [m.pid] : []));
    for (const m of [...mounts].reverse()) await forceUnmount(m);
    for (const pid of pids) await waitProcessGone(pid, 10_000);
    for (const m of mounts) assert.equal(await isMounted(m), false, `${m} left mounted`);
    await rm(scratch, { recursive: true, force: true });
  });

  test('index rebuild with the index in place keeps every record as it is (refs, times)', async () => {
    // a second user of the FUSE view: refs 2
    await cliOk(['mount', 'rec/two', roFuse, '--driver', 'fuse', '--ro'], A);
    before5 = await records(A.LAYERFS_ROOT!);
    assert.equal(before5.length, 5);
    assert.equal(before5.find((m) => m.mountpoint === roFuse)?.refs, 2);
    const out = JSON.parse(await cliOk(['index', 'rebuild', '--json'], A));
    assert.deepEqual(out.mountsRecovered, []);
    assert.deepEqual(await records(A.LAYERFS_ROOT!), before5);
  });

  test('a deleted index gets the five mounts back, with the same layers, drivers and servers', async () => {
    const otherBefore = await records(B.LAYERFS_ROOT!);
    await rm(path.join(A.LAYERFS_ROOT!, 'index'), { recursive: true, force: true });
    const st = JSON.parse(await cliOk(['status', '--json'], A));
    assert.equal(st.mounts, 5);
    assert.equal(st.drivers.overlay.mounts, 3);
    assert.equal(st.drivers.fuse.mounts, 2);
    const after5 = await records(A.LAYERFS_ROOT!);
    assert.deepEqual(after5.map(shape), before5.map(shape));
    for (const m of after5) assert.equal(m.refs, 1, `${m.mountpoint}: a recovered record has one user`);
    assert.equal(after5.find((m) => m.mountpoint === view)?.alone, true);
    assert.equal(after5.find((m) => m.mountpoint === roOvl)?.rw, false);
    // the other root: untouched, and none of its mounts claimed here
    assert.deepEqual(await records(B.LAYERFS_ROOT!), otherBefore);
    assert.ok(!after5.some((m) => m.mountpoint === otherRw || m.mountpoint === otherRo));
  });

  test('mount-info names the RW mounts\' upper dirs, which hold what was written', async () => {
    for (const [mp, id, text] of [
      [rwOvl, rwOvlId, 'by overlay\n'],
      [rwFuse, rwFuseId, 'by fuse\n'],
    ] as const) {
      const md = JSON.parse(await cliOk(['mount-info', mp, '--json'], A));
      assert.equal(md.layer, id);
      assert.equal(md.MergedDir, mp);
      assert.equal(md.UpperDir, path.join(A.LAYERFS_ROOT!, 'overlay', id, 'diff'));
      assert.equal(md.mounted, true);
      assert.equal(await readFile(path.join(md.UpperDir, 'etc/written'), 'utf8'), text);
    }
  });

  test('umount works on every recovered mount (--rm deletes the RW layers); status says 0 after', async () => {
    const pids = (await records(A.LAYERFS_ROOT!)).flatMap((m) => (m.pid ? [m.pid] : []));
    assert.equal(pids.length, 2);
    for (const mp of [rwOvl, rwFuse]) await cliOk(['umount', mp, '--rm'], A);
    for (const mp of [roOvl, roFuse, view]) await cliOk(['umount', mp], A);
    for (const mp of [rwOvl, roOvl, rwFuse, roFuse, view]) assert.equal(await isMounted(mp), false, `${mp} unmounted`);
    for (const id of [rwOvlId, rwFuseId]) await assert.rejects(stat(path.join(A.LAYERFS_ROOT!, 'overlay', id)), `RW layer ${id} removed`);
    for (const pid of pids) assert.ok(await waitProcessGone(pid, 10_000), `FUSE server ${pid} exited`);
    assert.equal(JSON.parse(await cliOk(['status', '--json'], A)).mounts, 0);
    // the other root's mounts are still there and still its own
    assert.ok((await isMounted(otherRw)) && (await isMounted(otherRo)));
    assert.equal(JSON.parse(await cliOk(['status', '--json'], B)).mounts, 2);
  });

  test('absolute lowerdirs are read too; an overlay naming lowers by their diff dirs (containerd\'s form) is not ours', async () => {
    const two = JSON.parse(await cliOk(['image', 'inspect', 'rec/two', '--json'], A));
    const short = async (id: string) => (await readFile(path.join(A.LAYERFS_SHARED!, 'overlay', id, 'link'), 'utf8')).trim();
    const [top, base] = [...two.layers].reverse() as [string, string];
    const abs = mnt('abs-view');
    const foreign = mnt('diff-form');
    for (const m of [abs, foreign]) await mkdir(m, { recursive: true });
    // one lower through the root's RO link, one through the shared store's l/ dir
    await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${path.join(A.LAYERFS_ROOT!, 'overlay', 'RO', 'l', await short(top))}:${path.join(A.LAYERFS_SHARED!, 'overlay', 'l', await short(base))}`, abs]);
    await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${two.lowerDirs.join(':')}`, foreign]);
    await rm(path.join(A.LAYERFS_ROOT!, 'index'), { recursive: true, force: true });
    assert.equal(JSON.parse(await cliOk(['status', '--json'], A)).mounts, 1);
    assert.deepEqual((await records(A.LAYERFS_ROOT!)).map(shape), [{ mountpoint: abs, layer: top, rw: false, driver: 'overlay' }]);
    await cliOk(['umount', abs], A);
    assert.equal(await isMounted(abs), false);
    await forceUnmount(foreign);
  });
});
