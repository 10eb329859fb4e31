/**
 * The direct transport keeps reads of /dev/fuse waiting on libuv's threadpool; each holds a pool thread, and the
 * core's fs calls need the others. libuv sizes its pool once, at first use, which Node's ESM loader does before any
 * of our code runs: so the size only counts when it came from the environment the process started with (spawn.ts
 * sets it for the server process). `poolSize` is what this process really has.
 */
const inherited = Number(process.env.UV_THREADPOOL_SIZE);
export const poolSize: number = Number.isInteger(inherited) && inherited > 0 ? Math.min(inherited, 1024) : 4;

/** Reads to keep outstanding: a quarter of the pool (at least 1), or LAYERFS_FUSE_READERS. */
export function readersFor(size = poolSize): number {
  const env = Number(process.env.LAYERFS_FUSE_READERS);
  const want = Number.isInteger(env) && env > 0 ? env : Math.max(1, Math.floor(size / 4));
  return Math.max(1, Math.min(want, size - 2));
}

/** The pool size to give a server process we start. */
export const SERVER_POOL_SIZE = 16;
