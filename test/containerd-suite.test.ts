/**
 * containerd's own snapshotter conformance suite (snapshots/testsuite, issue #16) against
 * `layerfs snapshotter` with each driver, through containerd's proxy client, and against
 * containerd's overlayfs snapshotter as the control. test/go/snapsuite_test.go is compiled here,
 * offline, in GOPATH mode from Debian's packaged containerd sources
 * (golang-github-containerd-containerd-dev, golang-go: scripts/setup.sh); the same binary also
 * runs our own checks of issue #16's items (TestCommitWhileMounted, TestTimesWithinRequest).
 * Every case starts its own snapshotter with its own root and shared store under a temp dir,
 * and unmounts what it mounted; `after` unmounts anything a crash left.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cliEntry, repoRoot } from './lib/cli.js';
import { forceUnmount } from './lib/mounts.js';

const GOCODE = '/usr/share/gocode';
const SUITE_SRC = path.join(GOCODE, 'src/github.com/containerd/containerd/snapshots/testsuite');
let scratch: string;
let bin: string;
let buildSecs = 0;

interface Outcome {
  /** case name -> PASS / FAIL / SKIP and seconds */
  cases: Map<string, { result: string; secs: number }>;
  /** failure messages (the suite's own lines, without its directory dumps) */
  messages: string[];
  code: number | null;
  secs: number;
}

function runProc(cmd: string, args: string[], env: Record<string, string>, cwd: string, logFile: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.on('data', (b: Buffer) => (out += b.toString()));
    p.on('error', reject);
    p.on('close', (code) => void writeFile(logFile, out).then(() => resolve({ code, out })));
  });
}

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-snapsuite-'));
  const gopath = path.join(scratch, 'gopath');
  const pkg = path.join(gopath, 'src', 'layerfs', 'snapsuite');
  await mkdir(pkg, { recursive: true });
  await copyFile(path.join(repoRoot, 'test', 'go', 'snapsuite_test.go'), path.join(pkg, 'snapsuite_test.go'));
  await readFile(path.join(SUITE_SRC, 'testsuite.go')).catch(() => {
    throw new Error(`containerd's snapshots/testsuite is not at ${SUITE_SRC}: apt-get install golang-go golang-github-containerd-containerd-dev (scripts/setup.sh)`);
  });
  bin = path.join(scratch, 'snapsuite.test');
  // offline: GOPATH mode over the packaged sources; the build cache (~/.cache/go-build) makes
  // later builds take seconds (the first one, a minute or two)
  const t0 = performance.now();
  const r = await runProc('go', ['test', '-c', '-o', bin, '.'], { GO111MODULE: 'off', GOPATH: `${gopath}:${GOCODE}`, GOFLAGS: '', GOPROXY: 'off' }, pkg, path.join(scratch, 'build.log'));
  assert.equal(r.code, 0, `go test -c failed:\n${r.out}`);
  buildSecs = (performance.now() - t0) / 1000;
});

after(async () => {
  if (!scratch) return;
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  const mps = table
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(scratch + '/'))
    .sort()
    .reverse();
  for (const m of mps) await forceUnmount(m).catch(() => undefined);
  if (!process.env.LAYERFS_TEST_KEEP) await rm(scratch, { recursive: true, force: true });
});

async function runSuite(name: string, env: Record<string, string>): Promise<Outcome> {
  const tmp = path.join(scratch, name);
  await mkdir(tmp, { recursive: true });
  const t0 = performance.now();
  // two cases at a time (the suite marks them parallel): the machine has 2 cores
  const r = await runProc(bin, ['-test.v', '-test.parallel', '2', '-test.timeout', '20m'], { TMPDIR: tmp, SNAPSUITE_CLI: cliEntry, ...env }, tmp, path.join(scratch, `${name}.log`));
  const cases = new Map<string, { result: string; secs: number }>();
  const messages: string[] = [];
  for (const line of r.out.split('\n')) {
    const m = /^\s*--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)/.exec(line);
    if (m) {
      if (m[2] !== 'TestSnapshotterSuite') cases.set(m[2]!.replace(/^TestSnapshotterSuite\//, ''), { result: m[1]!, secs: Number(m[3]) });
      continue;
    }
    // the suite's and our messages, not testutil.DumpDirOnFailure's listing (helpers.go)
    if (/^\s+\S+\.go:\d+: /.test(line) && !/^\s+helpers\.go:\d+: /.test(line)) messages.push(line.trim());
  }
  return { cases, messages, code: r.code, secs: (performance.now() - t0) / 1000 };
}

function report(o: Outcome): string {
  const rows = [...o.cases].map(([n, c]) => `${c.result} ${n} (${c.secs}s)`);
  return `${rows.join('\n')}\n${o.messages.join('\n')}`;
}

function passed(o: Outcome): string[] {
  return [...o.cases].filter(([, c]) => c.result === 'PASS').map(([n]) => n);
}

/** The suite's cases (20 in containerd 1.6, and Rename, which the suite itself skips: "still fails on some kernels with overlay"). */
function suiteCases(o: Outcome): [string, { result: string; secs: number }][] {
  return [...o.cases].filter(([n]) => !n.startsWith('Test'));
}

test("control: containerd's overlayfs snapshotter passes its own suite", async (t) => {
  const o = await runSuite('control', { SNAPSUITE_TARGET: 'overlayfs' });
  t.diagnostic(`suite built in ${buildSecs.toFixed(1)} s; control: ${passed(o).length} passed in ${o.secs.toFixed(1)} s`);
  const cases = suiteCases(o);
  assert.ok(cases.length >= 20, report(o));
  assert.deepEqual(
    cases.filter(([, c]) => c.result === 'FAIL').map(([n]) => n),
    [],
    report(o),
  );
});

for (const driver of ['overlay', 'fuse'] as const) {
  test(`layerfs snapshotter --driver ${driver} passes containerd's snapshotter suite, commit while mounted and nanosecond times`, async (t) => {
    const o = await runSuite(`layerfs-${driver}`, { SNAPSUITE_TARGET: 'layerfs', SNAPSUITE_DRIVER: driver });
    const cases = suiteCases(o);
    t.diagnostic(`--driver ${driver}: suite ${cases.filter(([, c]) => c.result === 'PASS').length}/${cases.filter(([, c]) => c.result !== 'SKIP').length} passed in ${o.secs.toFixed(1)} s; 128LayersMount ${o.cases.get('128LayersMount')?.secs ?? '?'} s`);
    assert.ok(cases.length >= 20, report(o));
    const failed = [...o.cases].filter(([, c]) => c.result === 'FAIL').map(([n]) => n);
    assert.deepEqual(failed, [], report(o));
    for (const own of ['TestCommitWhileMounted', 'TestTimesWithinRequest']) assert.equal(o.cases.get(own)?.result, 'PASS', `${own}\n${report(o)}`);
    assert.equal(o.code, 0, report(o));
  });
}
