/**
 * The FUSE server process: `server-main.js [-f] [-d] [--ready-fd N] [--transport direct|fuse-native] -o lowerdir=A:B,upperdir=U,workdir=W MNT`.
 * With -f it serves in the foreground until unmounted; without, it starts itself detached and returns when the
 * mount is ready. With --ready-fd it reports {"ready":true,"pid":N} or {"error":"..."} as one JSON line on that fd.
 */
import { closeSync, writeSync } from 'node:fs';
import { parseMountOptions } from './options.js';
import { serve } from './server.js';
import { spawnServer } from './spawn.js';

interface Args {
  foreground: boolean;
  debug: boolean;
  readyFd?: number;
  opts: string[];
  positional: string[];
}

export function parseArgs(argv: string[]): Args {
  const a: Args = { foreground: false, debug: false, opts: [], positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === '-f') a.foreground = true;
    else if (v === '-d') a.debug = a.foreground = true;
    else if (v === '--ready-fd') a.readyFd = Number(argv[++i]);
    else if (v === '--transport') a.opts.push(`transport=${argv[++i] ?? ''}`);
    else if (v.startsWith('--transport=')) a.opts.push(`transport=${v.slice('--transport='.length)}`);
    else if (v === '-o') a.opts.push(argv[++i] ?? '');
    else if (v.startsWith('-o')) a.opts.push(v.slice(2));
    else a.positional.push(v);
  }
  return a;
}

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
  const a = parseArgs(argv);
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


