/**
 * The daemon's unix socket: newline-delimited JSON. A request `{id, method, args}` gets `{id, event}` lines (progress)
 * and then `{id, result}` or `{id, error: {code, what, message}}`. `{id, method: 'lend'}` closes the daemon's index
 * until the connection ends (`{id, lent: true}` once it is closed). The socket is for the root's owner only
 * (mode 0600), or for a group the operator names (0660): the API mounts and removes.
 */
import { chmod, chown, rm } from 'node:fs/promises';
import net from 'node:net';
import { LayerfsError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { API, READ_ONLY, isApiMethod } from './methods.js';
import type { IndexHolder } from './holder.js';

export interface ApiServer {
  close(): Promise<void>;
}

function errorOf(err: unknown): { code: string; what: string; message: string } {
  if (err instanceof LayerfsError) return { code: err.code, what: err.what, message: err.message };
  return { code: 'EINTERNAL', what: 'daemon', message: (err as Error)?.message ?? String(err) };
}

export async function startApiServer(holder: IndexHolder, socketPath: string, opts: { gid?: number } = {}): Promise<ApiServer> {
  await rm(socketPath, { force: true }); // a dead daemon's socket (the daemon lock says we are the only one)
  const conns = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => undefined);
    let buf = '';
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    const send = (msg: unknown) => {
      if (!sock.destroyed) sock.write(JSON.stringify(msg) + '\n');
    };
    sock.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let req: { id?: unknown; method?: unknown; args?: unknown };
        try {
          req = JSON.parse(line) as typeof req;
        } catch {
          send({ id: null, error: { code: 'EUSAGE', what: 'request', message: 'request: not JSON' } });
          continue;
        }
        const { id, method } = req;
        const args = Array.isArray(req.args) ? (req.args as unknown[]) : [];
        if (method === 'lend') {
          void holder.lend(closed, () => send({ id, lent: true }));
          continue;
        }
        if (!isApiMethod(method)) {
          send({ id, error: { code: 'EUSAGE', what: `method ${String(method)}`, message: `method ${String(method)}: no such method` } });
          continue;
        }
        const fn = API[method] as (svc: unknown, ...a: unknown[]) => Promise<unknown>;
        const emit = (event: unknown) => send({ id, event });
        const run = READ_ONLY.has(method) ? holder.read.bind(holder) : holder.exclusive.bind(holder);
        run((svc) => fn(svc, ...args, emit)).then(
          (result) => send({ id, result: result ?? null }),
          (err: unknown) => send({ id, error: errorOf(err) }),
        );
      }
    });
  });
  // created 0600 (umask), so nobody else can connect in the moment before the chmod
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
  } finally {
    process.umask(umask);
  }
  if (opts.gid !== undefined) {
    await chown(socketPath, process.getuid?.() ?? 0, opts.gid);
    await chmod(socketPath, 0o660);
  } else await chmod(socketPath, 0o600);
  logger().info({ socket: socketPath }, 'API socket listening');
  return {
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of conns) c.destroy();
      });
      await rm(socketPath, { force: true });
    },
  };
}
