/**
 * Concurrency on one FUSE mount, per transport: two reader processes walk the tree and read-hash every file over
 * and over while a writer (this process, async calls only) creates, renames, deletes and copies up.
 *  - no deadlock: the writer's whole sequence and the readers' exit are bounded in time;
 *  - no corruption: a file the writer never changes hashes right on every read (also while the writer copies up
 *    its neighbours or chmods it = a metadata copy-up under the reader); an appended file always starts with its
 *    lower content; a file the writer published by rename (`f-<hash>`) always has the content its name says;
 *  - the final tree equals the same sequence run on kernel overlay (each op's outcome too).
 * The server is a child process; readers are child processes; every mount is undone in finally/after.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFile, chmod, mkdir, readdir, readFile, rename, rmdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cleanup, diffSnapshots, mountKernel, snapshot, tmpDir, type Mounted, seededBytes, undoAfter } from './lib/fuse.js';
import { mountWith, TRANSPORT_NAMES, transportUnavailable, type TMount } from './lib/fusemount.js';

const OPS = Number(process.env.LAYERFS_CONC_OPS ?? 400);
const WRITER_LIMIT_MS = 120_000;

const { live } = undoAfter<TMount | Mounted>();

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

interface Manifest {
  /** path -> full sha256: files whose content never changes (chmod may copy them up) */
  exact: Record<string, string>;
  /** path -> [length, sha256 of that prefix]: files the writer appends to */
  prefix: Record<string, [number, string]>;
}

async function buildLowers(root: string): Promise<{ lowers: string[]; manifest: Manifest }> {
  const [l1, l2] = [path.join(root, 'l1'), path.join(root, 'l2')];
  const manifest: Manifest = { exact: {}, prefix: {} };
  const put = async (layer: string, rel: string, data: Buffer) => {
    await mkdir(path.dirname(path.join(layer, rel)), { recursive: true });
    await writeFile(path.join(layer, rel), data);
  };
  for (let d = 0; d < 8; d++) {
    for (let i = 0; i < 25; i++) {
      const rel = `stable/d${d}/f${i}`;
      const data = seededBytes(d * 1000 + i + 1, 512 + ((d * 7919 + i * 104729) % 150_000));
      await put(l2, rel, data);
      if (i % 5 === 0) {
        const top = seededBytes(d * 1000 + i + 7777, 3000 + i);
        await put(l1, rel, top); // the upper layer's version wins
        manifest.exact[rel] = sha(top);
      } else manifest.exact[rel] = sha(data);
    }
  }
  for (let i = 0; i < 20; i++) {
    const g = seededBytes(50_000 + i, 20_000 + i * 1000);
    await put(l2, `grow/g${i}`, g);
    manifest.prefix[`grow/g${i}`] = [g.length, sha(g)];
    const m = seededBytes(60_000 + i, 10_000 + i);
    await put(l2, `meta/m${i}`, m);
    manifest.exact[`meta/m${i}`] = sha(m);
    await put(l2, `del/x${i}`, seededBytes(70_000 + i, 4096));
  }
  await mkdir(path.join(l1, 'w'), { recursive: true });
  return { lowers: [l1, l2], manifest };
}

