/**
 * Start a mount server as its own detached process (one process per mount, like fuse-overlayfs) and wait for it
 * to report over a pipe (fd 3) that the mount is ready, or why it failed.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LayerfsError } from '../common/errors.js';
import { native } from '../common/native.js';
import { SERVER_POOL_SIZE } from './transport/direct/threadpool.js';

/** The compiled server entry beside this module (dist/src/fuse/server-main.js). */
export const SERVER_MAIN = fileURLToPath(new URL('./server-main.js', import.meta.url));

export interface ReadyMessage {
  ready?: boolean;
  pid?: number;
  error?: string;
}

/**
 * V8 flags of a server process. The young generation's semi-spaces (16 MiB each by default) are most of a server's
 * RSS above its live data; 2 MiB ones and V8's size-over-speed heuristics bring the peak of a walk of the
 * bench-fuse dataset (48k nodes) from ~140 to ~100 MiB, with no change in its times beyond the noise.
 */
export const SERVER_NODE_ARGS = ['--max-semi-space-size=2', '--optimize-for-size'];

/** `args`: the server's command line after `-f` (e.g. ['-o', 'lowerdir=...', MNT]). */
export async function spawnServer(args: string[], opts: { timeoutMs?: number } = {}): Promise<{ pid: number }> {
  const logFile = process.env.LAYERFS_FUSE_LOG;
  const errFd = logFile ? openSync(logFile, 'a') : 'ignore';
  let child;
  try {
    // LAYERFS_FUSE_NODE_ARGS: extra node flags for the server process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof")
    // the server outlives this process: it must hold none of our files (the index's LevelDB files above all: Node's
    // own fds are close-on-exec, LevelDB's are not). The stdio mapping below dups what the child gets anyway.
    native.cloexecFrom(3);
    const nodeArgs = [...SERVER_NODE_ARGS, ...(process.env.LAYERFS_FUSE_NODE_ARGS ?? '').split(/\s+/).filter(Boolean)];
    child = spawn(process.execPath, [...nodeArgs, SERVER_MAIN, '-f', '--ready-fd', '3', ...args], {
      detached: true,
      // the direct transport's reads of /dev/fuse wait on libuv's pool: give it room (read at process start only)
      // MALLOC_ARENA_MAX=1: one glibc malloc arena for all threads. libfuse's thread (fuse-native) otherwise gets an
      // arena of its own whose fragments stay resident: a walk of 48k entries peaks at 110 MiB with it, 101 without
      env: {
        ...process.env,
        UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? String(SERVER_POOL_SIZE),
        MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1',
      },
      stdio: ['ignore', 'ignore', errFd, 'pipe'],
    });
  } finally {
    if (typeof errFd === 'number') closeSync(errFd);
  }
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const msg = await new Promise<ReadyMessage>((resolve) => {
    let buf = '';
    const timer = setTimeout(() => resolve({ error: 'the server did not report ready in time' }), opts.timeoutMs ?? 30_000);
    const done = (m: ReadyMessage) => {
      clearTimeout(timer);
      resolve(m);
    };
    pipe.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        try {
          done(JSON.parse(buf.slice(0, nl)) as ReadyMessage);
        } catch {
          done({ error: `bad ready message ${JSON.stringify(buf.slice(0, nl))}` });
        }
      }
    });
    pipe.on('error', () => undefined);
    child.once('exit', (code, sig) => done({ error: `the server exited (${sig ?? `code ${code}`}) before the mount was ready` }));
    child.once('error', (err) => done({ error: err.message }));
  });
  (pipe as unknown as { destroy(): void }).destroy();
  if (!msg.ready) {
    if (child.exitCode === null) child.kill('SIGKILL');
    throw new LayerfsError('EMOUNT', 'fuse', msg.error ?? 'unknown failure');
  }
  child.unref();
  return { pid: child.pid! };
}
