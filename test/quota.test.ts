/**
 * RW-layer quotas on btrfs (the backing filesystem this machine's kernel can enforce quotas on):
 * a btrfs image file on a loop device, quota enabled, the layerfs root on it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, rm, appendFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';
import { forceUnmount, isMounted, run } from './lib/mounts.js';

let scratch: string;
let loop = '';
let fsDir: string;
let env: Record<string, string>;
const mounts: string[] = [];

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-quota-'));
  const img = path.join(scratch, 'btrfs.img');
  await run('truncate', ['-s', '300M', img]);
  await run('mkfs.btrfs', ['-q', img]);
  loop = (await run('losetup', ['-f', '--show', img])).stdout.trim();
  fsDir = path.join(scratch, 'btrfs');
  await mkdir(fsDir);
  await run('mount', [loop, fsDir]);
  await run('btrfs', ['quota', 'enable', fsDir]);
  // the shared store is elsewhere (NFS in production): copy-ups then really copy data into the
  // RW layer, instead of btrfs sharing the extents of a lower file on the same filesystem
  env = { LAYERFS_ROOT: path.join(fsDir, 'root'), LAYERFS_SHARED: path.join(scratch, 'nfs'), LAYERFS_ROLE: 'writer' };
  const image = await makeImage([[{ name: 'big', content: Buffer.alloc(4 << 20, 1) }, { name: 'small', content: 'small' }]]);
  await writeOciLayout(path.join(scratch, 'oci'), [{ image, name: 'q' }]);
  await cliOk(['image', 'import', path.join(scratch, 'oci')], env);
});

after(async () => {
  for (const m of mounts) await forceUnmount(m);
  if (fsDir && (await isMounted(fsDir))) await forceUnmount(fsDir);
  if (loop) await run('losetup', ['-d', loop]).catch(() => undefined);
  await rm(scratch, { recursive: true, force: true });
});

/** libuv has no name for EDQUOT (Node says "Unknown system error -122"): name it from errno. */
function errCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.errno === -os.constants.errno.EDQUOT ? 'EDQUOT' : (e.code ?? 'unknown');
}

/** Write `mb` MiB in chunks (1 MiB by default) with an fsync per MiB; returns the error code that stopped it, if any. */
async function fill(file: string, mb: number, chunkSize = 1 << 20): Promise<string | null> {
  const fh = await open(file, 'w');
  try {
    const chunk = Buffer.alloc(chunkSize, 0xab);
    for (let i = 0; i < (mb << 20) / chunkSize; i++) {
      await fh.write(chunk);
      if (((i + 1) * chunkSize) % (1 << 20) === 0) await fh.sync();
    }
    return null;
  } catch (err) {
    return errCode(err);
  } finally {
    await fh.close().catch(() => undefined);
  }
}

test('status reports btrfs quota support', async () => {
  const st = JSON.parse(await cliOk(['status', '--json'], env));
  assert.equal(st.drivers.overlay.backingFs, 'btrfs');
  assert.equal(st.drivers.overlay.quotaSupported, true);
  assert.equal(st.drivers.overlay.quotaKind, 'btrfs-qgroup');
});

test('a write past the RW layer quota fails with EDQUOT through the mount', async () => {
  const mnt = path.join(scratch, 'm1');
  mounts.push(mnt);
  const id = (await cliOk(['mount', 'q', mnt, '--driver', 'overlay', '--quota', '10m'], env)).trim();
  assert.equal(await fill(path.join(mnt, 'small-enough'), 4), null, '4 MiB fits in 10 MiB');
  assert.equal(await fill(path.join(mnt, 'too-big'), 20), 'EDQUOT');
  const rec = JSON.parse(await cliOk(['layer', 'inspect', id, '--json'], env));
  assert.equal(rec.quota, 10 * 1024 * 1024);
  await cliOk(['umount', mnt, '--rm'], env);
});

test('a copy-up that would pass the quota fails too', async () => {
  const mnt = path.join(scratch, 'm2');
  mounts.push(mnt);
  await cliOk(['mount', 'q', mnt, '--driver', 'overlay', '--quota', '2m'], env);
  // appending to the 4 MiB lower file copies it up first: more than the 2 MiB the layer may hold
  await assert.rejects(appendFile(path.join(mnt, 'big'), 'x'), (err) => errCode(err) === 'EDQUOT');
  await appendFile(path.join(mnt, 'small'), 'x');
  await cliOk(['umount', mnt, '--rm'], env);
});

// the direct transport writes chunks of up to 64 KiB in one native call that also answers the kernel (fuseIo): its
// error reply must carry the backing fs's errno, and the server must go on serving
for (const transport of ['direct', 'fuse-native']) {
  test(`a write past the quota fails with EDQUOT through a FUSE mount (${transport}), in 1 MiB and 64 KiB writes`, async () => {
    const mnt = path.join(scratch, `m-fuse-${transport}`);
    mounts.push(mnt);
    await cliOk(['mount', 'q', mnt, '--driver', 'fuse', '--transport', transport, '--quota', '10m'], env);
    try {
      assert.equal(await fill(path.join(mnt, 'small-enough'), 4, 64 << 10), null, '4 MiB fits in 10 MiB');
      assert.equal(await fill(path.join(mnt, 'too-big'), 20, 64 << 10), 'EDQUOT');
      // full: even a new file is refused, by its errno (not EIO)
      await assert.rejects(open(path.join(mnt, 'one-more'), 'w'), (err) => errCode(err) === 'EDQUOT');
      // btrfs gives a removed file's space back to the qgroup when its transaction commits
      const removed = async (name: string) => {
        await rm(path.join(mnt, name));
        await run('btrfs', ['filesystem', 'sync', fsDir]);
      };
      await removed('too-big');
      assert.equal(await fill(path.join(mnt, 'too-big-2'), 20), 'EDQUOT');
      await removed('too-big-2');
      assert.equal(await fill(path.join(mnt, 'fits-again'), 2, 64 << 10), null, 'room again after the removals');
    } finally {
      await cliOk(['umount', mnt, '--rm'], env);
    }
  });
}

test('quota on a filesystem without quota support, and on a read-only mount, fail clearly', async () => {
  const plain = { LAYERFS_ROOT: path.join(scratch, 'ext4root'), LAYERFS_SHARED: path.join(scratch, 'ext4nfs'), LAYERFS_ROLE: 'writer' };
  await cliOk(['image', 'import', path.join(scratch, 'oci')], plain);
  const r = await cli(['mount', 'q', path.join(scratch, 'm3'), '--driver', 'overlay', '--quota', '10m'], plain);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /quota requested but the backing filesystem \(ext4 at .*\) cannot enforce one/);
  const ro = await cli(['mount', 'q', path.join(scratch, 'm4'), '--ro', '--quota', '10m'], env);
  assert.equal(ro.code, 1);
  assert.match(ro.stderr, /read-only mount takes no quota/);
  const bad = await cli(['mount', 'q', path.join(scratch, 'm5'), '--quota', 'lots'], env);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^layerfs: --quota lots: not a size/m);
});