/** The reader child: walks and hashes until the stop file appears; prints a JSON summary. */
const READER = `
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
const [mnt, manifestFile, stopFile] = process.argv.slice(2);
const m = JSON.parse(readFileSync(manifestFile, 'utf8'));
const sha = (b) => createHash('sha256').update(b).digest('hex');
const errors = [];
let rounds = 0, reads = 0, verified = 0, vanished = 0;
const bad = (msg) => { if (errors.length < 20) errors.push(msg); };
const mustExist = (rel) => rel in m.exact || rel in m.prefix;
async function check(rel) {
  let data;
  try { data = await readFile(path.join(mnt, rel)); } catch (e) {
    if (e.code === 'ENOENT' && !mustExist(rel)) { vanished++; return; }
    return bad(rel + ': read ' + e.code);
  }
  reads++;
  const base = path.basename(rel);
  if (rel in m.exact) { verified++; if (sha(data) !== m.exact[rel]) bad(rel + ': wrong content (' + data.length + ' bytes)'); }
  else if (rel in m.prefix) {
    verified++;
    const [n, h] = m.prefix[rel];
    if (data.length < n || sha(data.subarray(0, n)) !== h) bad(rel + ': lower content lost (' + data.length + ' bytes)');
  } else if (/^f-[0-9a-f]{16}$/.test(base)) { verified++; if (sha(data).slice(0, 16) !== base.slice(2)) bad(rel + ': content does not match its name'); }
}
async function walk(rel) {
  let names;
  try { names = await readdir(rel ? path.join(mnt, rel) : mnt); } catch (e) {
    if (e.code === 'ENOENT' && rel.startsWith('w')) { vanished++; return; }
    return bad((rel || '.') + ': readdir ' + e.code);
  }
  for (const name of names) {
    const r = rel ? rel + '/' + name : name;
    let st;
    try { st = await lstat(path.join(mnt, r)); } catch (e) {
      if (e.code === 'ENOENT' && !mustExist(r)) { vanished++; continue; }
      bad(r + ': lstat ' + e.code); continue;
    }
    if (st.isDirectory()) await walk(r); else if (st.isFile()) await check(r);
  }
}
do {
  await walk('');
  for (const rel of Object.keys(m.exact).slice(0, 40)) await check(rel); // straight lookups too
  rounds++;
} while (!existsSync(stopFile));
process.stdout.write(JSON.stringify({ rounds, reads, verified, vanished, errors }) + '\\n');
`;

interface Reader {
  result: Promise<{ rounds: number; reads: number; verified: number; vanished: number; errors: string[] }>;
  kill(): void;
}

function startReader(script: string, mnt: string, manifest: string, stop: string): Reader {
  const child = spawn(process.execPath, [script, mnt, manifest, stop], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const result = new Promise<Reader extends { result: Promise<infer R> } ? R : never>((resolve, reject) => {
    child.once('exit', (code, sig) => {
      if (code === 0) resolve(JSON.parse(out));
      else reject(new Error(`reader exited ${sig ?? code}: ${err.slice(0, 2000)}`));
    });
  });
  return { result, kill: () => child.kill('SIGKILL') };
}

type Op = { what: string; run: (root: string) => Promise<void> };

/** The writer's sequence: fixed up front, so it can be replayed on kernel overlay. */
function writerOps(n: number): Op[] {
  const ops: Op[] = [{ what: 'mkdir w/sub', run: (r) => mkdir(path.join(r, 'w/sub')) }];
  const published: string[] = [];
  const deleted = new Set<number>();
  for (let i = 0; i < n; i++) {
    const data = seededBytes(900_000 + i, 100 + ((i * 7919) % 40_000));
    const name = `f-${sha(data).slice(0, 16)}`;
    ops.push({
      what: `publish ${name}`,
      run: async (r) => {
        await writeFile(path.join(r, `w/.tmp-${i}`), data);
        await rename(path.join(r, `w/.tmp-${i}`), path.join(r, `w/${name}`));
      },
    });
    published.push(`w/${name}`);
    if (i % 3 === 0 && published.length > 2) {
      const from = published.splice(published.length - 2, 1)[0];
      const to = `w/sub/${path.basename(from)}`;
      published.push(to);
      ops.push({ what: `rename ${from} ${to}`, run: (r) => rename(path.join(r, from), path.join(r, to)) });
    }
    if (i % 4 === 1 && published.length > 4) {
      const gone = published.shift()!;
      ops.push({ what: `unlink ${gone}`, run: (r) => unlink(path.join(r, gone)) });
    }
    if (i % 5 === 2) {
      const g = `grow/g${i % 20}`;
      const extra = seededBytes(i, 3000);
      ops.push({ what: `append ${g}`, run: (r) => appendFile(path.join(r, g), extra) });
    }
    if (i % 7 === 3) {
      const m = `meta/m${i % 20}`;
      ops.push({ what: `chmod ${m}`, run: (r) => chmod(path.join(r, m), 0o600 + (i % 2) * 0o40) });
    }
    if (i % 11 === 4 && !deleted.has(i % 20)) {
      deleted.add(i % 20);
      const x = `del/x${i % 20}`;
      ops.push({ what: `unlink ${x}`, run: (r) => unlink(path.join(r, x)) });
    }
    if (i % 13 === 5) {
      const d = `w/dir${i}`;
      ops.push({ what: `mkdir+rmdir ${d}`, run: async (r) => {
        await mkdir(path.join(r, d));
        await writeFile(path.join(r, d, 'tmp'), 'x');
        await unlink(path.join(r, d, 'tmp'));
        if (i % 2) await rmdir(path.join(r, d));
      } });
    }
  }
  return ops;
}

const outcome = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: { code?: string }) => e.code ?? String(e));

