/** Helpers for the FUSE tests: lower layers on disk, kernel and FUSE mounts, tree snapshots to compare. */
import { createHash } from 'node:crypto';
import { after } from 'node:test';
import { mkdir, mkdtemp, readdir, readFile, readlink, lstat, rm, writeFile, symlink, link } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mkWhiteout, native } from '../../src/common/native.js';
import { startFuseMount, stopFuseMount, isMounted, type Transport } from '../../src/fuse/index.js';
import { forceUnmount, run, waitProcessGone } from './mounts.js';

/** n deterministic bytes from a seed (xorshift32): file contents a test can check, not just nonzero. */
export function seededBytes(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

export async function tmpDir(tag: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `layerfs-${tag}-`));
}

export interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  hash?: string;
  target?: string;
  rdev?: number;
  nlink?: number;
  xattrs: Record<string, string>;
  mtimeMs?: number;
  mtimeNs?: string;
}

export interface SnapOptions {
  /** Compare st_nlink of non-dirs (default true) and of dirs (default false). */
  fileNlink?: boolean;
  dirNlink?: boolean;
  mtime?: boolean;
  /** Compare mtimes to the nanosecond (`unit`: 1000000n where a transport has only milliseconds) of the entries
   *  whose mtime is before `before` (ns since the epoch): times that came from the layers or were set explicitly,
   *  not from the clock while two mounts ran the same ops at different instants. Later ones show as 'clock'. */
  mtimeNs?: { before: bigint; unit?: bigint };
}

function typeOf(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  if (st.isFIFO()) return 'fifo';
  return 'sock';
}

function xattrsOf(p: string): Record<string, string> {
  const out: Record<string, string> = {};
  let names: string[] = [];
  try {
    names = native.llistxattr(p);
  } catch {
    return out;
  }
  for (const n of names.sort()) {
    if (n.startsWith('security.')) continue;
    try {
      out[n] = native.lgetxattr(p, n).toString('hex');
    } catch (err) {
      out[n] = `!${(err as { code?: string }).code}`;
    }
  }
  return out;
}

/** Every entry under root (async fs only: safe to run against a FUSE mount served by another process). */
export async function snapshot(root: string, o: SnapOptions = {}): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const walk = async (rel: string): Promise<void> => {
    const p = rel ? path.join(root, rel) : root;
    const st = await lstat(p);
    const type = typeOf(st);
    const e: Entry = { type, mode: st.mode, uid: st.uid, gid: st.gid, xattrs: xattrsOf(p) };
    if (type === 'file') {
      e.size = st.size;
      e.hash = createHash('sha256').update(await readFile(p)).digest('hex').slice(0, 16);
    }
    if (type === 'symlink') e.target = await readlink(p);
    if (type === 'chr' || type === 'blk') e.rdev = st.rdev;
    if ((type === 'dir' && o.dirNlink) || (type !== 'dir' && o.fileNlink !== false)) e.nlink = st.nlink;
    // whole milliseconds from the exact nanoseconds: st.mtimeMs is a double, and a time a few hundred ns below a
    // millisecond edge rounds up to the edge in it (so a view with ms times, fuse-native's, seemed 1 ms behind)
    if (o.mtime && type !== 'symlink') e.mtimeMs = Number((await lstat(p, { bigint: true })).mtimeNs / 1_000_000n);
    if (o.mtimeNs && type !== 'symlink') {
      const ns = (await lstat(p, { bigint: true })).mtimeNs;
      const unit = o.mtimeNs.unit ?? 1n;
      e.mtimeNs = ns < o.mtimeNs.before ? String((ns / unit) * unit) : 'clock';
    }
    out.set(rel || '.', e);
    if (type === 'dir') for (const name of (await readdir(p)).sort()) await walk(rel ? `${rel}/${name}` : name);
  };
  await walk('');
  return out;
}

