/**
 * The direct transport: the kernel's FUSE protocol spoken over /dev/fuse from this process, no libfuse.
 *
 *  - mount: /dev/fuse opened here, mount(8) run with it as its fd 3 (`-o fd=3,...`); the kernel then queues FUSE_INIT.
 *  - requests are read on the JS thread: /dev/fuse is non-blocking and watched by a libuv poll handle (our addon), and
 *    each time it is readable the queued requests are read, decoded and handed to the overlay core with the caller's
 *    uid/gid; many requests are in flight at once (the core is async). No threadpool thread sits between the kernel
 *    and the answer, which saves a thread switch per request. LAYERFS_FUSE_READ=threadpool reads on the libuv
 *    threadpool instead (`fs.read`, several outstanding: the first design, kept for comparison).
 *  - replies are written synchronously (one writev of header + payload: the kernel consumes it at once).
 *  - node ids are the core's inode numbers (root = 1), so hardlinks share one kernel inode; lookup counts are kept
 *    per node id, and when FORGET brings one to 0 the core may drop the node (those it can rebuild with the same
 *    number: see Overlay.forget), so memory follows what the kernel caches.
 *  - the read loop ends on ENODEV (unmounted or connection aborted).
 *  - passthrough (opt-in, `-o passthrough`, kernel 6.9+): OPEN and CREATE of regular files are answered with a
 *    backing file registered with the kernel (FUSE_DEV_IOC_BACKING_OPEN), and the kernel reads, writes and mmaps it
 *    itself: no READ/WRITE requests for that open. See openFile for the rules the kernel imposes and how the overlay
 *    fits them (one backing file per node at a time; ETXTBSY for a change to a lower file that a passthrough open
 *    is reading), and attach for the fallback to plain opens.
 */
import { spawn } from 'node:child_process';
import { closeSync, constants as fsc, fstatSync, openSync, read, readFileSync, writevSync } from 'node:fs';
import { availableParallelism, constants as osc } from 'node:os';
import type { Logger } from 'pino';
import { native } from '../../../common/native.js';
import { errnoOf, fsErr } from '../../core/errors.js';
import type { DirEntry, Node } from '../../core/node.js';
import { ROOT_ID, SYNC_IO_MAX, type Overlay, type TimeSpec } from '../../core/overlay.js';
import {
  attrOut,
  cstr,
  direntSize,
  dtype,
  ENTRY_OUT,
  entryOut,
  FATTR,
  FOPEN_CACHE_DIR,
  FOPEN_KEEP_CACHE,
  FOPEN_PASSTHROUGH,
  FUSE_GETATTR_FH,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  IN_HEADER,
  INIT,
  INIT2,
  Op,
  OUT_HEADER,
  openOut,
  readHeader,
  u64,
  writeDirent,
  writeEntry,
  writeU64,
  type InHeader,
} from './proto.js';
import { readersFor } from './threadpool.js';
import { raiseReadahead } from '../../mountinfo.js';

export interface DirectOptions {
  mountpoint: string;
  fsname?: string;
  /** Seconds the kernel may cache names (and negative lookups). All changes go through the mount: long. */
  entryTimeout?: number;
  /** Seconds the kernel may cache attributes (one kernel inode per node, hardlinks included: long is correct). */
  attrTimeout?: number;
  readonly?: boolean;
  debug?: boolean;
  /** Extra mount(8) -o options. */
  extraOptions?: string[];
  /** Reads outstanding on /dev/fuse (each holds a threadpool thread while it waits). */
  readers?: number;
  /** Largest write the kernel may send (and read it may ask for). */
  maxWrite?: number;
  /** After answering, poll /dev/fuse this many microseconds before sleeping (see defaultSpinUs). */
  spinUs?: number;
  /** Zero-open (default on; LAYERFS_FUSE_ZERO_OPEN=0 turns it off): OPEN, OPENDIR and CREATE are answered ENOSYS
   *  once, so the kernel stops sending them (and RELEASE/RELEASEDIR): opening a file or dir costs no request, reads
   *  and writes come keyed by node id (the core's readNode/writeNode; a lower file is copied up at its first write),
   *  creating a file is MKNOD and the kernel caches data and listings across opens (its no-open defaults). */
  zeroOpen?: boolean;
  /** FUSE passthrough (default off; env LAYERFS_FUSE_PASSTHROUGH=1 turns it on): OPEN and CREATE of regular files
   *  are answered (no zero-open for files; dirs keep it) with the file's backing file, which the kernel then reads
   *  and writes without READ/WRITE requests. Without kernel support, or where the kernel refuses a backing file,
   *  opens are plain ones served by READ/WRITE. */
  passthrough?: boolean;
}

/**
 * How long the read loop keeps polling /dev/fuse after a wake-up before it sleeps again. A caller's next request
 * mostly follows its reply within tens of microseconds; sleeping in between costs a sleep and a wake-up of this
 * process, which on the VMs measured here is most of a request's round trip. Polling 50 us: 10k creates 3.3 -> 1.9 s,
 * warm `find` of 48k entries 0.49 -> 0.22 s, 20k-file tar extract 23 -> 12 s (bench-fuse), with no more CPU in all
 * (the polling replaces scheduler work). Idle, it costs at most 50 us per burst of requests. One CPU: no polling
 * (the caller could not run meanwhile). LAYERFS_FUSE_SPIN_US overrides.
 */
export function defaultSpinUs(): number {
  const env = process.env.LAYERFS_FUSE_SPIN_US;
  if (env !== undefined && env !== '' && Number.isFinite(Number(env))) return Math.max(0, Math.min(10_000, Number(env)));
  return availableParallelism() > 1 ? 50 : 0;
}

export interface TransportStats {
  requests: number;
  /** INTERRUPTs received. */
  interrupts: number;
  /** Requests answered EINTR after one (their callers were dying). */
  eintr: number;
  byOp: Record<string, number>;
}

/** What passthrough did (SIGUSR2 stats). */
export interface PassthroughStats {
  /** Asked for (option or env). */
  wanted: boolean;
  /** Negotiated at INIT and not turned off since by a BACKING_OPEN failure that would fail for every file. */
  on: boolean;
  /** Backing ids registered now, and opens (passthrough or plain) not released yet. */
  backings: number;
  openNow: number;
  backingOpens: number;
  backingCloses: number;
  /** Opens answered with FOPEN_PASSTHROUGH, and plain ones (served by READ/WRITE). */
  passthroughOpens: number;
  plainOpens: number;
  /** BACKING_OPEN failures (each errno is logged once at info). */
  failures: number;
  /** Changes refused ETXTBSY: a write open or truncate of a lower file that passthrough opens are reading. */
  busy: number;
}

/** A backing file registered for a node: one per node at a time (the kernel's rule), shared by its opens. */
interface Backing {
  id: number;
  /** The upper copy, or the lower file (of a node not copied up when it was registered). */
  upper: boolean;
  /** Opens answered with it and not released yet. */
  opens: number;
}

/** An answered OPEN/CREATE until its RELEASE: its node and its backing (null: a plain open). */
interface OpenFile {
  id: number;
  backing: Backing | null;
}

