/**
 * Write a synthetic shared store straight to disk (fast): `layers` RO layers in chains of `depth`,
 * and `images` image records, each naming one whole chain (images > chains reuse chains).
 * Used by scripts/bench-scan.sh and test/scanner.test.ts. Usage:
 *   node dist/scripts/gen-store.js <shared> <layers> <images> [depth] [tag]
 */
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const hex = () => randomBytes(32).toString('hex');

async function inBatches<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += n) await Promise.all(items.slice(i, i + n).map(fn));
}

export interface GenResult {
  layers: string[];
  images: string[];
}

export async function genStore(shared: string, nLayers: number, nImages: number, depth = 10, tag = 'gen'): Promise<GenResult> {
  for (const k of ['overlay', 'overlay-layers', 'overlay-images', 'overlay/l']) await mkdir(path.join(shared, k), { recursive: true });
  const chains: string[][] = [];
  const recs: { id: string; parent: string | null }[] = [];
  for (let i = 0; i < nLayers; i++) {
    if (i % depth === 0) chains.push([]);
    const chain = chains[chains.length - 1]!;
    const id = hex();
    recs.push({ id, parent: chain.length ? chain[chain.length - 1]! : null });
    chain.push(id);
  }
  const created = new Date().toISOString();
  await inBatches(recs, 64, async ({ id, parent }) => {
    const short = randomBytes(5).toString('hex');
    await mkdir(path.join(shared, 'overlay', id, 'diff'), { recursive: true });
    await writeFile(path.join(shared, 'overlay', id, 'link'), short);
    await symlink(`../${id}/diff`, path.join(shared, 'overlay', 'l', short)); // kernel overlay mounts name lowers by it
    await mkdir(path.join(shared, 'overlay-layers', id), { recursive: true });
    const digest = `sha256:${createHash('sha256').update(id).digest('hex')}`;
    const rec = { id, parent, diffDigest: digest, compressedDigest: digest, size: 0, compressedSize: 0, rw: false, created };
    await writeFile(path.join(shared, 'overlay-layers', id, 'layer.json'), JSON.stringify(rec));
  });
  const images: string[] = [];
  const imgs = Array.from({ length: nImages }, (_, i) => ({ id: hex(), chain: chains[i % Math.max(chains.length, 1)] ?? [], i }));
  await inBatches(imgs, 64, async ({ id, chain, i }) => {
    const dir = path.join(shared, 'overlay-images', id);
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'manifest'), '{}');
    await writeFile(path.join(dir, 'config'), '{}');
    const rec = {
      id,
      names: [`${tag}/img${i}:latest`],
      layers: chain,
      topLayer: chain[chain.length - 1] ?? null,
      manifestDigest: `sha256:${'0'.repeat(64)}`,
      configDigest: `sha256:${id}`,
      size: 0,
      created,
    };
    await writeFile(path.join(dir, 'image.json'), JSON.stringify(rec));
    images.push(id);
  });
  return { layers: recs.map((r) => r.id), images };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const [shared, l, i, d, tag] = process.argv.slice(2);
  if (!shared || !l || !i) {
    process.stderr.write('usage: gen-store <shared> <layers> <images> [depth] [tag]\n');
    process.exit(2);
  }
  const r = await genStore(shared, Number(l), Number(i), d ? Number(d) : 10, tag ?? 'gen');
  process.stdout.write(JSON.stringify({ layers: r.layers.length, images: r.images.length }) + '\n');
}