/** Differences between two snapshots, as readable lines (empty when identical). */
export function diffSnapshots(a: Map<string, Entry>, b: Map<string, Entry>, la = 'a', lb = 'b'): string[] {
  const out: string[] = [];
  for (const [k, ea] of a) {
    const eb = b.get(k);
    if (!eb) out.push(`${k}: only in ${la}`);
    else if (JSON.stringify(ea) !== JSON.stringify(eb)) out.push(`${k}: ${la}=${JSON.stringify(ea)} ${lb}=${JSON.stringify(eb)}`);
  }
  for (const k of b.keys()) if (!a.has(k)) out.push(`${k}: only in ${lb}`);
  return out;
}

export interface Mounted {
  mnt: string;
  stop(): Promise<void>;
}

/** A kernel overlay mount; with an upper, `redirect_dir=off,index=off` unless `exact` asks for the configuration the
 *  FUSE overlay copies (`index=on,redirect_dir=on`: dir renames and shared lower hardlinks). */
export async function mountKernel(lowers: string[], mnt: string, upper?: string, work?: string, o2: { exact?: boolean } = {}): Promise<Mounted> {
  await mkdir(mnt, { recursive: true });
  let o = `lowerdir=${lowers.join(':')}`;
  if (upper) o += `,upperdir=${upper},workdir=${work},${o2.exact ? 'redirect_dir=on,index=on' : 'redirect_dir=off,index=off'},metacopy=off`;
  await run('mount', ['-t', 'overlay', 'overlay', '-o', o, mnt]);
  return { mnt, stop: () => forceUnmount(mnt) };
}

/** A transport as the shared tests name it: `direct-pt` is the direct transport with `-o passthrough`. */
export type TestTransport = Transport | 'direct-pt';

/** The FUSE transports the shared test tables run against (LAYERFS_TEST_TRANSPORTS="direct" narrows them). */
export const FUSE_TRANSPORTS: TestTransport[] = (process.env.LAYERFS_TEST_TRANSPORTS?.split(/[\s,]+/).filter(Boolean) as TestTransport[] | undefined) ?? ['direct', 'direct-pt', 'fuse-native'];

/** The -o options that select a test transport. */
export function transportOption(t: TestTransport): string {
  return t === 'direct-pt' ? 'transport=direct,passthrough' : `transport=${t}`;
}

/** The same as `layerfs fuse` arguments. */
export function transportArgs(t: TestTransport): string[] {
  return t === 'direct-pt' ? ['--transport', 'direct', '-o', 'passthrough'] : ['--transport', t];
}

/** The environment that selects a test transport for the CLI (`layerfs mount --driver fuse`, the graph driver). */
export function transportEnv(t: TestTransport): Record<string, string> {
  return t === 'direct-pt' ? { LAYERFS_FUSE_TRANSPORT: 'direct', LAYERFS_FUSE_PASSTHROUGH: '1' } : { LAYERFS_FUSE_TRANSPORT: t };
}

export async function mountFuse(lowers: string[], mnt: string, upper?: string, work?: string, transport?: TestTransport): Promise<Mounted & { pid: number }> {
  await mkdir(mnt, { recursive: true });
  const t = transport === 'direct-pt' ? { transport: 'direct' as const, passthrough: true } : transport ? { transport } : {};
  const { pid } = await startFuseMount({ lowerdirs: lowers, upperdir: upper, workdir: work, mountpoint: mnt, ...t });
  return {
    mnt,
    pid,
    stop: async () => {
      await stopFuseMount(mnt).catch(() => undefined);
      await forceUnmount(mnt);
      await waitProcessGone(pid, 2500);
    },
  };
}

export { isMounted };

/** Where a layer uses the kernel whiteout format, or the `.wh.` file form. */
export type WhForm = 'kernel' | 'file';

async function whiteout(dir: string, name: string, form: WhForm): Promise<void> {
  if (form === 'kernel') mkWhiteout(path.join(dir, name));
  else await writeFile(path.join(dir, `.wh.${name}`), '');
}

