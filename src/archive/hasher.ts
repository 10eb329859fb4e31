/**
 * sha256 of a byte stream, computed on a helper thread.
 *
 * Why: hashing a layer (≈0.6–1 s of CPU per GB with SHA-NI) on the main thread competes with tar
 * parsing and the file-system calls the applier makes there. One worker thread, shared by every
 * apply in the process and created on first use, hashes instead. Each stream copies its chunks into
 * its own SharedArrayBuffer ring (a memcpy, ~10x cheaper than hashing) and posts offsets; the worker
 * acknowledges what it has hashed, which frees ring space (backpressure: update() returns a promise
 * when the ring is full). The worker is unref'd while no stream is active, so it never keeps the
 * process alive. If a worker cannot be started, hashing falls back to the main thread.
 */
import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

export interface StreamHash {
  /** Feed bytes; a promise means "wait before feeding more" (the bytes were taken). */
  update(c: Buffer): Promise<void> | undefined;
  /** 'sha256:<hex>' of everything fed. */
  digest(): Promise<string>;
  /** Give up (error path); never throws. */
  abort(): void;
}

const RING = 32 << 20;
/** Bytes copied into the ring before the worker is told (fewer messages, fewer wake-ups). */
const BATCH = 4 << 20;

const WORKER_SRC = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const jobs = new Map();
parentPort.on('message', (m) => {
  if (m.t === 'o') jobs.set(m.id, { h: createHash('sha256'), ring: new Uint8Array(m.sab) });
  else if (m.t === 'u') {
    const j = jobs.get(m.id);
    if (!j) return;
    j.h.update(j.ring.subarray(m.off, m.off + m.len));
    parentPort.postMessage({ t: 'a', id: m.id, n: m.len });
  } else if (m.t === 'd') {
    const j = jobs.get(m.id);
    jobs.delete(m.id);
    parentPort.postMessage({ t: 'd', id: m.id, hex: j ? j.h.digest('hex') : null });
  } else if (m.t === 'x') jobs.delete(m.id);
});
`;

interface Job {
  onAck(n: number): void;
  onDigest(hex: string | null): void;
  onFail(e: Error): void;
}

let shared: { w: Worker; jobs: Map<number, Job>; next: number } | null = null;
let broken = false;

function pool(): typeof shared {
  if (shared || broken) return shared;
  let w: Worker;
  try {
    w = new Worker(WORKER_SRC, { eval: true, name: 'layerfs-sha256' });
  } catch {
    broken = true;
    return null;
  }
  const s = { w, jobs: new Map<number, Job>(), next: 1 };
  w.unref();
  w.on('message', (m: { t: string; id: number; n?: number; hex?: string | null }) => {
    const j = s.jobs.get(m.id);
    if (!j) return;
    if (m.t === 'a') j.onAck(m.n!);
    else if (m.t === 'd') j.onDigest(m.hex ?? null);
  });
  const fail = (e: Error) => {
    if (shared === s) shared = null;
    for (const j of s.jobs.values()) j.onFail(e);
    s.jobs.clear();
  };
  w.on('error', fail);
  w.on('exit', (code) => fail(new Error(`layerfs: sha256 worker exited (code ${code})`)));
  shared = s;
  return s;
}

class MainHash implements StreamHash {
  private readonly h: Hash = createHash('sha256');
  update(c: Buffer): undefined {
    this.h.update(c);
    return undefined;
  }
  digest(): Promise<string> {
    return Promise.resolve('sha256:' + this.h.digest('hex'));
  }
  abort(): void {}
}

class WorkerHash implements StreamHash {
  private readonly ring: Buffer;
  private readonly sab: SharedArrayBuffer;
  private pos = 0; // next write offset in the ring
  private inflight = 0; // bytes in the ring, not yet acknowledged (posted or not)
  private unposted = 0; // bytes just before pos not yet posted to the worker
  private wake: (() => void) | null = null;
  private err: Error | null = null;
  private done: ((hex: string | null) => void) | null = null;
  private closed = false;

  constructor(
    private readonly s: NonNullable<typeof shared>,
    private readonly id: number,
  ) {
    this.sab = new SharedArrayBuffer(RING);
    this.ring = Buffer.from(this.sab);
    if (s.jobs.size === 0) s.w.ref();
    s.jobs.set(id, {
      onAck: (n) => {
        this.inflight -= n;
        this.kick();
      },
      onDigest: (hex) => {
        this.release();
        this.done?.(hex);
      },
      onFail: (e) => {
        this.err = e;
        this.closed = true;
        this.kick();
        this.done?.(null);
      },
    });
    s.w.postMessage({ t: 'o', id, sab: this.sab });
  }

  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private release(): void {
    if (this.closed) return;
    this.closed = true;
    this.s.jobs.delete(this.id);
    if (this.s.jobs.size === 0) this.s.w.unref();
  }

  update(c: Buffer): Promise<void> | undefined {
    if (this.err) throw this.err;
    let off = 0;
    while (off < c.length) {
      const room = RING - this.inflight;
      if (room === 0) {
        this.flush();
        return this.waitThen(c.subarray(off));
      }
      const n = Math.min(c.length - off, room, RING - this.pos);
      c.copy(this.ring, this.pos, off, off + n);
      this.inflight += n;
      this.unposted += n;
      this.pos += n;
      off += n;
      if (this.pos === RING || this.unposted >= BATCH) this.flush();
      if (this.pos === RING) this.pos = 0;
    }
    return undefined;
  }

  private flush(): void {
    if (this.unposted === 0) return;
    const end = this.pos === 0 ? RING : this.pos;
    this.s.w.postMessage({ t: 'u', id: this.id, off: end - this.unposted, len: this.unposted });
    this.unposted = 0;
  }

  private async waitThen(rest: Buffer): Promise<void> {
    while (rest.length) {
      if (this.inflight === RING) {
        this.flush();
        await new Promise<void>((r) => (this.wake = r));
      }
      if (this.err) throw this.err;
      const n = Math.min(rest.length, RING - this.inflight, RING - this.pos);
      if (n === 0) continue;
      const w = this.update(rest.subarray(0, n));
      if (w) await w;
      rest = rest.subarray(n);
    }
  }

  async digest(): Promise<string> {
    if (this.err) throw this.err;
    this.flush();
    const hex = await new Promise<string | null>((resolve) => {
      this.done = resolve;
      this.s.w.postMessage({ t: 'd', id: this.id });
    });
    if (this.err) throw this.err;
    if (hex === null) throw new Error('layerfs: sha256 worker lost a stream');
    return 'sha256:' + hex;
  }

  abort(): void {
    if (this.closed) return;
    this.release();
    try {
      this.s.w.postMessage({ t: 'x', id: this.id });
    } catch {
      /* worker gone */
    }
  }
}

/** A sha256 for one stream: on the shared helper thread, or on this thread if none can run. */
export function streamHash(): StreamHash {
  if (process.env.LAYERFS_HASH_THREAD === '0') return new MainHash();
  const s = pool();
  return s ? new WorkerHash(s, s.next++) : new MainHash();
}
