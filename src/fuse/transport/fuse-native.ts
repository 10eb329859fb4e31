/**
 * The fuse-native (libfuse 2.9 high-level API) transport: maps its path-based callbacks onto the overlay core's
 * node-id operations. A path is resolved by walking core lookups from the root (each one a cached map hit after
 * the first). Every error becomes an errno reply; nothing here throws into fuse-native.
 *
 * Limits of this transport (the /dev/fuse transport lifts them): new files are owned by the server's uid (libfuse 2
 * high-level does not expose the caller), times have ms precision, fuse-native's utimens passes atime for both
 * times, renameat2 flags are not passed (the kernel answers EINVAL for them). Its xattr replies were not sized (EIO
 * for a small buffer; a list longer than the buffer threw out of fuse-native and ended the server): overridden here.
 */
import { createRequire } from 'node:module';
import { constants as osc } from 'node:os';
import type { Logger } from 'pino';
import { errnoOf, fsErr } from '../core/errors.js';
import type { Kind, NodeStat } from '../core/node.js';
import { ROOT_ID, type Overlay, type TimeSpec } from '../core/overlay.js';

const require = createRequire(import.meta.url);

type Cb = (...args: unknown[]) => void;

export interface FuseNativeCtor {
  new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>): FuseNativeInstance;
}
export interface FuseNativeInstance {
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
}

export interface FuseNativeOptions {
  mountpoint: string;
  fsname?: string;
  /** Extra raw libfuse -o options. */
  extraOptions?: string[];
  /** Seconds the kernel may cache entries (names) and negative lookups; all changes go through us. */
  entryTimeout?: number;
  /** Seconds the kernel may cache attributes. 0 by default: libfuse 2 gives each hardlink its own kernel inode,
   *  so a change through one name must be seen through the others at once. */
  attrTimeout?: number;
  readonly?: boolean;
  debug?: boolean;
}

const TYPE_BITS: Record<Kind, number> = { dir: 0o040000, file: 0o100000, symlink: 0o120000, other: 0 };
const UTIME_MS_SENTINEL = 1073; // fuse-native turns UTIME_NOW/UTIME_OMIT (tv_sec 0, tv_nsec ~2^30) into 1073 ms

function fuseStat(s: NodeStat, ino: number, nlink: number): Record<string, number> {
  return {
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    size: s.size,
    dev: 0,
    nlink, // fuse-native sends 0 as 1: an open unlinked file cannot report 0 links through this transport
    ino,
    rdev: s.rdev,
    blksize: s.blksize,
    blocks: s.blocks,
    // fuse-native's stat carries milliseconds (its wire layout): the nanoseconds below a millisecond are lost here
    atime: s.atimeSec * 1000 + Math.floor(s.atimeNsec / 1e6),
    mtime: s.mtimeSec * 1000 + Math.floor(s.mtimeNsec / 1e6),
    ctime: s.ctimeSec * 1000 + Math.floor(s.ctimeNsec / 1e6),
  };
}

/** Split "/a/b/c" into parent path and name. */
function splitPath(p: string): [string, string] {
  const i = p.lastIndexOf('/');
  return [i <= 0 ? '/' : p.slice(0, i), p.slice(i + 1)];
}

function isLibfuseHidden(name: string): boolean {
  return name.startsWith('.fuse_hidden');
}

/** The libfuse -o options of this transport (also used by scripts/fuse-native-floor.ts, to measure under the same). */
export function libfuseOptions(opts: Pick<FuseNativeOptions, 'entryTimeout' | 'attrTimeout' | 'readonly' | 'extraOptions'>): string[] {
  const entry = opts.entryTimeout ?? 60;
  const attr = opts.attrTimeout ?? 0;
  const o = ['use_ino', 'auto_cache', 'big_writes', 'max_write=131072', `entry_timeout=${entry}`, `negative_timeout=${entry}`, `attr_timeout=${attr}`, 'subtype=layerfs'];
  if (opts.readonly) o.push('ro');
  // a container rootfs needs its device nodes and set-id programs (libfuse mounts nodev,nosuid otherwise)
  if (process.getuid?.() === 0) o.push('dev', 'suid');
  return [...o, ...(opts.extraOptions ?? [])];
}

