/** The CLI's side of the daemon's socket (see server.ts). */
import net from 'node:net';
import { LayerfsError, type ErrorCode } from '../common/errors.js';
import type { ApiMethod } from './methods.js';

/** A request that reached the daemon but got no answer: the daemon went away meanwhile. */
export class DaemonGone extends Error {}

export class ApiClient {
  private nextId = 1;
  private buf = '';
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void; onEvent?: ((ev: unknown) => void) | undefined; lent?: () => void }>();

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk) => {
      this.buf += chunk.toString('utf8');
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const msg = JSON.parse(this.buf.slice(0, nl)) as { id: number; event?: unknown; result?: unknown; lent?: boolean; error?: { code: string; what: string; message: string } };
        this.buf = this.buf.slice(nl + 1);
        const p = this.pending.get(msg.id);
        if (!p) continue;
        if (msg.event !== undefined) p.onEvent?.(msg.event);
        else if (msg.lent) p.lent?.();
        else {
          this.pending.delete(msg.id);
          if (msg.error) {
            const why = msg.error.message.startsWith(`${msg.error.what}: `) ? msg.error.message.slice(msg.error.what.length + 2) : msg.error.message;
            p.reject(new LayerfsError(msg.error.code as ErrorCode, msg.error.what, why));
          } else p.resolve(msg.result);
        }
      }
    });
    const gone = () => {
      for (const p of this.pending.values()) p.reject(new DaemonGone('the daemon closed the connection before answering'));
      this.pending.clear();
    };
    sock.on('close', gone);
    sock.on('error', gone);
  }

  /** Connect to a daemon's socket; null when there is none (no socket, or a dead daemon's). */
  static connect(socketPath: string): Promise<ApiClient | null> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(socketPath);
      sock.once('connect', () => resolve(new ApiClient(sock)));
      sock.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(null);
        else if (err.code === 'EACCES') reject(new LayerfsError('EROLE', socketPath, "the daemon's socket is not for this user (it is for the root's owner, or the group given to `layerfs daemon --socket-group`)"));
        else reject(err);
      });
    });
  }

  call(method: ApiMethod, args: unknown[], onEvent?: (ev: unknown) => void): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent });
      this.sock.write(JSON.stringify({ id, method, args }) + '\n');
    });
  }

  /** Borrow the daemon's index: resolves once the daemon has closed it; `close()` gives it back. */
  borrowIndex(): Promise<void> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: () => resolve(), reject, lent: () => resolve() });
      this.sock.write(JSON.stringify({ id, method: 'lend' }) + '\n');
    });
  }

  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
