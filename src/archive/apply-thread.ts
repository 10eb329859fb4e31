/**
 * applyLayer on a worker thread: the tar parsing and the applier's own work move off the calling
 * thread. The caller's stream is read here and its chunks are copied to the worker (at most
 * IN_FLIGHT unconsumed at once: the worker acknowledges a chunk when its applier pulls the next);
 * the result, or the error (a LayerfsError keeps its code and what), comes back. `image import`
 * uses it when it applies several layers at once, so that their parsing runs on several cores
 * instead of taking turns on the main thread; the digests, file writes (writer.ts) and
 * decompression (compress.ts) already ran off the main thread.
 */
import { Readable } from 'node:stream';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { LayerfsError, type ErrorCode } from '../common/errors.js';
import { applyLayer, type ApplyOptions, type ApplyResult } from './apply.js';

const IN_FLIGHT = 8;

interface WireError {
  name: string;
  message: string;
  code?: string;
  what?: string;
  syscall?: string;
  errno?: number;
}

function toWire(e: unknown): WireError {
  const x = e as NodeJS.ErrnoException & { what?: string };
  if (!(x instanceof Error)) return { name: 'Error', message: String(e) };
  return { name: x.name, message: x.message, ...(typeof x.code === 'string' ? { code: x.code } : {}), ...(x.what !== undefined ? { what: x.what } : {}), ...(x.syscall ? { syscall: x.syscall } : {}), ...(x.errno !== undefined ? { errno: x.errno } : {}) };
}

function fromWire(w: WireError): Error {
  if (w.name === 'LayerfsError' && w.code && w.what !== undefined) {
    const why = w.message.startsWith(w.what + ': ') ? w.message.slice(w.what.length + 2) : w.message;
    return new LayerfsError(w.code as ErrorCode, w.what, why);
  }
  const e = new Error(w.message) as NodeJS.ErrnoException;
  if (w.code !== undefined) e.code = w.code;
  if (w.syscall !== undefined) e.syscall = w.syscall;
  if (w.errno !== undefined) e.errno = w.errno;
  return e;
}

type ToWorker = { t: 'data'; chunk: Uint8Array } | { t: 'end' } | { t: 'abort'; err: WireError };
type FromWorker = { t: 'ack' } | { t: 'done'; res: ApplyResult } | { t: 'error'; err: WireError };

export function applyLayerThreaded(input: NodeJS.ReadableStream | Readable, dir: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const { onBytes, ...wireOpts } = opts;
  return new Promise<ApplyResult>((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { layerfsApply: { dir, opts: wireOpts } }, name: 'layerfs-apply' });
    let inflight = 0;
    let wake: (() => void) | null = null;
    let settled = false;
    let feedErr: unknown = null;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      void w.terminate();
      fn();
    };
    w.on('message', (m: FromWorker) => {
      if (m.t === 'ack') {
        inflight--;
        const f = wake;
        wake = null;
        f?.();
      } else if (m.t === 'done') finish(() => (feedErr ? reject(feedErr) : resolve(m.res)));
      else finish(() => reject(feedErr ?? fromWire(m.err)));
    });
    w.on('error', (e) => finish(() => reject(feedErr ?? e)));
    w.on('exit', (code) => finish(() => reject(feedErr ?? new Error(`layerfs: apply thread exited (code ${code})`))));
    const src: Readable = input instanceof Readable ? input : new Readable().wrap(input);
    void (async () => {
      let n = 0;
      try {
        for await (const c of src as AsyncIterable<Buffer | string>) {
          if (settled) break;
          const b = typeof c === 'string' ? Buffer.from(c) : c;
          while (inflight >= IN_FLIGHT && !settled) await new Promise<void>((r) => (wake = r));
          if (settled) break;
          const copy = new Uint8Array(b.length);
          copy.set(b);
          inflight++;
          w.postMessage({ t: 'data', chunk: copy } satisfies ToWorker, [copy.buffer]);
          n += b.length;
          onBytes?.(n);
        }
        if (!settled) w.postMessage({ t: 'end' } satisfies ToWorker);
      } catch (e) {
        // the source failed: the worker's apply fails too; its clean-up is awaited before we reject
        feedErr = e;
        if (!settled) w.postMessage({ t: 'abort', err: toWire(e) } satisfies ToWorker);
      }
    })();
  });
}

// ---------- worker side ----------
const job = !isMainThread ? (workerData as { layerfsApply?: { dir: string; opts: ApplyOptions } } | null)?.layerfsApply : undefined;
if (job && parentPort) {
  const port = parentPort;
  const queue: Buffer[] = [];
  let ended = false;
  let failed: Error | null = null;
  let wake: (() => void) | null = null;
  port.on('message', (m: ToWorker) => {
    if (m.t === 'data') queue.push(Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength));
    else if (m.t === 'end') ended = true;
    else failed = fromWire(m.err);
    const f = wake;
    wake = null;
    f?.();
  });
  async function* chunks(): AsyncGenerator<Buffer> {
    for (;;) {
      if (failed) throw failed;
      const c = queue.shift();
      if (c) {
        yield c;
        port.postMessage({ t: 'ack' } satisfies FromWorker);
        continue;
      }
      if (ended) return;
      await new Promise<void>((r) => (wake = r));
    }
  }
  applyLayer(Readable.from(chunks(), { objectMode: false }), job.dir, job.opts).then(
    (res) => port.postMessage({ t: 'done', res } satisfies FromWorker),
    (e: unknown) => port.postMessage({ t: 'error', err: toWire(e) } satisfies FromWorker),
  );
}