async function opaque(dir: string, form: WhForm): Promise<void> {
  if (form === 'kernel') native.lsetxattr(dir, 'trusted.overlay.opaque', Buffer.from('y'), 0);
  else await writeFile(path.join(dir, '.wh..wh..opq'), '');
}

async function file(p: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(path.dirname(p), { recursive: true });
  await writeFile(p, content, { mode });
}

/**
 * Three lower layers (top first) exercising the merge: whiteouts and opaque dirs in the given form, symlinks,
 * devices, a fifo, xattrs, odd modes and owners, and (optionally) hardlinks inside a lower.
 */
export async function buildLowers(root: string, form: WhForm, o: { hardlinks?: boolean; layers?: 3 | 6 } = {}): Promise<string[]> {
  const base = await buildLowers3(root, form, o);
  const top: string[] = [];
  if (o.layers === 6) {
    // three more layers above: replaced files, whiteouts and opaque dirs at several depths, a file made a symlink
    const [x1, x2, x3] = ['x1', 'x2', 'x3'].map((n) => path.join(root, n));
    await file(`${x3}/srv/a/other`, 'x3 other\n');
    await file(`${x3}/srv/c`, 'x3 c\n');
    await file(`${x3}/usr/share/doc/extra`, 'extra doc\n');
    await whiteout(x3, 'rellink', form);
    await file(`${x2}/etc/passwd2`, 'x2 passwd2\n', 0o600);
    await mkdir(`${x2}/var`, { recursive: true });
    await opaque(`${x2}/var`, form);
    await file(`${x2}/var/new`, 'opaque var in x2\n');
    await mkdir(`${x2}/usr/bin`, { recursive: true });
    await symlink('tool2', `${x2}/usr/bin/tool`);
    await file(`${x1}/etc/motd`, 'motd from x1\n');
    await mkdir(`${x1}/usr/lib`, { recursive: true });
    await whiteout(`${x1}/usr/lib`, 'libx.so', form);
    await file(`${x1}/srv/a/b/file`, 'deep in x1\n');
    await whiteout(`${x1}/srv`, 'c', form);
    top.push(x1, x2, x3);
  }
  const all = [...top, ...base];
  await fixTimes(all);
  return all;
}

/** Every entry of the layers gets a fixed, distinct time with a nanosecond part (2020 onwards): what a mount shows
 *  of them can be compared to the nanosecond. */
async function fixTimes(layers: string[]): Promise<void> {
  let i = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p);
    if (st.isDirectory()) for (const n of (await readdir(p)).sort()) await walk(path.join(p, n));
    const sec = 1577836800 + i * 3;
    native.lutimens(p, sec, (i * 123456789 + 987) % 1e9, sec + 1, (i * 7654321 + 12345) % 1e9);
    i++;
  };
  for (const l of layers) await walk(l);
}