type StatIn = Record<string, unknown> | null | undefined;
type Signal = (err: number, ...args: unknown[]) => void;
const STAT_INTS = 18;

const num = (v: unknown): number => (typeof v === 'number' ? v : 0);
/** fuse-native's time fields: ms as a number, or a Date. */
const ms = (v: unknown): number => (typeof v === 'number' ? v : v instanceof Date ? v.getTime() : Date.now());
function setDouble(a: Uint32Array, i: number, v: number): void {
  a[i] = v % 4294967296;
  a[i + 1] = (v - a[i]) / 4294967296;
}

/** A stat in fuse-native 2.2.6's wire layout (its getStatArray: 18 uint32s) at a[o..o+17]. */
function fillStat(a: Uint32Array, o: number, st: StatIn): void {
  const s = st ?? {};
  a[o] = num(s.mode);
  a[o + 1] = num(s.uid);
  a[o + 2] = num(s.gid);
  setDouble(a, o + 3, num(s.size));
  a[o + 5] = num(s.dev);
  a[o + 6] = num(s.nlink) || 1;
  a[o + 7] = num(s.ino);
  a[o + 8] = num(s.rdev);
  a[o + 9] = num(s.blksize);
  setDouble(a, o + 10, num(s.blocks));
  setDouble(a, o + 12, ms(s.atime));
  setDouble(a, o + 14, ms(s.mtime));
  setDouble(a, o + 16, ms(s.ctime));
}

/**
 * fuse-native's class with `extra` added to the fixed -o string it builds (it has no way to pass options), and its
 * stat replies made without a typed array per stat: fuse-native makes a Uint32Array(18) for every getattr and
 * every readdir entry, 72 bytes, past V8's 64-byte limit for arrays inside the JS heap, so each is a malloc'd
 * backing store; ~700k of them in a walk of bench-fuse's dataset left the malloc heap 6 MB larger. Its native side
 * copies a stat out when the reply's process.nextTick runs, so a getattr's array goes back to a pool in the tick
 * after (ticks run in order), and a readdir's entries are views of one array. Overrides fuse-native 2.2.6's
 * `_op_getattr`, `_op_fgetattr` and `_op_readdir` (package-lock pins the version), and `_op_getxattr` and
 * `_op_listxattr`, whose sizes were wrong.
 */
