/**
 * The FUSE server process: `server-main.js [-f] [-d] [--ready-fd N] [--transport direct|fuse-native] -o lowerdir=A:B,upperdir=U,workdir=W MNT`.
 * With -f it serves in the foreground until unmounted; without, it starts itself detached and returns when the
 * mount is ready. With --ready-fd it reports {"ready":true,"pid":N} or {"error":"..."} as one JSON line on that fd.
 */
import { closeSync, writeSync } from 'node:fs';
import { parseMountOptions, parseServerArgs } from './options.js';
import { serve } from './server.js';
import { spawnServer } from './spawn.js';

function report(fd: number | undefined, msg: object): void {
  if (fd === undefined) return;
  try {
    writeSync(fd, JSON.stringify(msg) + '\n');
    closeSync(fd);
  } catch {
    // the starter went away: nothing to tell
  }
}

export async function serverMain(argv: string[]): Promise<void> {
  const a = parseServerArgs(argv);
  const mnt = a.positional[a.positional.length - 1] ?? '';
  try {
    const cfg = parseMountOptions(a.opts, mnt);
    if (a.debug) cfg.debug = true;
    if (!a.foreground) {
      await spawnServer(argv);
      return;
    }
    const h = await serve(cfg);
    report(a.readyFd, { ready: true, pid: process.pid });
    await h.done;
    process.exit(0);
  } catch (err) {
    const why = err instanceof Error ? err.message.replace(/^fuse: /, '') : String(err);
    report(a.readyFd, { error: why });
    process.stderr.write(`layerfs: fuse: ${why}\n`);
    process.exit(1);
  }
}


