/**
 * Helper of scripts/bench-fuse.sh: metadata-heavy steps timed from one process (so process start-up is not what is
 * measured). Runs in its own process against a mount served by another process, so sync fs calls are fine.
 *
 *   node bench-fuse-ops.js ops DIR N          create N empty files in DIR (made), stat them, rename them, delete them
 *   node bench-fuse-ops.js lookups ROOT LIST  lstat every path in LIST (one per line, relative to ROOT), then the same
 *                                             names with a suffix that exists nowhere (negative lookups)
 *   node bench-fuse-ops.js randread FILE N    N random 4 KiB preads (the fallback when fio is missing)
 *
 * Prints one JSON object: seconds per phase.
 */
import { closeSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';

const now = (): number => Number(process.hrtime.bigint()) / 1e9;

function time(fn: () => void): number {
  const t0 = now();
  fn();
  return Number((now() - t0).toFixed(4));
}

function ops(dir: string, n: number): Record<string, number> {
  mkdirSync(dir, { recursive: true });
  // 100 subdirs, so no directory grows past 100 entries beyond what a real tree would have
  const names = Array.from({ length: n }, (_, i) => path.join(dir, `d${i % 100}`, `f${i}`));
  for (let i = 0; i < Math.min(100, n); i++) mkdirSync(path.join(dir, `d${i}`), { recursive: true });
  return {
    create: time(() => {
      for (const p of names) closeSync(openSync(p, 'wx', 0o644));
    }),
    stat: time(() => {
      for (const p of names) statSync(p);
    }),
    rename: time(() => {
      for (const p of names) renameSync(p, `${p}.r`);
    }),
    delete: time(() => {
      for (const p of names) unlinkSync(`${p}.r`);
    }),
  };
}

function lookups(root: string, list: string): Record<string, number> {
  const rels = readFileSync(list, 'utf8').split('\n').filter(Boolean);
  let missing = 0;
  const pos = time(() => {
    for (const r of rels) lstatSync(path.join(root, r));
  });
  const neg = time(() => {
    for (const r of rels) {
      try {
        lstatSync(path.join(root, `${r}.nope`));
      } catch {
        missing++;
      }
    }
  });
  if (missing !== rels.length) throw new Error(`negative lookups found ${rels.length - missing} files`);
  return { lookup: pos, negative: neg, total: Number((pos + neg).toFixed(4)) };
}

function randread(file: string, n: number): Record<string, number> {
  const size = statSync(file).size;
  const blocks = Math.floor(size / 4096);
  const buf = Buffer.alloc(4096);
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) % blocks);
  const fd = openSync(file, 'r');
  try {
    return {
      randread: time(() => {
        for (let i = 0; i < n; i++) readSync(fd, buf, 0, 4096, rnd() * 4096);
      }),
    };
  } finally {
    closeSync(fd);
  }
}

const [mode, a, b] = process.argv.slice(2);
let out: Record<string, number>;
if (mode === 'ops') out = ops(a, Number(b));
else if (mode === 'lookups') out = lookups(a, b);
else if (mode === 'randread') out = randread(a, Number(b));
else {
  process.stderr.write('usage: bench-fuse-ops.js ops DIR N | lookups ROOT LIST | randread FILE N\n');
  process.exit(2);
}
process.stdout.write(JSON.stringify(out) + '\n');
