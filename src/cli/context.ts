import type { Argv } from 'yargs';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { API, READ_ONLY, type ApiMethod, type ApiResult } from '../api/methods.js';
import { ApiClient, DaemonGone } from '../api/client.js';
import type { Service } from '../service/index.js';
import { LayerfsError } from '../common/errors.js';
import { Store, type LockWait, type Role, type StoreOptions, describeLockWait } from '../store/index.js';

/** Options every command that touches the store takes. */
export interface GlobalArgs {
  root: string;
  shared?: string;
  /** Not given: the store decides (see Store.open). */
  role?: Role;
  json: boolean;
  'log-level': string;
  'lock-timeout': number;
}

export function globalOptions<T>(y: Argv<T>) {
  return y
    .option('root', { type: 'string', default: process.env.LAYERFS_ROOT ?? '/var/lib/layerfs', describe: 'local root (env LAYERFS_ROOT)' })
    .option('shared', { type: 'string', default: process.env.LAYERFS_SHARED, describe: 'shared store (env LAYERFS_SHARED; default <root>/shared)' })
    .option('role', {
      choices: ['writer', 'reader'] as const,
      default: (process.env.LAYERFS_ROLE || undefined) as Role | undefined,
      describe: 'this host writes the shared store, or only reads it (env LAYERFS_ROLE; default: writer of a local store or where the store marker names this host, else reader)',
    })
    .option('lock-timeout', {
      type: 'number',
      default: process.env.LAYERFS_LOCK_TIMEOUT ? Number(process.env.LAYERFS_LOCK_TIMEOUT) : 600,
      describe: "seconds a write waits for the shared store's writer lock before giving up (env LAYERFS_LOCK_TIMEOUT)",
    })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .option('log-level', { type: 'string', default: process.env.LAYERFS_LOG_LEVEL ?? 'warn', describe: 'pino log level (logs go to stderr)' });
}

/**
 * The store options the global options give. A command waiting for the writer lock says so on
 * stderr; long-running processes (`logLockWaits`: daemon, snapshotter) leave it to the pino log.
 */
export function storeOptions(args: GlobalArgs, opts: { logLockWaits?: boolean } = {}): StoreOptions {
  const timeout = args['lock-timeout'];
  if (!(timeout >= 0)) throw new LayerfsError('EUSAGE', '--lock-timeout', 'must be a number of seconds (0 or more)');
  return {
    root: args.root,
    ...(args.shared ? { shared: args.shared } : {}),
    ...(args.role ? { role: args.role } : {}),
    lockTimeoutMs: timeout * 1000,
    // a command waiting for the writer lock says why, on stderr
    ...(opts.logLockWaits ? {} : { onLockWait: (w: LockWait) => process.stderr.write(`layerfs: ${describeLockWait(w)}\n`) }),
  };
}

/** A path the user gave, made absolute when it exists (the daemon's cwd is not ours); else as given (an id, a name). */
export function pathOrRef(s: string): string {
  const abs = path.resolve(s);
  return existsSync(abs) ? abs : s;
}

/**
 * Run one `Service` method (src/api's table) for a command: through the root's daemon when one runs (it holds the
 * index), else on a `Service` opened for this command. A daemon that goes away mid-request: a read is answered
 * here instead; a change fails, saying so (what it did is what the store and index now say).
 */
export async function callService<M extends ApiMethod>(args: GlobalArgs, method: M, params: unknown[], onEvent?: (ev: unknown) => void): Promise<ApiResult<M>> {
  const client = process.env.LAYERFS_DAEMON === '0' ? null : await ApiClient.connect(Store.apiSocketOf(args.root));
  if (client) {
    try {
      return (await client.call(method, params, onEvent)) as ApiResult<M>;
    } catch (err) {
      if (!(err instanceof DaemonGone)) throw err;
      if (!READ_ONLY.has(method)) throw new LayerfsError('ELOCKED', `daemon on ${args.root}`, `went away during ${method}: the change may be partly made (as the store and the index now say; \`layerfs status\`)`);
    } finally {
      client.close();
    }
  }
  const fn = API[method] as (svc: Service, ...a: unknown[]) => Promise<ApiResult<M>>;
  return withService(args, (svc) => fn(svc, ...params, onEvent ?? (() => undefined)));
}

/** Open the service for one command and close it afterwards, whatever happens. */
export async function withService<T>(args: GlobalArgs, fn: (svc: Service) => Promise<T>): Promise<T> {
  const { Service } = await import('../service/index.js'); // loaded by the commands that need it (start-up)
  const svc = await Service.open(storeOptions(args));
  try {
    return await fn(svc);
  } finally {
    await svc.close();
  }
}