/** BACKING_OPEN errors that would fail for every file of the mount: passthrough is turned off (EPERM: no
 *  CAP_SYS_ADMIN; ENOTTY, ENOSYS, EOPNOTSUPP: no support). Others (ELOOP: a layer on a stacked fs) are per file. */
const BACKING_GLOBAL_ERRORS = new Set(['EPERM', 'ENOTTY', 'ENOSYS', 'ENOTSUP', 'EOPNOTSUPP']);

const ENODEV = osc.errno.ENODEV;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_ISGID = 0o2000;
const TYPE_MODE: Record<DirEntry['kind'], number> = { dir: 0o040000, file: 0o100000, symlink: 0o120000, other: 0 };

/**
 * Ops that only read (and OPEN, which may copy up): an INTERRUPT answers them EINTR, but only when the caller is dying
 * (a fatal signal pending: see fatalSignalPending). Kernel overlay never fails a lookup, stat, xattr read or readdir
 * with EINTR, and a non-fatal signal (Go's preemption SIGURG, a timer) must not either. Changes are never answered
 * early: the change would be done while the kernel believes it failed.
 */
const INTERRUPTIBLE = new Set<number>([Op.LOOKUP, Op.GETATTR, Op.READ, Op.READDIR, Op.READDIRPLUS, Op.READLINK, Op.GETXATTR, Op.LISTXATTR, Op.STATFS, Op.ACCESS, Op.OPEN, Op.OPENDIR, Op.FSYNC, Op.FSYNCDIR, Op.FLUSH, Op.LSEEK]);

interface DirHandle {
  id: number;
  entries: DirEntry[] | null;
  loading: Promise<DirEntry[]> | null;
  parent: number;
}

interface InFlight {
  opcode: number;
  unique: bigint;
  /** The calling thread (the request header's pid). */
  pid: number;
  interrupted: boolean;
  /** An INTERRUPT answers it EINTR once its caller is dying (ops that only read; a write while it waits for a
   *  copy-up). */
  interruptible: boolean;
  /** An INTERRUPT came for it (the kernel sends one per request, at the caller's first signal). */
  signalled: boolean;
  /** While signalled and not answered: polls whether the caller has since got a fatal signal. */
  timer: NodeJS.Timeout | null;
}

const SIGKILL_BIT = 1n << 8n; // bit (SIGKILL - 1) of /proc's signal masks

/**
 * Whether thread `pid` is being killed: SIGKILL pending for it (a fatal signal, one with no handler whose default
 * action ends the process, is turned into SIGKILL for every thread of the group when it is sent), or gone. Kernel
 * overlay's copy-up stops only for such a signal (fatal_signal_pending), and FUSE tells the server about any signal.
 */
export function fatalSignalPending(pid: number): boolean {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return true; // gone
  }
  const state = /^State:\s*(\S)/m.exec(s)?.[1];
  if (state === 'Z' || state === 'X') return true;
  for (const key of ['SigPnd', 'ShdPnd']) {
    const m = new RegExp(`^${key}:\\s*([0-9a-f]+)`, 'm').exec(s);
    if (m && (BigInt('0x' + m[1]) & SIGKILL_BIT) !== 0n) return true;
  }
  return false;
}

class Reply {
  constructor(
    readonly payload: Buffer | Buffer[] | null,
    /** A pooled buffer under the payload, given back once the reply is written (or dropped). */
    readonly pooled: Buffer | null = null,
  ) {}
}

export class DirectTransport {
  private fd = -1;
  private readonly entryTimeout: number;
  private readonly attrTimeout: number;
  private readonly maxWrite: number;
  private readonly bufSize: number;
  private readonly pool: Buffer[] = [];
  /** node id -> kernel lookup count */
  private readonly nlookup = new Map<number, number>();
  /** Node ids whose lookup count reached 0, handed to the core's forget on the next turn of the loop. */
  private evictQueue: number[] = [];
  private readonly dirs = new Map<number, DirHandle>();
  /** Zero-open: listings being read by dir node id (no OPENDIR, so no handle); dropped when a listing is read out. */
  private readonly nodeDirs = new Map<number, DirHandle>();
  /** Zero-open for files (OPEN and CREATE answered ENOSYS): off with passthrough, which needs OPEN. */
  private readonly zeroOpen: boolean;
  /** Zero-open for dirs (OPENDIR answered ENOSYS). */
  private readonly zeroOpenDirs: boolean;
  private readonly ptWanted: boolean;
  /** Passthrough negotiated and not turned off by a global BACKING_OPEN failure. */
  private ptOn = false;
  /** Test hook (LAYERFS_FUSE_PASSTHROUGH_FAIL=EPERM...): BACKING_OPEN fails with that code, as on a kernel or a
   *  process that cannot do it. */
  private readonly ptForcedError: string | null;
  /** Test hook (LAYERFS_FUSE_NO_COPY_FILE_RANGE_64=1): COPY_FILE_RANGE_64 answered ENOSYS. */
  private readonly no64 = process.env.LAYERFS_FUSE_NO_COPY_FILE_RANGE_64 === '1';
  /** node id -> its backing file while passthrough opens of it live (at most one per node: iomode.c). */
  private readonly backings = new Map<number, Backing>();
  /** node id -> plain opens of it not released yet (the kernel's cached io mode: no passthrough open meanwhile). */
  private readonly plainOpens = new Map<number, number>();
  /** fh -> an open answered and not released yet (passthrough mode only). */
  private readonly openFiles = new Map<number, OpenFile>();
  /** node id -> the tail of the chain of OPENs (and truncates) of it: run one at a time (see openFile). */
  private readonly nodeChains = new Map<number, Promise<void>>();
  private readonly ptLogged = new Set<string>();
  private readonly ptCounts = { backingOpens: 0, backingCloses: 0, passthroughOpens: 0, plainOpens: 0, failures: 0, busy: 0 };
  private nextDirFh = 1;
  private readonly inflight = new Map<bigint, InFlight>();
  /** [0] = requests in flight, read by the poll loop's native side: it polls before sleeping only when 0 (otherwise
   *  a threadpool completion is due, and polling would delay it). */
  private readonly busy = new Int32Array(1);
  private readonly myUid = process.getuid?.() ?? 0;
  private readonly myGid = process.getgid?.() ?? 0;
  private readersRunning = 0;
  private stopped = false;
  private initDone!: () => void;
  private initFailed!: (e: Error) => void;
  private endResolve!: (why: string) => void;
  /** Settles when the read loop has ended (unmounted: ENODEV) with why. */
  readonly ended: Promise<string>;
  readonly stats: TransportStats = { requests: 0, interrupts: 0, eintr: 0, byOp: {} };