export function fuseNativeWith(extra: string[]): FuseNativeCtor {
  const Fuse = require('fuse-native') as FuseNativeCtor;
  return class extends Fuse {
    private readonly statPool: Uint32Array[] = [];
    private readonly statBack = (a: Uint32Array): void => void this.statPool.push(a);

    override _fuseOptions(): string {
      const base = super._fuseOptions();
      return base ? `${base},${extra.join(',')}` : `-o${extra.join(',')}`;
    }

    private get userOps(): Record<string, (...args: unknown[]) => void> {
      return (this as unknown as { ops: Record<string, (...args: unknown[]) => void> }).ops;
    }

    private replyStat(signal: Signal, err: number, st: StatIn): void {
      if (err) return signal(err);
      const a = this.statPool.pop() ?? new Uint32Array(STAT_INTS);
      fillStat(a, 0, st);
      signal(0, a);
      process.nextTick(this.statBack, a); // after the reply's own tick has copied it out
    }

    _op_getattr(signal: Signal, path: string): void {
      this.userOps.getattr(path, (err: number, st: StatIn) => this.replyStat(signal, err, st));
    }

    _op_fgetattr(signal: Signal, path: string, fd: number): void {
      this.userOps.fgetattr(path, fd, (err: number, st: StatIn) => this.replyStat(signal, err, st));
    }

    /**
     * fuse-native 2.2.6's getxattr copies the value into the caller's buffer whatever its size and answers the full
     * length: a buffer smaller than the value got a reply longer than asked for, which the kernel fails with EIO.
     * Here: size 0 asks for the length; a value that does not fit is ERANGE, as on any fs.
     */
    _op_getxattr(signal: Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
      this.userOps.getxattr(path, name, position, (err: number | null, value?: Buffer) => {
        if (err) return signal(err, valueBuf.buffer);
        if (!value) return signal(-osc.errno.ENODATA, valueBuf.buffer);
        if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
        if (value.length > valueBuf.length) return signal(-osc.errno.ERANGE, valueBuf.buffer);
        value.copy(valueBuf);
        return signal(value.length, valueBuf.buffer);
      });
    }

    /**
     * fuse-native 2.2.6's listxattr wrote the names past the end of a small buffer (a RangeError thrown out of its
     * callback ended the server: any user could take the mount down) and asked for 128 bytes more than needed. Here:
     * the exact length, ERANGE when the list does not fit.
     */
    _op_listxattr(signal: Signal, path: string, listBuf: Buffer): void {
      this.userOps.listxattr(path, (err: number | null, list?: string[]) => {
        if (err || !list) return signal(err || -osc.errno.EIO, listBuf.buffer);
        const out = Buffer.concat(list.map((n) => Buffer.from(n + '\0')));
        if (listBuf.length === 0) return signal(out.length, listBuf.buffer);
        if (out.length > listBuf.length) return signal(-osc.errno.ERANGE, listBuf.buffer);
        out.copy(listBuf);
        return signal(out.length, listBuf.buffer);
      });
    }

    _op_readdir(signal: Signal, path: string): void {
      this.userOps.readdir(path, (err: number, names: string[], stats?: StatIn[]) => {
        if (err) return signal(err);
        const list = stats ?? [];
        const all = new Uint32Array(STAT_INTS * list.length);
        const views = list.map((st, i) => {
          fillStat(all, i * STAT_INTS, st);
          return all.subarray(i * STAT_INTS, (i + 1) * STAT_INTS);
        });
        signal(0, names, views);
      });
    }
  };
}

export class FuseNativeTransport {
  /** Requests answered (for the per-request CPU figure of LAYERFS_FUSE_STATS). */
  requests = 0;
  /** Nodes with libfuse `.fuse_hidden*` names (an unlinked file still open): those names are not links. */
  private readonly hidden = new Map<number, number>();

  constructor(
    private readonly core: Overlay,
    private readonly opts: FuseNativeOptions,
    private readonly log: Logger,
  ) {}

  private async resolve(p: string): Promise<number> {
    // components split by hand and cached names answered without a promise each: a walk resolves ~700k paths
    let id = ROOT_ID;
    for (let i = 1; i < p.length; ) {
      let j = p.indexOf('/', i);
      if (j < 0) j = p.length;
      if (j > i) {
        const part = p.slice(i, j);
        const cached = this.core.cachedChild(id, part);
        const n = cached !== undefined ? cached : await this.core.lookup(id, part);
        if (!n) throw fsErr('ENOENT');
        id = n.ino;
      }
      i = j + 1;
    }
    return id;
  }

  private unhide(ino: number): void {
    const k = (this.hidden.get(ino) ?? 0) - 1;
    if (k > 0) this.hidden.set(ino, k);
    else this.hidden.delete(ino);
  }

  private statOut(s: NodeStat): Record<string, number> {
    const nlink = Math.max(0, s.nlink - (this.hidden.get(s.ino) ?? 0));
    return fuseStat(s, s.ino, nlink);
  }

  private async resolveParent(p: string): Promise<[number, string]> {
    const [dir, name] = splitPath(p);
    return [await this.resolve(dir), name];
  }

