/**
 * Start a mount server as its own detached process (one process per mount, like fuse-overlayfs) and wait for it
 * to report over a pipe (fd 3) that the mount is ready, or why it failed.
 *
 * Spare servers (issue #16 item 10): a long-lived starter (`layerfs snapshotter --driver fuse`) keeps a server
 * process (LAYERFS_FUSE_SPARES: that many) started ahead (`server-main.js --spare`: node booted, every module loaded, waiting on its stdin), so a
 * mount costs the mount's own work, not a node start-up (~0.5 s here). The spare gets its command line as one JSON
 * line on stdin and records it in spareArgsFile(pid) (its /proc cmdline says only `--spare`: listServers reads the
 * file); then it serves like any server, and outlives its starter the same way. A spare whose starter goes away
 * before giving it a mount sees EOF and exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LayerfsError } from '../common/errors.js';
import { native } from '../common/native.js';
import { SERVER_POOL_SIZE } from './transport/direct/threadpool.js';

/** The compiled server entry beside this module (dist/src/fuse/server-main.js). */
export const SERVER_MAIN = fileURLToPath(new URL('./server-main.js', import.meta.url));

export interface ReadyMessage {
  ready?: boolean;
  /** A spare server says so once it has loaded everything (then waits for its mount). */
  spare?: boolean;
  pid?: number;
  error?: string;
}

/**
 * V8 flags of a server process. The young generation's semi-spaces (16 MiB each by default) are most of a server's
 * RSS above its live data; 2 MiB ones and V8's size-over-speed heuristics bring the peak of a walk of the
 * bench-fuse dataset (48k nodes) from ~140 to ~100 MiB, with no change in its times beyond the noise.
 */
export const SERVER_NODE_ARGS = ['--max-semi-space-size=2', '--optimize-for-size'];

/** Where a spare server records the command line it was given (one file per pid, arguments NUL-separated). */
export function spareArgsDir(): string {
  if (process.env.LAYERFS_FUSE_RUN_DIR) return process.env.LAYERFS_FUSE_RUN_DIR;
  const uid = process.getuid?.() ?? 0;
  return uid === 0 ? '/run/layerfs/fuse-servers' : path.join(os.tmpdir(), `layerfs-${uid}`, 'fuse-servers');
}

export function spareArgsFile(pid: number): string {
  return path.join(spareArgsDir(), String(pid));
}

function startProcess(serverArgs: string[], stdin: 'ignore' | 'pipe'): ChildProcess {
  const logFile = process.env.LAYERFS_FUSE_LOG;
  const errFd = logFile ? openSync(logFile, 'a') : 'ignore';
  try {
    // LAYERFS_FUSE_NODE_ARGS: extra node flags for the server process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof")
    // the server outlives this process: it must hold none of our files (the index's LevelDB files above all: Node's
    // own fds are close-on-exec, LevelDB's are not). The stdio mapping below dups what the child gets anyway.
    native.cloexecFrom(3);
    const nodeArgs = [...SERVER_NODE_ARGS, ...(process.env.LAYERFS_FUSE_NODE_ARGS ?? '').split(/\s+/).filter(Boolean)];
    return spawn(process.execPath, [...nodeArgs, SERVER_MAIN, ...serverArgs], {
      detached: true,
      // the direct transport's reads of /dev/fuse wait on libuv's pool: give it room (read at process start only)
      // MALLOC_ARENA_MAX=1: one glibc malloc arena for all threads. libfuse's thread (fuse-native) otherwise gets an
      // arena of its own whose fragments stay resident: a walk of 48k entries peaks at 110 MiB with it, 101 without
      env: {
        ...process.env,
        UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? String(SERVER_POOL_SIZE),
        MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1',
      },
      stdio: [stdin, 'ignore', errFd, 'pipe'],
    });
  } finally {
    if (typeof errFd === 'number') closeSync(errFd);
  }
}

/** Spares kept ahead (LAYERFS_FUSE_SPARES, default 1; 0 turns them off even where a starter asks for them). */
const SPARES = Math.max(0, Number(process.env.LAYERFS_FUSE_SPARES ?? 1) || 0);
let sparesOn = false;
/** Oldest first (the first is the likeliest to have loaded). */
const spares: { child: ChildProcess; loaded: Promise<void> }[] = [];