for (const t of TRANSPORT_NAMES) {
  describe(`concurrency (${t})`, { skip: transportUnavailable(t) ?? false }, () => {
    test('two readers and a writer on one mount: no deadlock, no corruption, same tree as kernel overlay', async (ctx) => {
      const dir = await tmpDir(`fconc-${t}`);
      const readers: Reader[] = [];
      try {
        const { lowers, manifest } = await buildLowers(path.join(dir, 'lowers'));
        const manifestFile = path.join(dir, 'manifest.json');
        await writeFile(manifestFile, JSON.stringify(manifest));
        const script = path.join(dir, 'reader.mjs');
        await writeFile(script, READER);
        const stop = path.join(dir, 'stop');
        for (const d of ['u', 'w', 'ku', 'kw']) await mkdir(path.join(dir, d));
        const f = await mountWith(t, lowers, path.join(dir, 'mf'), path.join(dir, 'u'), path.join(dir, 'w'));
        live.push(f);
        try {
          for (let i = 0; i < 2; i++) readers.push(startReader(script, f.mnt, manifestFile, stop));
          await new Promise((r) => setTimeout(r, 300)); // let the readers start walking
          const ops = writerOps(OPS);
          const results: string[] = [];
          const t0 = Date.now();
          let timer: NodeJS.Timeout | undefined;
          const deadline = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`writer not done after ${WRITER_LIMIT_MS} ms (deadlock?) at op ${results.length}`)), WRITER_LIMIT_MS);
          });
          try {
            await Promise.race([
              (async () => {
                for (const op of ops) results.push(await outcome(op.run(f.mnt)));
              })(),
              deadline,
            ]);
          } finally {
            clearTimeout(timer);
          }
          const writerMs = Date.now() - t0;
          await writeFile(stop, '');
          let rtimer: NodeJS.Timeout | undefined;
          const summaries = await Promise.race([
            Promise.all(readers.map((r) => r.result)),
            new Promise<never>((_, reject) => (rtimer = setTimeout(() => reject(new Error('readers did not finish (deadlock?)')), 60_000))),
          ]).finally(() => clearTimeout(rtimer));
          for (const s of summaries) {
            assert.deepEqual(s.errors, [], `reader saw corruption: ${JSON.stringify(s)}`);
            assert.ok(s.rounds >= 2 && s.verified > 0, JSON.stringify(s));
          }
          ctx.diagnostic(`${t}: writer ${ops.length} ops in ${writerMs} ms; readers ${JSON.stringify(summaries.map(({ errors: _, ...r }) => r))}`);
          const fuseSnap = await snapshot(f.mnt, { fileNlink: true });
          // the same sequence, alone, on kernel overlay over the same lowers
          const k = await mountKernel(lowers, path.join(dir, 'mk'), path.join(dir, 'ku'), path.join(dir, 'kw'));
          live.push(k);
          try {
            const kres: string[] = [];
            for (const op of ops) kres.push(await outcome(op.run(k.mnt)));
            const diffs = ops.map((op, i) => (results[i] === kres[i] ? null : `${op.what}: fuse ${results[i]} kernel ${kres[i]}`)).filter(Boolean);
            assert.deepEqual(diffs, []);
            assert.deepEqual(ops.map((op, i) => `${op.what}: ${results[i]}`).filter((r) => !r.endsWith(': ok')), [], 'every writer op succeeded');
            assert.deepEqual(diffSnapshots(await snapshot(k.mnt, { fileNlink: true }), fuseSnap, 'kernel', 'fuse'), []);
          } finally {
            await k.stop();
          }
          // every stable file, once more after all changes
          for (const [rel, h] of Object.entries(manifest.exact)) assert.equal(sha(await readFile(path.join(f.mnt, rel))), h, rel);
          assert.ok((await readdir(path.join(f.mnt, 'w/sub'))).length > 0);
        } finally {
          await writeFile(stop, '').catch(() => undefined);
          for (const r of readers) r.kill();
          await f.stop();
        }
      } finally {
        for (const x of live.splice(0)) await x.stop().catch(() => undefined);
        await cleanup(dir);
      }
    });
  });
}
