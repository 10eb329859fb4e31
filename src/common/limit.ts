/**
 * `fn` over `items`, at most `n` at a time; results in the items' order. For I/O on many small files (a scan or
 * index build of thousands of records): a few dozen in flight keep libuv's pool and the disk (or NFS) busy without
 * queueing thousands of requests at once.
 */
export async function mapLimit<T, R>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}

/** Split `items` into arrays of at most `size`. */
export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** How many record reads (or links) a scan or index build keeps in flight. */
export const IO_PARALLEL = 32;
/** How many records go into one LevelDB batch. */
export const INDEX_BATCH = 2000;
