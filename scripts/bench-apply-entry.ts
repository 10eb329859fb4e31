/**
 * Bench entry for scripts/bench-apply.sh: applies one layer tar file into a directory with applyLayer
 * and prints {seconds, bytes, files-size} as JSON on stdout.
 * usage: node dist/scripts/bench-apply-entry.js <layer.tar[.gz]> <dir>
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { applyLayer } from '../src/archive/index.js';

const [tarPath, dir] = process.argv.slice(2);
if (!tarPath || !dir) {
  process.stderr.write('usage: bench-apply-entry <layer.tar> <dir>\n');
  process.exit(2);
}
const bytes = (await stat(tarPath)).size;
const t0 = process.hrtime.bigint();
const r = await applyLayer(createReadStream(tarPath, { highWaterMark: 1 << 20 }), dir);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(JSON.stringify({ seconds, bytes, size: r.size, diffDigest: r.diffDigest }) + '\n');
