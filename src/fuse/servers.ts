/**
 * The FUSE server processes running on this host, found by their command lines (/proc/<pid>/cmdline), as spawnServer
 * starts them: `node [node flags] .../server-main.js -f --ready-fd 3 -o lowerdir=...,upperdir=... MNT`. The mount
 * table says only `fuse.layerfs` for a mount of ours; which dirs it serves is in its server's arguments (a server
 * started as a spare, `server-main.js --spare`, recorded them in spareArgsFile(pid)). Reads /proc (and those
 * files) only: never touches a mount.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { processAlive } from '../common/proc.js';
import { parseMountOptions, parseServerArgs } from './options.js';
import { SERVER_MAIN, spareArgsFile } from './spawn.js';

export interface ServerProcess {
  pid: number;
  /** The mount point as the server was given it (absolute: startFuseMount resolves it). */
  mountpoint: string;
  /** Lower dirs, top first. */
  lowerdirs: string[];
  upperdir?: string;
  workdir?: string;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22): the newest of two servers of one mount point wins. */
  started: number;
}

/** The entry script's name; any install of layerfs counts (its paths say whose mounts it serves). */
const ENTRY = path.basename(SERVER_MAIN);

/** The argument list of a server process, or null for any other process. */
export function serverOfCmdline(argv: string[]): Omit<ServerProcess, 'pid' | 'started'> | null {
  const at = argv.findIndex((a, i) => i > 0 && path.basename(a) === ENTRY);
  if (at < 0) return null;
  const a = parseServerArgs(argv.slice(at + 1));
  // without -f it is the short-lived launcher (`layerfs fuse` without -f); the serving child has -f
  if (!a.foreground) return null;
  const mnt = a.positional.at(-1);
  if (!mnt) return null;
  try {
    const cfg = parseMountOptions(a.opts, mnt);
    return {
      mountpoint: path.resolve(mnt),
      lowerdirs: cfg.lowerdirs,
      ...(cfg.upperdir ? { upperdir: cfg.upperdir } : {}),
      ...(cfg.workdir ? { workdir: cfg.workdir } : {}),
    };
  } catch {
    return null;
  }
}

/** The live layerfs FUSE server processes visible here. */
export async function listServers(): Promise<ServerProcess[]> {
  const out: ServerProcess[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!raw.includes(ENTRY)) continue;
    let argv = raw.split('\0');
    if (argv.at(-1) === '') argv.pop();
    const at = argv.findIndex((a, i) => i > 0 && path.basename(a) === ENTRY);
    if (at > 0 && argv[at + 1] === '--spare') {
      // a server started as a spare (spawn.ts): its mount's arguments are in a file; none yet: an idle spare
      const args = await readFile(spareArgsFile(pid), 'utf8').catch(() => null);
      if (args === null) continue;
      argv = [...argv.slice(0, at + 1), ...args.split('\0')];
    }
    const s = serverOfCmdline(argv);
    if (!s || !processAlive(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // "pid (comm) S ppid ..." : comm may hold spaces and ')'; field 22 is the 20th after the closing ')'
    const started = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? 0);
    out.push({ pid, ...s, started });
  }
  return out;
}
