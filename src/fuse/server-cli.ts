/**
 * The FUSE server process: `server-main.js [-f] [-d] [--ready-fd N] [--transport direct|fuse-native] -o lowerdir=A:B,upperdir=U,workdir=W MNT`.
 * With -f it serves in the foreground until unmounted; without, it starts itself detached and returns when the
 * mount is ready. With --ready-fd it reports {"ready":true,"pid":N} or {"error":"..."} as one JSON line on that fd.
 */
import { closeSync, mkdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { logger } from '../common/log.js';
import { native } from '../common/native.js';
import { parseMountOptions, parseServerArgs } from './options.js';
import { serve } from './server.js';
import { spareArgsDir, spareArgsFile, spawnServer } from './spawn.js';

function report(fd: number | undefined, msg: object): void {
  if (fd === undefined) return;
  try {
    writeSync(fd, JSON.stringify(msg) + '\n');
    closeSync(fd);
  } catch {
    // the starter went away: nothing to tell
  }
}

/** The first line on stdin, or null at EOF without one. */
function readLine(): Promise<string | null> {
  return new Promise((resolve) => {
    let buf = '';
    const input = process.stdin;
    const finish = (v: string | null) => {
      input.removeAllListeners('data');
      input.pause();
      input.destroy();
      resolve(v);
    };
    input.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) finish(buf.slice(0, nl));
    });
    input.on('end', () => finish(null));
    input.on('error', () => finish(null));
  });
}

/**
 * `--spare`: a server started ahead of its mount (spawn.ts): everything is loaded; wait for the mount's command
 * line on stdin, record it where listServers finds it (our /proc cmdline says only --spare), then serve.
 */
async function spareMain(): Promise<void> {
  const file = spareArgsFile(process.pid);
  rmSync(file, { force: true }); // a former process of this pid's
  logger(); // the logger's set-up is part of what a spare does ahead
  void native;
  try {
    writeSync(3, JSON.stringify({ spare: true }) + '\n'); // loaded (the ready line on fd 3 follows the mount)
  } catch {
    // the starter went away: the read below sees EOF
  }
  const line = await readLine();
  if (line === null) process.exit(0); // its starter went away
  const argv = (JSON.parse(line) as { argv: string[] }).argv;
  try {
    mkdirSync(spareArgsDir(), { recursive: true, mode: 0o700 });
    writeFileSync(file, argv.join('\0'));
    process.on('exit', () => rmSync(file, { force: true }));
  } catch (err) {
    process.stderr.write(`layerfs: fuse: cannot record the server's arguments in ${file}: ${(err as Error).message}\n`);
  }
  await serverMain(argv);
}

export async function serverMain(argv: string[]): Promise<void> {
  if (argv[0] === '--spare') return spareMain();
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


