/**
 * The overlay core's file descriptors under node-keyed I/O (the direct transport's zero-open mode), driven in
 * this process on real files (no mount: the race is the core's own). A read larger than the synchronous limit runs
 * on libuv's pool; while it waits there, 300 other files are read, so the least recently used implicit handle (the
 * big file's) is closed and its fd number handed to one of the next opens. The pending read must still read the big
 * file: the core closes an fd only once the pool is done with it. To make the window certain, every pool thread is
 * first parked in the open(2) of a FIFO, so the big read is queued until the FIFOs get their writers.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openSync, closeSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { run } from './lib/mounts.js';
import { Overlay, ROOT_ID } from '../src/fuse/core/overlay.js';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('an implicit handle closed by the LRU while a large read of it waits on the pool: the read still reads its own file', async () => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'layerfs-fds-'));
  dirs.push(root);
  const [lower, upper, work] = ['lower', 'upper', 'work'].map((d) => path.join(root, d));
  for (const d of [lower, upper, work]) await mkdir(d);
  const big = randomBytes(1 << 20);
  await writeFile(path.join(lower, 'big'), big);
  const small = 300;
  for (let i = 0; i < small; i++) await writeFile(path.join(lower, `s${i}`), `small file ${i}\n`.repeat(4));

  const core = await Overlay.open({ lowerdirs: [lower], upperdir: upper, workdir: work });
  core.nodeKeyedIo = true;
  const bigNode = (await core.lookup(ROOT_ID, 'big'))!;
  const smallIds: number[] = [];
  for (let i = 0; i < small; i++) smallIds.push((await core.lookup(ROOT_ID, `s${i}`))!.ino);

  // park every libuv pool thread in open(2) of a FIFO with no writer yet
  const pool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const fifos: string[] = [];
  for (let i = 0; i < pool; i++) {
    const f = path.join(root, `fifo${i}`);
    await run('mkfifo', [f]);
    fifos.push(f);
  }
  const parked = fifos.map((f) => open(f, 'r'));
  await new Promise((r) => setTimeout(r, 100)); // the opens reach the pool threads

  try {
    const buf = Buffer.alloc(big.length);
    const pending = core.readNode(bigNode.ino, buf, big.length, 0); // > the sync limit: queued on the pool
    // 300 more implicit handles: the big file's (least recently used) is closed, its fd number reused
    const tiny = Buffer.alloc(64);
    for (const id of smallIds) await core.readNode(id, tiny, 64, 0);
    // let the pool go: the FIFO opens complete once a writer opens each
    const writers = fifos.map((f) => openSync(f, 'w'));
    for (const fh of await Promise.all(parked)) await fh.close();
    for (const w of writers) closeSync(w);
    const got = await pending;
    assert.equal(got, big.length, 'the whole big file was read');
    assert.ok(buf.equals(big), 'the bytes are the big file’s, not another file’s that got its fd number');
  } finally {
    await core.close();
  }
});