/** Keep spare servers started ahead for this process's mounts (on), or stop the idle ones (off). */
export function useSpareServers(on: boolean): void {
  sparesOn = on && SPARES > 0;
  if (sparesOn) startSpares();
  else for (const s of spares.splice(0)) s.child.kill('SIGTERM');
}

function dropSpare(child: ChildProcess): void {
  const i = spares.findIndex((s) => s.child === child);
  if (i >= 0) spares.splice(i, 1);
}

function startSpares(): void {
  while (sparesOn && spares.length < SPARES) {
    let child: ChildProcess;
    try {
      child = startProcess(['--spare'], 'pipe');
    } catch {
      return;
    }
    child.once('exit', () => dropSpare(child));
    child.once('error', () => dropSpare(child));
    child.stdin!.on('error', () => undefined);
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    const loaded = new Promise<void>((resolve) => {
      const onData = (d: Buffer) => {
        if (!d.toString().includes('"spare"')) return;
        pipe.off('data', onData);
        resolve();
      };
      pipe.on('data', onData);
      child.once('exit', () => resolve());
    });
    spares.push({ child, loaded });
    // an idle spare keeps nothing of ours alive
    child.unref();
    (child.stdin as unknown as { unref?(): void }).unref?.();
    (pipe as unknown as { unref?(): void }).unref?.();
  }
}

/** Resolves once every current spare has loaded everything and waits for a mount (benchmarks, tests). */
export async function spareReady(): Promise<void> {
  const now = [...spares];
  const pipes = now.map((s) => s.child.stdio[3] as unknown as { ref?(): void; unref?(): void });
  for (const p of pipes) p.ref?.(); // wait with the loop alive
  try {
    await Promise.all(now.map((s) => s.loaded));
  } finally {
    for (let i = 0; i < now.length; i++) if (spares.includes(now[i]!)) pipes[i]!.unref?.();
  }
}

function waitReady(child: ChildProcess, timeoutMs: number): Promise<ReadyMessage> {
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  (pipe as unknown as { ref?(): void }).ref?.();
  return new Promise<ReadyMessage>((resolve) => {
    let buf = '';
    const timer = setTimeout(() => done({ error: 'the server did not report ready in time' }), timeoutMs);
    const onExit = (code: number | null, sig: string | null) => done({ error: `the server exited (${sig ?? `code ${code}`}) before the mount was ready` });
    const onError = (err: Error) => done({ error: err.message });
    const done = (m: ReadyMessage) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('error', onError);
      resolve(m);
    };
    pipe.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let m: ReadyMessage;
        try {
          m = JSON.parse(line) as ReadyMessage;
        } catch {
          done({ error: `bad ready message ${JSON.stringify(line)}` });
          return;
        }
        if (m.spare) continue; // a spare's "loaded": its mount's answer comes next
        done(m);
        return;
      }
    });
    pipe.on('error', () => undefined);
    child.once('exit', onExit);
    child.once('error', onError);
    if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode, child.signalCode);
  });
}

/** `args`: the server's command line after `-f` (e.g. ['-o', 'lowerdir=...', MNT]). */
export async function spawnServer(args: string[], opts: { timeoutMs?: number } = {}): Promise<{ pid: number }> {
  const serverArgs = ['-f', '--ready-fd', '3', ...args];
  let child: ChildProcess;
  const s = spares.shift()?.child;
  if (s && s.exitCode === null && s.signalCode === null && s.stdin?.writable) {
    child = s;
    s.stdin.end(JSON.stringify({ argv: serverArgs }) + '\n');
    (s as unknown as { ref(): void }).ref();
  } else {
    child = startProcess(serverArgs, 'ignore');
  }
  const msg = await waitReady(child, opts.timeoutMs ?? 30_000);
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
  // the next mount's spare starts now, while this one is served
  startSpares();
  if (!msg.ready) {
    if (child.exitCode === null) child.kill('SIGKILL');
    throw new LayerfsError('EMOUNT', 'fuse', msg.error ?? 'unknown failure');
  }
  child.unref();
  return { pid: child.pid! };
}
