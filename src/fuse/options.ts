/** fuse-overlayfs' command line: `-o lowerdir=A:B,upperdir=U,workdir=W[,...] MNT` (lowerdir leftmost = top). */
import { LayerfsError } from '../common/errors.js';

export interface MountConfig {
  /** Lower dirs, top first. */
  lowerdirs: string[];
  upperdir?: string;
  workdir?: string;
  mountpoint: string;
  fsname?: string;
  attrTimeout?: number;
  entryTimeout?: number;
  debug?: boolean;
  /** direct (/dev/fuse spoken here) or fuse-native (libfuse 2); default: defaultTransport(). */
  transport?: Transport;
  /** FUSE passthrough (direct transport, kernel 6.9+): opened regular files are read and written by the kernel
   *  straight from their backing file. `-o passthrough`, or env LAYERFS_FUSE_PASSTHROUGH=1. */
  passthrough?: boolean;
  /** Options we pass through to libfuse as they are (e.g. allow_root). */
  extra: string[];
}

export type Transport = 'direct' | 'fuse-native';
export const TRANSPORTS: readonly Transport[] = ['direct', 'fuse-native'];

export function parseTransport(v: string): Transport {
  if (v === 'direct' || v === 'fuse-native') return v;
  throw new LayerfsError('EUSAGE', 'fuse', `unknown transport ${JSON.stringify(v)} (direct or fuse-native)`);
}

/** `direct` when this process may mount(2) (root), `fuse-native` otherwise; env LAYERFS_FUSE_TRANSPORT overrides. */
export function defaultTransport(): Transport {
  const env = process.env.LAYERFS_FUSE_TRANSPORT;
  if (env) return parseTransport(env);
  return process.getuid?.() === 0 ? 'direct' : 'fuse-native';
}

const IGNORED = new Set(['rw', 'allow_other', 'default_permissions', 'suid', 'dev', 'exec', 'nosuid', 'nodev', 'noexec', 'noatime', 'relatime', 'squash_to_root', 'noacl', 'static_nlink', 'fast_ino', 'xino', 'volatile', 'threaded', 'writeback', 'redirect_dir', 'index', 'metacopy', 'userxattr', 'context', 'plugins', 'timeout', 'uidmapping', 'gidmapping']);
const PASSTHROUGH = new Set(['allow_root', 'auto_unmount', 'max_read', 'blksize']);

/** lowerdir value: ':'-separated, '\:' escapes a colon. */
export function splitLowerdirs(v: string): string[] {
  return v.split(/(?<!\\):/).map((s) => s.replace(/\\:/g, ':')).filter((s) => s !== '');
}

/** Parse one or more -o strings into a mount config. */
export function parseMountOptions(opts: string[], mountpoint: string): MountConfig {
  const cfg: MountConfig = { lowerdirs: [], mountpoint, extra: [] };
  for (const o of opts.flatMap((s) => s.split(','))) {
    if (!o) continue;
    const eq = o.indexOf('=');
    const key = eq < 0 ? o : o.slice(0, eq);
    const val = eq < 0 ? '' : o.slice(eq + 1);
    switch (key) {
      case 'lowerdir':
        cfg.lowerdirs = splitLowerdirs(val);
        break;
      case 'upperdir':
        cfg.upperdir = val;
        break;
      case 'workdir':
        cfg.workdir = val;
        break;
      case 'fsname':
        cfg.fsname = val;
        break;
      case 'attr_timeout':
        cfg.attrTimeout = Number(val);
        break;
      case 'entry_timeout':
        cfg.entryTimeout = Number(val);
        break;
      case 'transport':
        cfg.transport = parseTransport(val);
        break;
      case 'debug':
        cfg.debug = true;
        break;
      case 'passthrough':
        cfg.passthrough = true;
        break;
      case 'ro':
        cfg.upperdir = undefined;
        cfg.workdir = undefined;
        break;
      default:
        if (PASSTHROUGH.has(key)) cfg.extra.push(o);
        else if (!IGNORED.has(key)) throw new LayerfsError('EUSAGE', 'fuse', `unknown mount option ${JSON.stringify(o)}`);
    }
  }
  if (cfg.lowerdirs.length === 0) throw new LayerfsError('EUSAGE', 'fuse', 'no lowerdir= given');
  if (cfg.upperdir && !cfg.workdir) throw new LayerfsError('EUSAGE', 'fuse', 'upperdir= needs workdir=');
  if (!mountpoint) throw new LayerfsError('EUSAGE', 'fuse', 'no mount point given');
  for (const t of [cfg.attrTimeout, cfg.entryTimeout]) if (t !== undefined && !(t >= 0)) throw new LayerfsError('EUSAGE', 'fuse', 'bad timeout');
  return cfg;
}

/** The -o string for a config (what the server process is given). */
export function formatMountOptions(c: { lowerdirs: string[]; upperdir?: string; workdir?: string; transport?: Transport; passthrough?: boolean }): string {
  const esc = (p: string) => p.replace(/:/g, '\\:');
  const parts = [`lowerdir=${c.lowerdirs.map(esc).join(':')}`];
  if (c.upperdir) parts.push(`upperdir=${c.upperdir}`);
  if (c.workdir) parts.push(`workdir=${c.workdir}`);
  if (c.transport) parts.push(`transport=${c.transport}`);
  if (c.passthrough) parts.push('passthrough');
  for (const p of [...c.lowerdirs, c.upperdir ?? '', c.workdir ?? '']) {
    if (p.includes(',')) throw new LayerfsError('EUSAGE', 'fuse', `path with a comma: ${p}`);
  }
  return parts.join(',');
}

/** The server process's own arguments (after its entry script): `[-f] [-d] [--ready-fd N] [--transport T] -o OPTS MNT`. */
export interface ServerArgs {
  foreground: boolean;
  debug: boolean;
  readyFd?: number;
  opts: string[];
  positional: string[];
}

export function parseServerArgs(argv: string[]): ServerArgs {
  const a: ServerArgs = { foreground: false, debug: false, opts: [], positional: [] };
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