  constructor(
    private readonly core: Overlay,
    private readonly opts: DirectOptions,
    private readonly log: Logger,
  ) {
    this.entryTimeout = opts.entryTimeout ?? 86400;
    this.attrTimeout = opts.attrTimeout ?? 86400;
    this.maxWrite = opts.maxWrite ?? 1 << 20;
    this.bufSize = this.maxWrite + 4096;
    this.ptWanted = opts.passthrough ?? process.env.LAYERFS_FUSE_PASSTHROUGH === '1';
    this.ptForcedError = process.env.LAYERFS_FUSE_PASSTHROUGH_FAIL || null;
    this.zeroOpenDirs = opts.zeroOpen ?? process.env.LAYERFS_FUSE_ZERO_OPEN !== '0';
    this.zeroOpen = this.zeroOpenDirs && !this.ptWanted;
    if (this.zeroOpen) core.nodeKeyedIo = true;
    this.ended = new Promise((r) => (this.endResolve = r));
  }

  /** Mount and wait for FUSE_INIT to be answered (the mount is usable). */
  async mount(): Promise<void> {
    const polled = process.env.LAYERFS_FUSE_READ !== 'threadpool';
    this.fd = openSync('/dev/fuse', fsc.O_RDWR | (polled ? fsc.O_NONBLOCK : 0));
    const st = fstatSync(this.fd);
    void st;
    const o = [
      'fd=3',
      `rootmode=${(S_IFDIR).toString(8)}`,
      `user_id=${this.myUid}`,
      `group_id=${this.myGid}`,
      'allow_other',
      'default_permissions',
      ...(this.opts.readonly ? ['ro'] : []),
      ...(this.opts.extraOptions ?? []),
    ];
    const fsname = (this.opts.fsname ?? 'layerfs').replace(/[,\s]/g, '_');
    try {
      await new Promise<void>((resolve, reject) => {
        const child = spawn('mount', ['-i', '-t', 'fuse.layerfs', '-o', o.join(','), fsname, this.opts.mountpoint], {
          stdio: ['ignore', 'ignore', 'pipe', this.fd],
        });
        let err = '';
        child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        child.once('error', reject);
        child.once('exit', (code, sig) => (code === 0 ? resolve() : reject(new Error(`mount: ${err.trim() || sig || `exit ${code}`}`))));
      });
    } catch (err) {
      closeSync(this.fd);
      this.fd = -1;
      throw err;
    }
    const init = new Promise<void>((res, rej) => {
      this.initDone = res;
      this.initFailed = rej;
    });
    if (polled) {
      this.pollLoop();
    } else {
      const readers = this.opts.readers ?? readersFor();
      for (let i = 0; i < readers; i++) this.readLoop();
    }
    await init;
    // READs of up to max_write each: let readahead ask for that much at once (the kernel's default is 128 KiB)
    if (!(await raiseReadahead(this.opts.mountpoint, this.maxWrite >> 10))) this.log.debug('fuse: read_ahead_kb left as it is');
  }

  /** Node ids the kernel holds a lookup on. */
  nodeCount(): number {
    return this.nlookup.size;
  }

  passthroughStats(): PassthroughStats {
    return { wanted: this.ptWanted, on: this.ptOn, backings: this.backings.size, openNow: this.openFiles.size, ...this.ptCounts };
  }

  private getBuf(): Buffer {
    return this.pool.pop() ?? Buffer.allocUnsafe(this.bufSize);
  }

  private putBuf(b: Buffer): void {
    if (this.pool.length < 16) this.pool.push(b);
  }

  /** Requests read per wake-up at most (the loop then polls again, so timers and replies are not starved). */
  private static readonly BATCH = 32;

  /** Read requests on the JS thread whenever /dev/fuse is readable (the fd is non-blocking). */
  private pollLoop(): void {
    this.readersRunning++;
    const EAGAIN = osc.errno.EAGAIN;
    let watcher: unknown = null;
    const end = (why: string) => {
      if (watcher !== null) native.unwatch(watcher);
      watcher = null;
      this.stopped = true;
      this.readerEnd(why);
    };
    const spin = this.opts.spinUs ?? defaultSpinUs();
    const drain = () => {
      for (let i = 0; i < DirectTransport.BATCH; i++) {
        if (this.stopped) return end('stopped');
        const buf = this.getBuf();
        const n = native.readNonblock(this.fd, buf);
        if (n >= 0) {
          // answered at once: let the native loop yield before the next read, so the caller our reply woke runs
          // first (on a shared CPU it would wait for us) and its next request is likely what that read finds
          if (this.handle(buf, n) && spin > 0) return;
          continue;
        }
        this.putBuf(buf);
        const e = -n;
        if (e === EAGAIN) return;
        if (e === osc.errno.ENOENT || e === osc.errno.EINTR) continue; // a request aborted while queued
        if (e !== ENODEV) this.log.warn({ errno: e }, 'fuse: read /dev/fuse failed');
        this.initFailed?.(new Error(`fuse: /dev/fuse: errno ${e}`));
        return end(e === ENODEV ? 'unmounted' : `read error ${e}`);
      }
    };
    watcher = native.watchReadable(this.fd, (status) => {
      drain(); // after an unmount the fd polls as an error and the read says ENODEV
      if (status < 0 && !this.stopped) {
        this.log.warn({ status }, 'fuse: poll /dev/fuse failed');
        end(`poll error ${status}`);
      }
    }, spin, this.busy);
  }

