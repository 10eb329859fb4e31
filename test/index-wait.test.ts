/**
 * A CLI command that finds the root's index held by another process (no daemon serving it) says at once, on
 * stderr, which process holds it, since when and doing what (`<root>/index.holder`), repeats that every 10 s,
 * fails naming the holder when LAYERFS_INDEX_WAIT_MS runs out, and proceeds once the holder lets go. A dead
 * holder's file is ignored. The holder is a real second process that opens the index as layerfs does.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cliOk, cliSpawn, repoRoot, watch, type Watched } from './lib/cli.js';
import { waitUntil } from './lib/wait.js';


const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A process that opens the root's index as layerfs does (holder file and all) and keeps it until its stdin closes. */
function holdIndex(root: string, purpose: string, holderFile = true): { child: ChildProcess; run: Watched; held: Promise<void> } {
  const code = `
    const { Store } = await import(${JSON.stringify(path.join(repoRoot, 'dist/src/store/index.js'))});
    const { Index } = await import(${JSON.stringify(path.join(repoRoot, 'dist/src/index/index.js'))});
    const store = await Store.open({ root: ${JSON.stringify(root)}, role: 'writer' });
    const idx = await Index.open(store.indexDir, ${holderFile ? `{ holderFile: store.indexHolderFile, purpose: ${JSON.stringify(purpose)} }` : '{}'});
    process.stdout.write('held\\n');
    process.stdin.resume();
    process.stdin.on('end', async () => { await idx.close(); process.exit(0); });`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['pipe', 'pipe', 'pipe'] });
  const run = watch(child);
  return { child, run, held: waitUntil('the holder to hold the index', () => run.stdout().includes('held') || !run.running(), 60_000) };
}

describe('a command waiting for the index says who holds it', () => {
  let scratch: string;
  let root: string;
  let env: Record<string, string>;
  const holders: ChildProcess[] = [];

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-idxwait-'));
    root = path.join(scratch, 'root');
    env = { LAYERFS_ROOT: root, LAYERFS_ROLE: 'writer' };
    await cliOk(['image', 'ls'], env); // make the root and its index
  });

  after(async () => {
    for (const h of holders) if (h.exitCode === null && h.signalCode === null) h.kill('SIGKILL');
    await rm(scratch, { recursive: true, force: true });
  });

  async function hold(purpose: string, holderFile = true) {
    const h = holdIndex(root, purpose, holderFile);
    holders.push(h.child);
    await h.held;
    assert.ok(h.run.running(), `the holder runs: ${h.run.stderr()}`);
    return h;
  }

  test('named at once, then a timeout naming the holder', async () => {
    const h = await hold('image import big.tar');
    try {
      const rec = JSON.parse(await readFile(path.join(root, 'index.holder'), 'utf8'));
      assert.equal(rec.pid, h.child.pid);
      assert.equal(rec.host, os.hostname());
      assert.equal(rec.command, 'image import big.tar');
      const heldBy = `held by pid ${h.child.pid} on host ${os.hostname()} since ${rec.since} (image import big.tar)`;
      const r = watch(cliSpawn(['image', 'ls'], { ...env, LAYERFS_INDEX_WAIT_MS: '4000' }));
      await waitUntil('the waiting message', () => r.stderr().includes('waiting for'), 30_000);
      assert.ok(r.running(), 'told while still waiting');
      assert.equal(r.stderr(), `layerfs: waiting for the index ${path.join(root, 'index')}, ${heldBy}\n`);
      assert.notEqual(await r.exited, 0);
      assert.match(r.stderr(), new RegExp(`\\nlayerfs: ${esc(path.join(root, 'index'))}: gave up after 4 s waiting for the index ${esc(path.join(root, 'index'))}, ${esc(heldBy)}\\n$`));
      assert.equal(r.stdout(), '');
    } finally {
      h.child.stdin!.end();
      await h.run.exited;
    }
    await assert.rejects(readFile(path.join(root, 'index.holder')), 'the holder file goes with the holder');
  });

  test('repeated every 10 s, and the command proceeds once the holder lets go', async () => {
    const h = await hold('layerfs daemon: scan');
    const r = watch(cliSpawn(['image', 'ls', '--json'], { ...env, LAYERFS_INDEX_WAIT_MS: '120000' }));
    try {
      await waitUntil('the waiting message', () => r.stderr().includes('waiting for'), 30_000);
      await waitUntil('the repeated message', () => r.stderr().includes('still waiting'), 40_000);
      assert.match(r.stderr(), new RegExp(`^layerfs: waiting for the index .*, held by pid ${h.child.pid} .*\\(layerfs daemon: scan\\)\\nlayerfs: still waiting \\(10 s of 120 s\\) for the index .*, held by pid ${h.child.pid} `));
      assert.ok(r.running());
    } finally {
      h.child.stdin!.end();
      await h.run.exited;
    }
    assert.equal(await r.exited, 0, r.stderr());
    assert.deepEqual(JSON.parse(r.stdout()), []);
  });

  test("a dead holder's file is ignored", async () => {
    // a holder file left by a process that is gone (a crash), while another process (recording nothing) holds the index
    const dead = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => dead.on('close', r));
    await writeFile(path.join(root, 'index.holder'), JSON.stringify({ pid: dead.pid, host: os.hostname(), since: new Date().toISOString(), command: 'crashed', purpose: 'crashed' }));
    const h = await hold('unrecorded', false);
    try {
      const r = watch(cliSpawn(['image', 'ls'], { ...env, LAYERFS_INDEX_WAIT_MS: '3000' }));
      assert.notEqual(await r.exited, 0);
      assert.doesNotMatch(r.stderr(), new RegExp(`pid ${dead.pid}\\b|crashed`));
      assert.match(r.stderr(), /gave up after 3 s waiting for the index .*, held by another process \(no live holder recorded\)\n$/);
    } finally {
      h.child.stdin!.end();
      await h.run.exited;
    }
  });
});