async function buildLowers3(root: string, form: WhForm, o: { hardlinks?: boolean }): Promise<string[]> {
  const [l1, l2, l3] = ['l1', 'l2', 'l3'].map((n) => path.join(root, n));
  for (const l of [l1, l2, l3]) await mkdir(l, { recursive: true });
  // bottom layer
  await file(`${l3}/etc/passwd`, 'root:x:0:0\n');
  await file(`${l3}/etc/hosts`, '127.0.0.1 localhost\n');
  await file(`${l3}/etc/gone`, 'deleted above\n');
  await file(`${l3}/usr/bin/tool`, '#!/bin/sh\necho tool\n', 0o755);
  await file(`${l3}/usr/lib/libx.so`, 'ELF'.repeat(1000));
  await file(`${l3}/usr/share/doc/readme`, 'doc\n');
  await file(`${l3}/opq/old1`, 'hidden by opaque\n');
  await file(`${l3}/opq/sub/old2`, 'hidden too\n');
  await file(`${l3}/var/log/x.log`, 'log\n');
  await file(`${l3}/replaced`, 'a file that becomes a dir above\n');
  await mkdir(`${l3}/dirgone/inner`, { recursive: true });
  await file(`${l3}/dirgone/inner/f`, 'x');
  await mkdir(`${l3}/emptyish`, { recursive: true });
  await file(`${l3}/emptyish/only`, 'whited out above');
  await file(`${l3}/secret`, 'root only\n', 0o600);
  await run('chown', ['1234:4321', `${l3}/usr/share/doc/readme`]);
  native.lsetxattr(`${l3}/etc/hosts`, 'user.origin', Buffer.from('l3'), 0);
  native.mknod(`${l3}/null`, 0o020666, 1, 3);
  native.mknod(`${l3}/fifo`, 0o010644, 0, 0);
  await symlink('/etc/passwd', `${l3}/abslink`);
  await symlink('usr/bin/tool', `${l3}/rellink`);
  if (o.hardlinks) {
    await file(`${l3}/hl/one`, 'shared inode\n');
    await mkdir(`${l3}/hl2`, { recursive: true });
    await link(`${l3}/hl/one`, `${l3}/hl/two`);
    await link(`${l3}/hl/one`, `${l3}/hl2/three`);
  }
  // middle layer
  await file(`${l2}/etc/hosts`, '10.0.0.1 middle\n');
  await whiteout(`${l2}/etc`, 'gone', form);
  await mkdir(`${l2}/opq`, { recursive: true });
  await opaque(`${l2}/opq`, form);
  await file(`${l2}/opq/new`, 'after opaque\n');
  await mkdir(`${l2}/replaced`, { recursive: true });
  await opaque(`${l2}/replaced`, form);
  await file(`${l2}/replaced/child`, 'dir over a file\n');
  await whiteout(l2, 'dirgone', form);
  await mkdir(`${l2}/emptyish`, { recursive: true });
  await whiteout(`${l2}/emptyish`, 'only', form);
  await file(`${l2}/usr/bin/tool2`, 'tool2', 0o4755);
  native.lsetxattr(`${l2}/usr/bin/tool2`, 'user.mid', Buffer.from('2'), 0);
  // top layer
  await file(`${l1}/etc/motd`, 'hello from the top\n');
  await file(`${l1}/usr/lib/libx.so`, 'newer lib');
  await mkdir(`${l1}/var`, { recursive: true, mode: 0o750 });
  await whiteout(`${l1}/var`, 'log', form);
  await file(`${l1}/top-only/deep/er/file`, 'deep');
  await run('chmod', ['0750', `${l1}/var`]);
  return [l1, l2, l3];
}

export async function cleanup(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/**
 * What a test file mounts and makes, undone after its last test, also when tests failed: the `live` mounts stopped
 * (newest first), then the plain mountpoints in `mounts` (a tmpfs upper, say) unmounted, then the `dirs` removed.
 */
export function undoAfter<M extends { stop(): Promise<void> } = Mounted>(): { live: M[]; mounts: string[]; dirs: string[] } {
  const t = { live: [] as M[], mounts: [] as string[], dirs: [] as string[] };
  after(async () => {
    for (const m of t.live.reverse()) await m.stop().catch(() => undefined);
    for (const d of t.mounts) await forceUnmount(d).catch(() => undefined);
    for (const d of t.dirs) await cleanup(d);
  });
  return t;
}

/** A FUSE server's counters: SIGUSR2 makes it append one JSON line to its LAYERFS_FUSE_STATS file; the new line. */
export async function serverStats<T>(pid: number, file: string): Promise<T> {
  const lines = async () => (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  const n0 = (await lines()).length;
  process.kill(pid, 'SIGUSR2');
  for (let i = 0; i < 100; i++) {
    const l = await lines();
    if (l.length > n0) return JSON.parse(l[l.length - 1]) as T;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('no stats from the server');
}