  private readLoop(): void {
    this.readersRunning++;
    const next = (): void => {
      if (this.stopped) return this.readerEnd('stopped');
      const buf = this.getBuf();
      read(this.fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          this.putBuf(buf);
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') return next(); // request aborted while queued
          if (code !== 'ENODEV') this.log.warn({ err }, 'fuse: read /dev/fuse failed');
          this.stopped = true;
          this.initFailed?.(new Error(`fuse: /dev/fuse: ${code}`));
          return this.readerEnd(code === 'ENODEV' ? 'unmounted' : `read error ${code}`);
        }
        next();
        this.handle(buf, n);
      });
    };
    next();
  }

  private readerEnd(why: string): void {
    this.readersRunning--;
    if (this.readersRunning === 0) {
      if (this.fd >= 0) {
        try {
          closeSync(this.fd);
        } catch {
          // already gone
        }
        this.fd = -1;
      }
      this.endResolve(why);
    }
  }

  // ---- replies ----------------------------------------------------------------------------------------------

  private send(unique: bigint, error: number, payload: Buffer | Buffer[] | null): void {
    if (this.fd < 0) return;
    const parts = payload === null ? [] : Array.isArray(payload) ? payload : [payload];
    const hdr = Buffer.allocUnsafe(OUT_HEADER);
    let len = OUT_HEADER;
    for (const p of parts) len += p.length;
    hdr.writeUInt32LE(len, 0);
    hdr.writeInt32LE(-error, 4);
    hdr.writeBigUInt64LE(unique, 8);
    try {
      writevSync(this.fd, [hdr, ...parts]);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted/aborted meanwhile; ENODEV: unmounted
      if (code !== 'ENOENT' && code !== 'ENODEV') this.log.warn({ err, error }, 'fuse: reply failed');
    }
  }

  private ref(id: number, n = 1): void {
    this.nlookup.set(id, (this.nlookup.get(id) ?? 0) + n);
  }

  /** Drop n of the kernel's lookups of id; returns what is left. */
  private unref(id: number, n: number): number {
    const c = (this.nlookup.get(id) ?? 0) - n;
    if (c > 0) this.nlookup.set(id, c);
    else this.nlookup.delete(id);
    return c;
  }

  private forget(id: number, n: number): void {
    if (this.unref(id, n) > 0) return;
    // the core may drop the node (memory returns to baseline after a FORGET storm); not at once: a LOOKUP read in
    // the same wake-up may be about to hand the node out again (it takes its reference before any I/O)
    this.evictQueue.push(id);
    if (this.evictQueue.length === 1) setImmediate(() => this.evict());
  }

  private evict(): void {
    const q = this.evictQueue;
    this.evictQueue = [];
    for (const id of q) if (!this.nlookup.has(id)) this.core.forget(id);
  }

  private async entry(n: Node): Promise<Buffer> {
    this.ref(n.ino); // before the await: a FORGET handled meanwhile must not let the core drop n
    try {
      const st = await this.core.getattr(n.ino);
      return entryOut(n.ino, st, this.entryTimeout, this.attrTimeout);
    } catch (err) {
      this.unref(n.ino, 1); // never handed out: no FORGET will come for it
      throw err;
    }
  }

  // ---- dispatch ---------------------------------------------------------------------------------------------

  /** Decode and start one request; true when it was answered already (ioNow). */
  private handle(buf: Buffer, n: number): boolean {
    if (n < IN_HEADER) {
      this.putBuf(buf);
      return false;
    }
    const h = readHeader(buf);
    this.stats.requests++;
    this.stats.byOp[h.opcode] = (this.stats.byOp[h.opcode] ?? 0) + 1;
    const end = Math.min(n, h.len);
    // no-reply ops first
    switch (h.opcode) {
      case Op.FORGET:
        this.forget(h.nodeid, u64(buf, IN_HEADER));
        this.putBuf(buf);
        return false;
      case Op.BATCH_FORGET: {
        const count = buf.readUInt32LE(IN_HEADER);
        for (let i = 0, off = IN_HEADER + 8; i < count && off + 16 <= end; i++, off += 16) this.forget(u64(buf, off), u64(buf, off + 8));
        this.putBuf(buf);
        return false;
      }
      case Op.INTERRUPT: {
        const target = buf.readBigUInt64LE(IN_HEADER);
        this.putBuf(buf);
        this.interrupt(target, true);
        return false;
      }
    }
    // a file read from its start: the core may read the next files of its dir ahead (readStarted)
    if (h.opcode === Op.READ && u64(buf, IN_HEADER + 8) === 0) this.core.readStarted(h.nodeid);
    if ((h.opcode === Op.READ || h.opcode === Op.WRITE) && this.ioNow(h, buf, end)) return true;
    const fl: InFlight = { opcode: h.opcode, unique: h.unique, pid: h.pid, interrupted: false, interruptible: INTERRUPTIBLE.has(h.opcode), signalled: false, timer: null };
    this.inflight.set(h.unique, fl);
    this.busy[0] = this.inflight.size;
    // WRITE and SETXATTR keep their request buffer until done; everything else decodes what it needs up front
    const keep = h.opcode === Op.WRITE || h.opcode === Op.SETXATTR;
    let p: Promise<Reply>;
    try {
      p = this.dispatch(h, buf, end, fl);
    } catch (err) {
      p = Promise.reject(err);
    }
    if (!keep) this.putBuf(buf);
    p.then(
      (r) => {
        this.inflight.delete(h.unique);
        if (fl.timer) clearInterval(fl.timer);
        this.busy[0] = this.inflight.size;
        if (fl.interrupted) this.dropLate(h, r);
        else this.send(h.unique, 0, r.payload);
        if (r.pooled) this.putBuf(r.pooled); // written synchronously: free again
      },
      (err: unknown) => {
        this.inflight.delete(h.unique);
        if (fl.timer) clearInterval(fl.timer);
        this.busy[0] = this.inflight.size;
        if (!fl.interrupted) this.fail(h, err);
      },
    ).finally(() => {
      if (keep) this.putBuf(buf);
    });
    return false;
  }

  private fail(h: InHeader, err: unknown, e = errnoOf(err)): void {
    if (e === osc.errno.EIO) this.log.warn({ err, op: h.opcode }, 'fuse op failed');
    else if (this.opts.debug) this.log.debug({ op: h.opcode, code: (err as { code?: string }).code }, 'fuse op error');
    this.send(h.unique, e, null);
  }

  /**
   * A READ or WRITE of at most SYNC_IO_MAX bytes that needs no wait (no copy-up first) is done and answered here, before
   * the next request is read: the core names the backing fd, and one native call does the pread/pwrite and writes the
   * reply. No promise, no in-flight entry (nothing can interrupt it), no reply header built in JS. Through the general
   * path the reply waited for the microtasks after the batch: in a cold 4 KiB random read that was ~6 us of each
   * ~90 us request. false: the general path takes it.
   */
  private ioNow(h: InHeader, b: Buffer, n: number): boolean {
    const I = IN_HEADER;
    const fh = u64(b, I);
    if (b.readUInt32LE(I + 16) > SYNC_IO_MAX) return false;
    let out: Buffer | null = null;
    try {
      const fd = h.opcode === Op.READ ? this.core.readFd(fh, h.nodeid) : this.core.writeFd(fh, h.nodeid);
      if (fd === null) return false; // a copy-up first
      if (h.opcode === Op.READ) out = this.getBuf();
      const got = native.fuseIo(this.fd, b, n, fd, out);
      if (got < 0) this.fail(h, { errno: -got, op: 'pread/pwrite' }, -got);
    } catch (err) {
      this.fail(h, err);
    }
    if (out) this.putBuf(out);
    this.putBuf(b);
    return true;
  }

  private interrupt(target: bigint, retry: boolean): void {
    const fl = this.inflight.get(target);
    if (!fl) {
      // the INTERRUPT can overtake its request between two outstanding reads: look once more
      if (retry) setImmediate(() => this.interrupt(target, false));
      return;
    }
    if (fl.signalled) return;
    fl.signalled = true;
    this.stats.interrupts++;
    if (this.answerIfDying(target, fl) || fl.timer) return;
    // the caller may get a fatal signal later (the kernel sends no second INTERRUPT): look now and then while the
    // request lasts (a long copy-up)
    fl.timer = setInterval(() => {
      if (this.answerIfDying(target, fl) || !this.inflight.has(target)) {
        clearInterval(fl.timer!);
        fl.timer = null;
      }
    }, 20);
    fl.timer.unref();
  }

  /** An interrupted request answered EINTR when it may be and its caller is dying. true: answered. */
  private answerIfDying(target: bigint, fl: InFlight): boolean {
    if (fl.interrupted) return true;
    if (!fl.interruptible || !fatalSignalPending(fl.pid)) return false;
    fl.interrupted = true;
    this.stats.eintr++;
    this.send(target, osc.errno.EINTR, null);
    return true;
  }

  /** A reply nobody waits for any more: undo what it would have handed the kernel (a handle). */
  private dropLate(h: InHeader, r: Reply): void {
    if (h.opcode === Op.OPEN && Buffer.isBuffer(r.payload)) {
      const fh = u64(r.payload, 0);
      this.released(fh);
      void this.core.release(fh).catch(() => undefined);
    }
    if (h.opcode === Op.OPENDIR && Buffer.isBuffer(r.payload)) this.dirs.delete(u64(r.payload, 0));
    if (h.opcode === Op.LOOKUP && Buffer.isBuffer(r.payload)) {
      const id = u64(r.payload, 0);
      if (id) this.forget(id, 1);
    }
  }

  private dispatch(h: InHeader, b: Buffer, end: number, fl: InFlight): Promise<Reply> {
    const c = this.core;
    const I = IN_HEADER;
    const id = h.nodeid;
    switch (h.opcode) {
      case Op.INIT:
        return Promise.resolve(this.init(b));
      case Op.DESTROY:
        return Promise.resolve(new Reply(null));
      case Op.LOOKUP: {
        const [name] = cstr(b, I, end);
        return (async () => {
          const n = await c.lookup(id, name);
          if (!n) return new Reply(entryOut(0, null, this.entryTimeout, 0));
          return new Reply(await this.entry(n));
        })();
      }
      case Op.GETATTR: {
        const flags = b.readUInt32LE(I);
        void flags;
        void FUSE_GETATTR_FH;
        return c.getattr(id).then((s) => new Reply(attrOut(s, this.attrTimeout)));
      }
      case Op.SETATTR:
        // a truncate waits for the node's OPENs in progress (it may be refused: see openFile)
        if (this.ptWanted && b.readUInt32LE(I) & FATTR.SIZE) return this.serialized(id, () => this.setattr(h, b));
        return this.setattr(h, b);
      case Op.READLINK:
        return c.readlink(id).then((t) => new Reply(Buffer.from(t)));
      case Op.SYMLINK: {
        const [name, o] = cstr(b, I, end);
        const [target] = cstr(b, o, end);
        return this.created(h, id, () => c.symlink(id, name, target), 0);
      }
      case Op.MKNOD: {
        const mode = b.readUInt32LE(I);
        const rdev = b.readUInt32LE(I + 4);
        const [name] = cstr(b, I + 16, end);
        return this.created(h, id, () => c.mknod(id, name, mode, rdev), mode);
      }
      case Op.MKDIR: {
        const mode = b.readUInt32LE(I);
        const [name] = cstr(b, I + 8, end);
        return this.created(h, id, () => c.mkdir(id, name, mode), mode);
      }
      case Op.UNLINK: {
        const [name] = cstr(b, I, end);
        return c.unlink(id, name).then(() => new Reply(null));
      }
      case Op.RMDIR: {
        const [name] = cstr(b, I, end);
        return c.rmdir(id, name).then(() => new Reply(null));
      }
      case Op.RENAME: {
        const newdir = u64(b, I);
        const [from, o] = cstr(b, I + 8, end);
        const [to] = cstr(b, o, end);
        return c.rename(id, from, newdir, to, 0).then(() => new Reply(null));
      }
      case Op.RENAME2: {
        const newdir = u64(b, I);
        const flags = b.readUInt32LE(I + 8);
        const [from, o] = cstr(b, I + 16, end);
        const [to] = cstr(b, o, end);
        return c.rename(id, from, newdir, to, flags).then(() => new Reply(null));
      }
      case Op.LINK: {
        const old = u64(b, I);
        const [name] = cstr(b, I + 8, end);
        return (async () => new Reply(await this.entry(await c.link(old, id, name))))();
      }
      case Op.OPEN: {
        const flags = b.readUInt32LE(I);
        if (this.zeroOpen) return Promise.reject(fsErr('ENOSYS')); // the kernel then opens without asking
        if (this.ptWanted) return this.serialized(id, () => this.openFile(id, flags));
        return (async () => {
          const node = c.node(id);
          const fh = await c.open(id, flags);
          // lower files never change: keep the page cache across opens. Upper files: every change goes through
          // this mount too, but the kernel gets no data cache flag for them (as the brief asks: lower only).
          return new Reply(openOut(fh, node.upper ? 0 : FOPEN_KEEP_CACHE));
        })();
      }
      case Op.READ: {
        const fh = u64(b, I);
        const off = u64(b, I + 8);
        const size = b.readUInt32LE(I + 16);
        if (size > this.bufSize) return Promise.reject(fsErr('EINVAL'));
        return (async () => {
          // a pooled buffer, not a fresh one per READ: a 1 GiB sequential read otherwise leaves ~1 GiB of garbage
          // buffers outside the heap for the GC to find (RSS +30 MiB on bench-fuse's seqread)
          const out = this.getBuf();
          try {
            const got = fh === 0 ? await c.readNode(id, out, size, off) : await c.read(fh, out, size, off);
            return new Reply(out.subarray(0, got), out);
          } catch (err) {
            this.putBuf(out);
            throw err;
          }
        })();
      }
      case Op.WRITE: {
        const fh = u64(b, I);
        const off = u64(b, I + 8);
        const size = b.readUInt32LE(I + 16);
        const data = b.subarray(I + 40, I + 40 + size);
        const written = async (): Promise<number> => {
          if (fh !== 0) return c.write(fh, data, data.length, off);
          if (!(await this.copiedUp(id, fl))) return 0; // answered EINTR already: write nothing
          return c.writeNode(id, data, data.length, off);
        };
        return written().then(writeOut);
      }
      case Op.FALLOCATE: {
        const fh = u64(b, I);
        const off = u64(b, I + 8);
        const len = u64(b, I + 16);
        const mode = b.readUInt32LE(I + 24);
        // the kernel drops its cached attributes after it (and its pages of a punched or zeroed range)
        const done = async (): Promise<void> => {
          if (fh !== 0) return c.fallocate(fh, mode, off, len);
          if (await this.copiedUp(id, fl)) return c.fallocateNode(id, mode, off, len);
        };
        return done().then(() => new Reply(null));
      }
      case Op.LSEEK: {
        // SEEK_DATA / SEEK_HOLE only (the kernel answers the others itself)
        const fh = u64(b, I);
        const off = u64(b, I + 8);
        const whence = b.readUInt32LE(I + 16);
        return (fh === 0 ? c.lseekNode(id, off, whence) : c.lseek(fh, off, whence)).then((pos) => {
          const o = Buffer.alloc(8);
          writeU64(o, pos, 0);
          return new Reply(o);
        });
      }
      case Op.COPY_FILE_RANGE:
      case Op.COPY_FILE_RANGE_64: {
        // test hook: answer as a server without COPY_FILE_RANGE_64, so the kernel falls back to the 32-bit op for
        // the rest of the connection (what kernels before 6.18 send): both replies stay tested here
        if (h.opcode === Op.COPY_FILE_RANGE_64 && this.no64) return Promise.reject(fsErr('ENOSYS'));
        // source: this request's node; fh 0 on both sides with zero-open (one connection: both or neither)
        const fhIn = u64(b, I);
        const offIn = u64(b, I + 8);
        const idOut = u64(b, I + 16);
        const fhOut = u64(b, I + 24);
        const offOut = u64(b, I + 32);
        const len = u64(b, I + 40);
        const flags = u64(b, I + 48);
        const copied = async (): Promise<number> => {
          if (fhIn !== 0 || fhOut !== 0) return c.copyFileRange(fhIn, offIn, fhOut, offOut, len, flags);
          if (!(await this.copiedUp(idOut, fl))) return 0;
          return c.copyFileRangeNode(id, offIn, idOut, offOut, len, flags);
        };
        // the core copies at most 64 MiB a request: the 32-bit count of fuse_write_out always holds it. The kernel
        // then drops its pages of the range written and its cached size and times of the destination.
        return copied().then((n) => {
          if (h.opcode === Op.COPY_FILE_RANGE) return writeOut(n);
          const o = Buffer.alloc(8);
          writeU64(o, n, 0);
          return new Reply(o);
        });
      }
      case Op.STATFS:
        return c.statfs().then((s) => {
          const o = Buffer.alloc(80);
          writeU64(o, s.blocks, 0);
          writeU64(o, s.bfree, 8);
          writeU64(o, s.bavail, 16);
          writeU64(o, s.files, 24);
          writeU64(o, s.ffree, 32);
          o.writeUInt32LE(s.bsize, 40);
          o.writeUInt32LE(s.namemax, 44);
          o.writeUInt32LE(s.bsize, 48);
          return new Reply(o);
        });
      case Op.RELEASE: {
        const fh = u64(b, I);
        this.released(fh);
        return c.release(fh).then(() => new Reply(null));
      }
      case Op.FSYNC: {
        const fh = u64(b, I);
        const datasync = (b.readUInt32LE(I + 8) & 1) !== 0;
        return (fh === 0 ? c.fsyncNode(id, datasync) : c.fsync(fh, datasync)).then(() => new Reply(null));
      }
      case Op.FLUSH:
        // nothing to flush (writes reach the backing file at once; no POSIX locks negotiated, so the kernel keeps
        // them): ENOSYS makes the kernel stop sending FLUSH, one request less on every close (close still returns 0)
        return Promise.reject(fsErr('ENOSYS'));
      case Op.SETXATTR: {
        const size = b.readUInt32LE(I);
        const flags = b.readUInt32LE(I + 4);
        const [name, o] = cstr(b, I + 8, end);
        const value = Buffer.from(b.subarray(o, o + size));
        return c.setxattr(id, name, value, flags).then(() => new Reply(null));
      }
      case Op.GETXATTR: {
        const size = b.readUInt32LE(I);
        const [name] = cstr(b, I + 8, end);
        return c.getxattr(id, name).then((v) => sized(v, size));
      }
      case Op.LISTXATTR: {
        const size = b.readUInt32LE(I);
        return c.listxattr(id).then((names) => sized(Buffer.from(names.map((x) => x + '\0').join('')), size));
      }
      case Op.REMOVEXATTR: {
        const [name] = cstr(b, I, end);
        return c.removexattr(id, name).then(() => new Reply(null));
      }
      case Op.OPENDIR:
        if (this.zeroOpenDirs) return Promise.reject(fsErr('ENOSYS')); // READDIR then comes with fh 0
        return (async () => {
          const d = this.dirHandle(id);
          const fh = this.nextDirFh++;
          this.dirs.set(fh, d);
          return new Reply(openOut(fh, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR));
        })();
      case Op.READDIR:
      case Op.READDIRPLUS:
        return this.readdir(h.opcode === Op.READDIRPLUS, id, u64(b, I), u64(b, I + 8), b.readUInt32LE(I + 16));
      case Op.RELEASEDIR:
        this.dirs.delete(u64(b, I));
        return Promise.resolve(new Reply(null));
      case Op.FSYNCDIR:
        return Promise.resolve(new Reply(null));
      case Op.ACCESS:
        return c.access(id, b.readUInt32LE(I)).then(() => new Reply(null));
      case Op.CREATE: {
        // zero-open: the kernel makes the file with MKNOD instead, and opens it without asking
        if (this.zeroOpen) return Promise.reject(fsErr('ENOSYS'));
        const flags = b.readUInt32LE(I);
        const mode = b.readUInt32LE(I + 4);
        const [name] = cstr(b, I + 16, end);
        return (async () => {
          const { node, fh } = await c.create(id, name, mode, flags);
          try {
            await this.own(h, id, node, mode);
            const e = await this.entry(node);
            return new Reply([e, this.ptWanted ? this.opened(node.ino, fh) : openOut(fh, 0)]);
          } catch (err) {
            await c.release(fh).catch(() => undefined);
            throw err;
          }
        })();
      }
      default:
        return Promise.reject(fsErr('ENOSYS'));
    }
  }

  /**
   * Zero-open: before a change by node id (WRITE, FALLOCATE, the destination of COPY_FILE_RANGE) a lower file is
   * copied up. A signal may end the wait (EINTR, nothing done; the copy-up goes on), as it may end an OPEN that
   * copies up. false: the request was answered EINTR already and must do nothing.
   */
  private async copiedUp(id: number, fl: InFlight): Promise<boolean> {
    if (!this.core.needsCopyUp(id)) return true;
    fl.interruptible = true;
    if (fl.signalled) this.answerIfDying(fl.unique, fl);
    await this.core.prepareWrite(id);
    fl.interruptible = false;
    return !fl.interrupted;
  }

  private init(b: Buffer): Reply {
    const major = b.readUInt32LE(IN_HEADER);
    const minor = b.readUInt32LE(IN_HEADER + 4);
    const maxReadahead = b.readUInt32LE(IN_HEADER + 8);
    const kflags = b.readUInt32LE(IN_HEADER + 12);
    const kflags2 = kflags & INIT.INIT_EXT ? b.readUInt32LE(IN_HEADER + 16) : 0;
    if (major !== FUSE_KERNEL_VERSION || minor < 31) {
      setImmediate(() => this.initFailed(new Error(`fuse: kernel protocol ${major}.${minor} is too old (need 7.31)`)));
      throw fsErr('EPROTO');
    }
    // no ATOMIC_O_TRUNC with zero-open: the kernel would take the (unsent) OPEN as having truncated; without it, it
    // sends a SETATTR of size 0.
    // READDIRPLUS always, not READDIRPLUS_AUTO: the core looks up every entry of a dir on its first listing anyway
    // (a READDIR needs inode numbers too), so the attributes cost only their bytes. With AUTO the kernel asks plain
    // READDIR past the first chunk, then a LOOKUP for each of those entries that is stat'ed: a cold tar of the
    // bench tree sent 121k requests, 23k of them LOOKUPs; with plus always, 98k and none (9.4-10.3 s -> 8.4-8.7 s).
    const want =
      INIT.ASYNC_READ |
      (this.zeroOpen ? 0 : INIT.ATOMIC_O_TRUNC) |
      INIT.BIG_WRITES |
      INIT.DO_READDIRPLUS |
      INIT.ASYNC_DIO |
      INIT.PARALLEL_DIROPS |
      INIT.MAX_PAGES |
      INIT.CACHE_SYMLINKS;
    // passthrough: INIT_EXT and FUSE_PASSTHROUGH (flags2) with max_stack_depth 1: backing files on plain filesystems
    // (a layer on a stacked fs, e.g. kernel overlay, is refused ELOOP: plain opens for it), and this mount can itself
    // be a layer of a kernel overlay (depth 2 could not). Never with WRITEBACK_CACHE (the kernel refuses the pair).
    const pt = this.ptWanted && (kflags2 & INIT2.PASSTHROUGH) !== 0;
    const flags = (want & kflags) | (pt ? INIT.INIT_EXT : 0);
    this.ptOn = pt;
    if (this.ptWanted && !pt) this.log.info({ minor, kflags2: kflags2.toString(16) }, 'fuse: passthrough asked for, but the kernel does not offer FUSE_PASSTHROUGH: files are read and written by READ/WRITE');
    const o = Buffer.alloc(64);
    o.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
    o.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
    o.writeUInt32LE(maxReadahead, 8);
    o.writeUInt32LE(flags >>> 0, 12);
    o.writeUInt16LE(64, 16); // max_background
    o.writeUInt16LE(48, 18); // congestion_threshold
    o.writeUInt32LE(this.maxWrite, 20);
    o.writeUInt32LE(1, 24); // time_gran: 1 ns
    o.writeUInt16LE(Math.ceil(this.maxWrite / 4096), 28); // max_pages
    o.writeUInt32LE(pt ? INIT2.PASSTHROUGH : 0, 32); // flags2
    o.writeUInt32LE(pt ? 1 : 0, 36); // max_stack_depth
    this.log.debug({ minor, kflags: kflags.toString(16), flags: flags.toString(16) }, 'fuse: init');
    setImmediate(() => this.initDone());
    return new Reply(o);
  }

  // ---- passthrough ------------------------------------------------------------------------------------------

  /** Run fn after the node's earlier serialized requests (OPENs, truncates) have ended, and before its later ones. */
  private serialized<T>(id: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.nodeChains.get(id) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.nodeChains.set(id, tail);
    void tail.then(() => {
      if (this.nodeChains.get(id) === tail) this.nodeChains.delete(id);
    });
    return run;
  }

  /**
   * OPEN with passthrough on. The kernel's rules (fs/fuse/iomode.c): while an inode has a backing file (from its
   * first passthrough open until the last one is released), every open of it must be a passthrough open naming the
   * same backing file (another one fails EBUSY, a plain one EINVAL: the caller sees EIO); while it has plain opens
   * (cached io mode), a passthrough open fails ETXTBSY (EIO too). So each node has at most one backing id, shared
   * by all its opens and closed at the last RELEASE (the kernel takes its own reference when the opener gets our
   * reply, after our write returns: the id must outlive every reply naming it, which the count guarantees), and a
   * node with plain opens gets plain opens until they are all released.
   *
   * The overlay's part: a lower file opened for reading gets the lower file as backing. A write open (or O_TRUNC)
   * of it copies it up, and its backing would be the upper copy, which the kernel refuses while the lower one is
   * attached: such an open fails ETXTBSY (before any copy-up) as long as a passthrough open of the lower file lives;
   * so does a truncate by path (SETATTR size). Changes of metadata (chmod, xattrs, utimes, link) still copy up: the
   * upper copy then has the lower file's data, and later read opens keep naming the lower file until its opens are
   * all released. So a passthrough read never sees data other than the file's. OPENs of a node (and truncates) run
   * one at a time, so that the check and the copy-up or attach that follow it see the same state.
   */
  private async openFile(id: number, flags: number): Promise<Reply> {
    const c = this.core;
    const write = (flags & 3) !== fsc.O_RDONLY || (flags & fsc.O_TRUNC) !== 0;
    if (write && (await this.lowerBacked(id))) throw fsErr('ETXTBSY');
    const fh = await c.open(id, flags);
    return new Reply(this.opened(id, fh));
  }

  /**
   * Whether passthrough opens of node id read its lower file (a change of its data must then be refused). The
   * kernel sends RELEASE in the background when a file is closed, so one from the caller's own close may still be
   * queued behind this request: wait up to 50 ms for the last one before saying yes.
   */
  private async lowerBacked(id: number): Promise<boolean> {
    for (let i = 0; ; i++) {
      const bk = this.backings.get(id);
      if (!bk || bk.upper) return false;
      if (i === 10) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    this.ptCounts.busy++;
    return true;
  }

  /** The fuse_open_out of a new handle fh of node id (OPEN, CREATE): passthrough if it can be, else plain. */
  private opened(id: number, fh: number): Buffer {
    const file = this.core.handleFile(fh);
    let bk = this.backings.get(id);
    if (!bk && !this.plainOpens.has(id) && this.ptOn) bk = this.attach(id, file) ?? undefined;
    if (bk) {
      bk.opens++;
      this.ptCounts.passthroughOpens++;
      this.openFiles.set(fh, { id, backing: bk });
      return openOut(fh, FOPEN_PASSTHROUGH, bk.id);
    }
    this.plainOpens.set(id, (this.plainOpens.get(id) ?? 0) + 1);
    this.ptCounts.plainOpens++;
    this.openFiles.set(fh, { id, backing: null });
    // lower files never change: keep the page cache across opens (see the non-passthrough OPEN)
    return openOut(fh, file.upper ? 0 : FOPEN_KEEP_CACHE);
  }

  /**
   * Register the file under a handle as node id's backing file. A failure falls back to plain opens for the node
   * (and, for an error every file would get, for the whole mount); each errno is logged once, at info.
   */
  private attach(id: number, file: { fd: number; upper: boolean }): Backing | null {
    try {
      if (this.ptForcedError) throw Object.assign(new Error(`${this.ptForcedError} (LAYERFS_FUSE_PASSTHROUGH_FAIL)`), { code: this.ptForcedError });
      const bk: Backing = { id: native.backingOpen(this.fd, file.fd), upper: file.upper, opens: 0 };
      this.backings.set(id, bk);
      this.ptCounts.backingOpens++;
      return bk;
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'EIO';
      const global = BACKING_GLOBAL_ERRORS.has(code);
      this.ptCounts.failures++;
      if (global) this.ptOn = false;
      if (!this.ptLogged.has(code)) {
        this.ptLogged.add(code);
        this.log.info(
          { code, err: (err as Error).message },
          global ? 'fuse: passthrough unavailable (FUSE_DEV_IOC_BACKING_OPEN failed): files are read and written by READ/WRITE' : 'fuse: passthrough: the kernel refused a backing file; opens of such files are read and written by READ/WRITE',
        );
      }
      return null;
    }
  }

  /** RELEASE of fh (or an OPEN reply dropped): its node's count of opens goes down; the last one closes the id. */
  private released(fh: number): void {
    const o = this.openFiles.get(fh);
    if (!o) return;
    this.openFiles.delete(fh);
    const bk = o.backing;
    if (bk === null) {
      const n = (this.plainOpens.get(o.id) ?? 1) - 1;
      if (n > 0) this.plainOpens.set(o.id, n);
      else this.plainOpens.delete(o.id);
      return;
    }
    if (--bk.opens > 0) return;
    if (this.backings.get(o.id) === bk) this.backings.delete(o.id);
    try {
      native.backingClose(this.fd, bk.id);
      this.ptCounts.backingCloses++;
    } catch (err) {
      this.log.debug({ err, id: bk.id }, 'fuse: FUSE_DEV_IOC_BACKING_CLOSE failed');
    }
  }

  /** A new node made for the caller: owned by the caller's uid/gid (gid: the parent's, if it is set-gid). */
  private async own(h: InHeader, parentId: number, node: Node, mode: number): Promise<void> {
    if (h.uid === this.myUid && h.gid === this.myGid) return;
    const parent = await this.core.getattr(parentId);
    const gid = parent.mode & S_ISGID ? -1 : h.gid;
    if (h.uid === this.myUid && gid === -1) return;
    await this.core.chown(node.ino, h.uid, gid);
    // chown(2) drops set-id bits of non-dirs: put back what the creator asked for
    if (mode & 0o6000 && (mode & S_IFMT) !== S_IFDIR && node.kind !== 'symlink') await this.core.chmod(node.ino, mode & 0o7777);
  }

  private async created(h: InHeader, parentId: number, make: () => Promise<Node>, mode: number): Promise<Reply> {
    const n = await make();
    await this.own(h, parentId, n, mode);
    return new Reply(await this.entry(n));
  }

  private async setattr(h: InHeader, b: Buffer): Promise<Reply> {
    const c = this.core;
    const I = IN_HEADER;
    const id = h.nodeid;
    const valid = b.readUInt32LE(I);
    const fh = u64(b, I + 8);
    const size = u64(b, I + 16);
    const atime = Number(b.readBigInt64LE(I + 32));
    const mtime = Number(b.readBigInt64LE(I + 40));
    const atimens = b.readUInt32LE(I + 56);
    const mtimens = b.readUInt32LE(I + 60);
    const mode = b.readUInt32LE(I + 68);
    const uid = b.readUInt32LE(I + 76);
    const gid = b.readUInt32LE(I + 80);
    // passthrough opens reading the lower file: its upper copy must keep the lower data (see openFile)
    if (valid & FATTR.SIZE && (await this.lowerBacked(id))) throw fsErr('ETXTBSY');
    if (valid & (FATTR.UID | FATTR.GID)) await c.chown(id, valid & FATTR.UID ? uid : -1, valid & FATTR.GID ? gid : -1);
    if (valid & FATTR.MODE) await c.chmod(id, mode);
    if (valid & FATTR.SIZE) {
      if (valid & FATTR.FH) {
        try {
          await c.ftruncate(fh, size);
        } catch (err) {
          if ((err as { code?: string }).code !== 'EBADF') throw err;
          await c.truncate(id, size);
        }
      } else {
        await c.truncate(id, size);
      }
    }
    const setA = (valid & (FATTR.ATIME | FATTR.ATIME_NOW)) !== 0;
    const setM = (valid & (FATTR.MTIME | FATTR.MTIME_NOW)) !== 0;
    if (setA || setM) {
      const t = (set: boolean, now: number, sec: number, nsec: number): TimeSpec => (!set ? 'omit' : now ? 'now' : { sec, nsec });
      await c.utimens(id, t(setA, valid & FATTR.ATIME_NOW, atime, atimens), t(setM, valid & FATTR.MTIME_NOW, mtime, mtimens));
    }
    return new Reply(attrOut(await c.getattr(id), this.attrTimeout));
  }

  /** A fresh listing state for dir node id (an OPENDIR's, or zero-open's by node id). */
  private dirHandle(id: number): DirHandle {
    const n = this.core.node(id);
    if (n.kind !== 'dir') throw fsErr('ENOTDIR');
    return { id, entries: null, loading: null, parent: n.parent?.ino ?? ROOT_ID };
  }

  private async listing(d: DirHandle): Promise<DirEntry[]> {
    if (d.entries) return d.entries;
    d.loading ??= this.core.readdir(d.id);
    d.entries = await d.loading;
    return d.entries;
  }

  /** Entries from `offset` on: offsets 1 and 2 are . and .., then the core's listing (cached for the handle). */
  private async readdir(plus: boolean, id: number, fh: number, offset: number, size: number): Promise<Reply> {
    let d = fh === 0 ? this.nodeDirs.get(id) : this.dirs.get(fh);
    if (!d && fh === 0) this.nodeDirs.set(id, (d = this.dirHandle(id)));
    if (!d) throw fsErr('EBADF');
    if (offset === 0) d.entries = d.loading = null; // rewinddir: a fresh listing
    const entries = await this.listing(d);
    const total = entries.length + 2;
    if (fh === 0 && offset >= total) this.nodeDirs.delete(id); // read out (the kernel's final, empty READDIR)
    // which entries fit (sizes depend on the names only), then their attributes all at once
    const nameOf = (i: number): Buffer => Buffer.from(i === 0 ? '.' : i === 1 ? '..' : entries[i - 2].name);
    const names: Buffer[] = [];
    let used = 0;
    for (let i = offset; i < total; i++) {
      const name = nameOf(i);
      const need = direntSize(name.length) + (plus ? ENTRY_OUT : 0);
      if (used + need > size) break;
      used += need;
      names.push(name);
    }
    const needStat = (i: number): boolean => i >= 2 && (plus || entries[i - 2].kind === 'other');
    const stats = await Promise.all(names.map((_, k) => (needStat(offset + k) ? this.core.getattr(entries[offset + k - 2].ino).catch(() => null) : null)));
    const out = Buffer.allocUnsafe(used);
    let pos = 0;
    names.forEach((name, k) => {
      const i = offset + k;
      const e = i >= 2 ? entries[i - 2] : null;
      const ino = i === 0 ? d.id : i === 1 ? d.parent : e!.ino;
      const st = stats[k];
      let type = e ? dtype(TYPE_MODE[e.kind]) : 4;
      if (st && dtype(st.mode) !== 0) type = dtype(st.mode);
      if (plus) {
        // a node the core dropped while the attributes were read (FORGET) is not handed out: the kernel looks it up
        const give = st !== null && this.core.known(ino);
        writeEntry(out, pos, give ? ino : 0, give ? st : null, this.entryTimeout, this.attrTimeout);
        if (give) this.ref(ino);
        pos += ENTRY_OUT;
      }
      pos = writeDirent(out, pos, ino, i + 1, name, type);
    });
    return new Reply(out.subarray(0, pos));
  }
}

/** fuse_write_out: a count of bytes written (WRITE, COPY_FILE_RANGE). */
function writeOut(n: number): Reply {
  const o = Buffer.alloc(8);
  o.writeUInt32LE(n, 0);
  return new Reply(o);
}

/** getxattr/listxattr: size 0 asks for the length; a too small buffer is ERANGE. */
function sized(v: Buffer, size: number): Reply {
  if (size === 0) {
    const o = Buffer.alloc(8);
    o.writeUInt32LE(v.length, 0);
    return new Reply(o);
  }
  if (v.length > size) throw fsErr('ERANGE');
  return new Reply(v);
}
