/**
 * Small regular files written by a helper thread, in batches.
 *
 * Why: for a layer of tens of thousands of small files, the create/write/chown/utimes/close calls
 * are most of the work. Through libuv's threadpool each call is a round trip (a futex wake-up for
 * a pool thread and an epoll return on the main thread); made synchronously on the main thread they
 * serialise with tar parsing. A worker thread takes batches of files (paths, metadata, and the
 * bodies copied into a SharedArrayBuffer ring) and makes the same synchronous calls, on the other
 * core, while the main thread parses on.
 *
 * Safety is unchanged: the applier has already checked and created every parent directory (in
 * entry order, before the file is queued); the worker only creates the final component with
 * O_CREAT|O_EXCL|O_NOFOLLOW, as the applier's own background jobs did. Anything that removes or
 * replaces a path, and hardlinks to a queued file, first wait for the queue (Applier.drain/pending).
 * After the first failure a session writes nothing more; the error comes back with its entry.
 */
import { Worker } from 'node:worker_threads';

const RING = 32 << 20;
const BATCH_FILES = 512;
const BATCH_BYTES = 4 << 20;
const FIELDS = 9;

const WORKER_SRC = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const sessions = new Map();
parentPort.on('message', (m) => {
  if (m.t === 'o') { sessions.set(m.id, { ring: Buffer.from(m.sab), flags: m.flags, failed: false }); return; }
  if (m.t === 'x') { sessions.delete(m.id); return; }
  const s = sessions.get(m.id);
  let err = null;
  if (s && !s.failed) {
    const ops = m.ops;
    for (let i = 0; i < ops.length; i += ${FIELDS}) {
      const path = ops[i], mode = ops[i + 1], off = ops[i + 2], len = ops[i + 3];
      const uid = ops[i + 4], gid = ops[i + 5], fl = ops[i + 6], at = ops[i + 7], mt = ops[i + 8];
      try {
        const fd = fs.openSync(path, s.flags, mode & 0o777);
        try {
          let o = 0;
          while (o < len) o += fs.writeSync(fd, s.ring, off + o, len - o);
          if (fl & 1) fs.fchownSync(fd, uid, gid);
          if (fl & 2) fs.fchmodSync(fd, mode);
          fs.futimesSync(fd, at < 0 ? new Date(at * 1000) : at, mt < 0 ? new Date(mt * 1000) : mt);
        } finally {
          fs.closeSync(fd);
        }
      } catch (e) {
        s.failed = true;
        err = { index: i / ${FIELDS}, code: e.code, syscall: e.syscall, errno: e.errno, message: e.message };
        break;
      }
    }
  }
  parentPort.postMessage({ t: 'b', id: m.id, seq: m.seq, err });
});
`;

export interface WriteError {
  entry: string;
  error: NodeJS.ErrnoException;
}

interface SessionHooks {
  onBatch(seq: number, err: { index: number; code?: string; syscall?: string; errno?: number; message: string } | null): void;
  onFail(e: Error): void;
}

let shared: { w: Worker; sessions: Map<number, SessionHooks>; next: number } | null = null;
let broken = false;

function pool(): typeof shared {
  if (shared || broken) return shared;
  let w: Worker;
  try {
    w = new Worker(WORKER_SRC, { eval: true, name: 'layerfs-apply-writer' });
  } catch {
    broken = true;
    return null;
  }
  const s = { w, sessions: new Map<number, SessionHooks>(), next: 1 };
  w.unref();
  w.on('message', (m: { t: string; id: number; seq: number; err: Parameters<SessionHooks['onBatch']>[1] }) => {
    s.sessions.get(m.id)?.onBatch(m.seq, m.err);
  });
  const fail = (e: Error) => {
    if (shared === s) shared = null;
    for (const h of s.sessions.values()) h.onFail(e);
    s.sessions.clear();
  };
  w.on('error', fail);
  w.on('exit', (code) => fail(new Error(`layerfs: apply writer thread exited (code ${code})`)));
  shared = s;
  return s;
}

interface Batch {
  seq: number;
  ops: (string | number)[];
  rels: string[];
  entries: string[];
  ringBytes: number;
  done: Promise<void>;
  resolve: () => void;
}

/** One apply's queue of small files for the writer thread. */
export class FileWriter {
  private readonly ring: Buffer;
  private pos = 0;
  private used = 0; // ring bytes held by queued or unacknowledged batches
  private cur: Batch | null = null;
  private readonly sent = new Map<number, Batch>();
  private seq = 0;
  private wake: (() => void) | null = null;
  /** First failure: the applier checks it (and throws it) at each entry and when it drains. */
  error: unknown = null;
  private closed = false;

  private constructor(
    private readonly s: NonNullable<typeof shared>,
    private readonly id: number,
    flags: number,
    private readonly onDone: (rels: string[], p: Promise<void>) => void,
    private readonly wrapError: (e: unknown, entry: string) => unknown,
  ) {
    const sab = new SharedArrayBuffer(RING);
    this.ring = Buffer.from(sab);
    if (s.sessions.size === 0) s.w.ref();
    s.sessions.set(id, {
      onBatch: (seq, err) => this.acked(seq, err),
      onFail: (e) => {
        this.error ??= e;
        for (const b of this.sent.values()) b.resolve();
        this.sent.clear();
        this.kick();
      },
    });
    s.w.postMessage({ t: 'o', id, sab, flags });
  }

  /** null when no writer thread can run (the applier then writes in line). */
  static open(
    flags: number,
    onQueued: (rels: string[], p: Promise<void>) => void,
    wrapError: (e: unknown, entry: string) => unknown,
  ): FileWriter | null {
    if (process.env.LAYERFS_APPLY_WRITER === '0') return null;
    const s = pool();
    return s ? new FileWriter(s, s.next++, flags, onQueued, wrapError) : null;
  }

  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private acked(seq: number, err: Parameters<SessionHooks['onBatch']>[1]): void {
    const b = this.sent.get(seq);
    if (!b) return;
    this.sent.delete(seq);
    this.used -= b.ringBytes;
    if (err && this.error === null) {
      const e = new Error(err.message) as NodeJS.ErrnoException;
      if (err.code !== undefined) e.code = err.code;
      if (err.syscall !== undefined) e.syscall = err.syscall;
      if (err.errno !== undefined) e.errno = err.errno;
      this.error = this.wrapError(e, b.entries[err.index] ?? '(unknown entry)');
    }
    b.resolve();
    this.kick();
  }

  /**
   * Queue one file. Returns a promise when the ring is full (wait before the next add). The data
   * is copied; the caller may reuse it.
   */
  add(
    rel: string,
    entry: string,
    abs: string,
    mode: number,
    data: Buffer,
    uid: number,
    gid: number,
    chown: boolean,
    chmod: boolean,
    at: number,
    mt: number,
  ): Promise<void> | undefined {
    const n = data.length;
    let waste = 0;
    if (this.pos + n > RING) waste = RING - this.pos;
    if (this.used + waste + n > RING) return this.waitRoom(n).then(() => this.add(rel, entry, abs, mode, data, uid, gid, chown, chmod, at, mt));
    if (waste) this.pos = 0;
    const b = (this.cur ??= this.newBatch());
    data.copy(this.ring, this.pos);
    b.ops.push(abs, mode, this.pos, n, uid, gid, (chown ? 1 : 0) | (chmod ? 2 : 0), at, mt);
    b.rels.push(rel);
    b.entries.push(entry);
    b.ringBytes += waste + n;
    this.used += waste + n;
    this.pos += n;
    if (b.rels.length >= BATCH_FILES || b.ringBytes >= BATCH_BYTES) this.flush();
    return undefined;
  }

  private async waitRoom(n: number): Promise<void> {
    this.flush();
    while (this.error === null && this.used + n + (this.pos + n > RING ? RING - this.pos : 0) > RING) {
      if (this.sent.size === 0) {
        // nothing in flight: the ring is empty, start over at 0
        this.pos = 0;
        this.used = 0;
        break;
      }
      await new Promise<void>((r) => (this.wake = r));
    }
    if (this.error) throw this.error;
  }

  private newBatch(): Batch {
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    return { seq: ++this.seq, ops: [], rels: [], entries: [], ringBytes: 0, done, resolve };
  }

  /** Send the open batch to the thread. */
  flush(): void {
    const b = this.cur;
    if (!b) return;
    this.cur = null;
    if (this.error !== null || this.closed) {
      this.used -= b.ringBytes;
      b.resolve();
      return;
    }
    this.sent.set(b.seq, b);
    this.onDone(b.rels, b.done);
    this.s.w.postMessage({ t: 'b', id: this.id, seq: b.seq, ops: b.ops });
  }

  /** Flush and wait for everything queued so far. */
  async drain(): Promise<void> {
    this.flush();
    while (this.sent.size) await Promise.all([...this.sent.values()].map((b) => b.done));
  }

  /** Whether rel sits in the batch not yet sent (the caller flushes before waiting for it). */
  holds(rel: string): boolean {
    return this.cur !== null && this.cur.rels.includes(rel);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cur = null;
    this.s.sessions.delete(this.id);
    if (this.s.sessions.size === 0) this.s.w.unref();
    try {
      this.s.w.postMessage({ t: 'x', id: this.id });
    } catch {
      /* thread gone */
    }
  }
}
