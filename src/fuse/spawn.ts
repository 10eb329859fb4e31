/**
 * Start a mount server as its own detached process (one process per mount, like fuse-overlayfs) and wait for it
 * to report over a pipe (fd 3) that the mount is ready, or why it failed.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LayerfsError } from '../common/errors.js';
import { SERVER_POOL_SIZE } from './transport/direct/threadpool.js';

/** The compiled server entry beside this module (dist/src/fuse/server-main.js). */
export const SERVER_MAIN = fileURLToPath(new URL('./server-main.js', import.meta.url));

export interface ReadyMessage {
  ready?: boolean;
  pid?: number;
  error?: string;
}

/** `args`: the server's command line after `-f` (e.g. ['-o', 'lowerdir=...', MNT]). */
export async function spawnServer(args: string[], opts: { timeoutMs?: number } = {}): Promise<{ pid: number }> {
  const logFile = process.env.LAYERFS_FUSE_LOG;
  const errFd = logFile ? openSync(logFile, 'a') : 'ignore';
  let child;
  try {
    // LAYERFS_FUSE_NODE_ARGS: extra node flags for the server process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof")
    const nodeArgs = (process.env.LAYERFS_FUSE_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
    child = spawn(process.execPath, [...nodeArgs, SERVER_MAIN, '-f', '--ready-fd', '3', ...args], {
      detached: true,
      // the direct transport's reads of /dev/fuse wait on libuv's pool: give it room (read at process start only)
      env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? String(SERVER_POOL_SIZE) },
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
