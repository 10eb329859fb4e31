/**
 * Bench entry for scripts/bench-apply.sh: applies layer tar files (plain, gzip or zstd) into
 * directories with applyLayer, several at once as `image import` does (LAYERFS_IMPORT_PARALLEL,
 * default 3), and prints {seconds, bytes, size} as JSON on stdout.
 * usage: node dist/scripts/bench-apply-entry.js <layer.tar[.gz|.zst]> <dir> [<layer> <dir>]...
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { applyLayer } from '../src/archive/index.js';
import { applyLayerThreaded } from '../src/archive/apply-thread.js';

const args = process.argv.slice(2);
if (args.length < 2 || args.length % 2) {
  process.stderr.write('usage: bench-apply-entry <layer.tar> <dir> [<layer.tar> <dir>]...\n');
  process.exit(2);
}
const pairs: [string, string][] = [];
for (let i = 0; i < args.length; i += 2) pairs.push([args[i]!, args[i + 1]!]);
let bytes = 0;
for (const [t] of pairs) bytes += (await stat(t)).size;
const parallel = Math.max(1, Number(process.env.LAYERFS_IMPORT_PARALLEL) || 3);
const t0 = process.hrtime.bigint();
let size = 0;
let next = 0;
const digests: string[] = [];
async function worker(): Promise<void> {
  while (next < pairs.length) {
    const i = next++;
    const [tar, dir] = pairs[i]!;
    // as image import: several layers -> each on a worker thread (LAYERFS_APPLY_THREADS=0: main thread)
    const fn = pairs.length > 1 && process.env.LAYERFS_APPLY_THREADS !== '0' ? applyLayerThreaded : applyLayer;
    const r = await fn(createReadStream(tar, { highWaterMark: 1 << 20 }), dir);
    size += r.size;
    digests[i] = r.diffDigest;
  }
}
await Promise.all(Array.from({ length: Math.min(parallel, pairs.length) }, worker));
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(JSON.stringify({ seconds, bytes, size, diffDigests: digests }) + '\n');
