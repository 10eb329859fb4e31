import type { Argv } from 'yargs';
import type { Service } from '../service/index.js';
import { LayerfsError } from '../common/errors.js';
import { type LockWait, type Role, type StoreOptions, describeLockWait } from '../store/index.js';

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
