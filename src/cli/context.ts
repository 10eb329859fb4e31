import type { Argv } from 'yargs';
import { Service } from '../service/index.js';
import type { Role, StoreOptions } from '../store/index.js';

/** Options every command that touches the store takes. */
export interface GlobalArgs {
  root: string;
  shared?: string;
  /** Not given: the store decides (see Store.open). */
  role?: Role;
  json: boolean;
  'log-level': string;
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
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .option('log-level', { type: 'string', default: process.env.LAYERFS_LOG_LEVEL ?? 'warn', describe: 'pino log level (logs go to stderr)' });
}

/** The store options the global options give. */
export function storeOptions(args: GlobalArgs): StoreOptions {
  return { root: args.root, ...(args.shared ? { shared: args.shared } : {}), ...(args.role ? { role: args.role } : {}) };
}

/** Open the service for one command and close it afterwards, whatever happens. */
export async function withService<T>(args: GlobalArgs, fn: (svc: Service) => Promise<T>): Promise<T> {
  const svc = await Service.open(storeOptions(args));
  try {
    return await fn(svc);
  } finally {
    await svc.close();
  }
}