  /** Run an op; reply `ok(result)` or the negative errno. */
  private run<T>(op: string, cb: Cb, fn: () => Promise<T>, ok: (r: T) => unknown[]): void {
    this.requests++;
    fn().then(
      (r) => cb(...ok(r)),
      (err: unknown) => {
        const e = errnoOf(err);
        if (e === osc.errno.EIO) this.log.warn({ err, op }, 'fuse op failed');
        else this.log.debug({ op, code: (err as { code?: string }).code }, 'fuse op error');
        cb(-e);
      },
    );
  }

  private ops(): Record<string, unknown> {
    const c = this.core;
    const ok0 = () => [0];
    return {
      init: (cb: Cb) => cb(0),
      getattr: (p: string, cb: Cb) => this.run('getattr', cb, async () => c.getattr(await this.resolve(p)), (s) => [0, this.statOut(s)]),
      fgetattr: (p: string, _fd: number, cb: Cb) => this.run('fgetattr', cb, async () => c.getattr(await this.resolve(p)), (s) => [0, this.statOut(s)]),
      access: (p: string, mode: number, cb: Cb) => this.run('access', cb, async () => c.access(await this.resolve(p), mode), ok0),
      statfs: (_p: string, cb: Cb) =>
        this.run('statfs', cb, () => c.statfs(), (s) => {
          const cap = (n: number) => Math.min(n, 0xffffffff);
          return [0, { bsize: s.bsize, frsize: s.bsize, blocks: cap(s.blocks), bfree: cap(s.bfree), bavail: cap(s.bavail), files: cap(s.files), ffree: cap(s.ffree), favail: cap(s.ffree), fsid: 0, flag: 0, namemax: s.namemax }];
        }),
      readdir: (p: string, cb: Cb) =>
        this.run('readdir', cb, async () => {
          const id = await this.resolve(p);
          const entries = (await c.readdir(id)).filter((e) => !isLibfuseHidden(e.name));
          const up = p === '/' ? id : await this.resolve(splitPath(p)[0]);
          const names = ['.', '..', ...entries.map((e) => e.name)];
          // inode numbers fit fuse-native's 32-bit st_ino: the server opens the core with inoBits 32
          const stats = [{ mode: TYPE_BITS.dir, ino: id }, { mode: TYPE_BITS.dir, ino: up }, ...entries.map((e) => ({ mode: TYPE_BITS[e.kind], ino: e.ino }))];
          return [names, stats] as const;
        }, ([names, stats]) => [0, names, stats]),
      readlink: (p: string, cb: Cb) => this.run('readlink', cb, async () => c.readlink(await this.resolve(p)), (t) => [0, t]),
      open: (p: string, flags: number, cb: Cb) => this.run('open', cb, async () => c.open(await this.resolve(p), flags), (fh) => [0, fh]),
      create: (p: string, mode: number, cb: Cb) =>
        this.run('create', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          return (await c.create(pid, name, mode)).fh;
        }, (fh) => [0, fh]),
      read: (_p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) =>
        this.run('read', cb, () => {
          if (pos === 0) c.readStartedByHandle(fh); // the core may read the next files of the dir ahead
          return c.read(fh, buf, len, pos);
        }, (n) => [n]),
      write: (_p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) => this.run('write', cb, () => c.write(fh, buf, len, pos), (n) => [n]),
      // no flush op: libfuse answers FLUSH with ENOSYS and the kernel stops sending it (nothing to flush here:
      // writes reach the backing file at once), one round trip less on every close
      fsync: (_p: string, datasync: number, fh: number, cb: Cb) => this.run('fsync', cb, () => c.fsync(fh, datasync !== 0), ok0),
      release: (_p: string, fh: number, cb: Cb) => this.run('release', cb, () => c.release(fh), ok0),
      truncate: (p: string, size: number, cb: Cb) => this.run('truncate', cb, async () => c.truncate(await this.resolve(p), size), ok0),
      ftruncate: (p: string, fh: number, size: number, cb: Cb) =>
        this.run('ftruncate', cb, async () => (fh ? c.ftruncate(fh, size) : c.truncate(await this.resolve(p), size)), ok0),
      chmod: (p: string, mode: number, cb: Cb) => this.run('chmod', cb, async () => c.chmod(await this.resolve(p), mode), ok0),
      chown: (p: string, uid: number, gid: number, cb: Cb) =>
        this.run('chown', cb, async () => c.chown(await this.resolve(p), uid === 0xffffffff ? -1 : uid, gid === 0xffffffff ? -1 : gid), ok0),
      utimens: (p: string, atime: number, mtime: number, cb: Cb) =>
        this.run('utimens', cb, async () => {
          const t = (v: number): TimeSpec => (v === UTIME_MS_SENTINEL ? 'now' : { sec: Math.floor(v / 1000), nsec: (v - Math.floor(v / 1000) * 1000) * 1e6 });
          return c.utimens(await this.resolve(p), t(atime), t(mtime));
        }, ok0),
      mknod: (p: string, mode: number, dev: number, cb: Cb) =>
        this.run('mknod', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          await c.mknod(pid, name, mode, dev);
        }, ok0),
      mkdir: (p: string, mode: number, cb: Cb) =>
        this.run('mkdir', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          await c.mkdir(pid, name, mode);
        }, ok0),
      symlink: (target: string, p: string, cb: Cb) =>
        this.run('symlink', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          await c.symlink(pid, name, target);
        }, ok0),
      link: (src: string, dest: string, cb: Cb) =>
        this.run('link', cb, async () => {
          const id = await this.resolve(src);
          const [pid, name] = await this.resolveParent(dest);
          await c.link(id, pid, name);
        }, ok0),
      unlink: (p: string, cb: Cb) =>
        this.run('unlink', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          const n = isLibfuseHidden(name) ? await c.lookup(pid, name) : null;
          await c.unlink(pid, name);
          if (n) this.unhide(n.ino);
        }, ok0),
      rmdir: (p: string, cb: Cb) =>
        this.run('rmdir', cb, async () => {
          const [pid, name] = await this.resolveParent(p);
          await c.rmdir(pid, name);
        }, ok0),
      rename: (src: string, dest: string, cb: Cb) =>
        this.run('rename', cb, async () => {
          const [sp, sn] = await this.resolveParent(src);
          const [dp, dn] = await this.resolveParent(dest);
          // libfuse hides an open file it is asked to unlink by renaming it to .fuse_hidden*: count that name out
          const n = isLibfuseHidden(dn) && !isLibfuseHidden(sn) ? await c.lookup(sp, sn) : null;
          await c.rename(sp, sn, dp, dn, 0);
          if (n) this.hidden.set(n.ino, (this.hidden.get(n.ino) ?? 0) + 1);
        }, ok0),
      setxattr: (p: string, name: string, value: Buffer, _pos: number, flags: number, cb: Cb) =>
        this.run('setxattr', cb, async () => c.setxattr(await this.resolve(p), name, Buffer.from(value), flags), ok0),
      getxattr: (p: string, name: string, _pos: number, cb: Cb) => this.run('getxattr', cb, async () => c.getxattr(await this.resolve(p), name), (v) => [null, v]),
      listxattr: (p: string, cb: Cb) => this.run('listxattr', cb, async () => c.listxattr(await this.resolve(p)), (l) => [null, l]),
      removexattr: (p: string, name: string, cb: Cb) => this.run('removexattr', cb, async () => c.removexattr(await this.resolve(p), name), ok0),
    };
  }

  /** Mount; resolves once the kernel has sent FUSE_INIT (the mount is usable). */
  async mount(): Promise<void> {
    const LayerFuse = fuseNativeWith(libfuseOptions(this.opts));
    const fuse = new LayerFuse(this.opts.mountpoint, this.ops(), {
      // copy-up of a big file answers an open/setattr late: no request timeout at all
      timeout: false,
      allowOther: true,
      defaultPermissions: true,
      fsname: (this.opts.fsname ?? 'layerfs').replace(/[,\s]/g, '_'),
      debug: this.opts.debug ?? false,
    });
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  }
}
