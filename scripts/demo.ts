/**
 * The main job, end to end: build a small OCI image from the files in scripts/demo-image/ (one dir
 * per layer, `.wh.` files are whiteouts), import it, list it, mount it (kernel overlay where it
 * works, else FUSE), show the merged tree, write to it, unmount. Runs the real CLI at each step.
 * Usage: node dist/scripts/demo.js   (root; LAYERFS_ROOT picks the store, default a temp dir)
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const cliEntry = path.join(repo, 'dist', 'src', 'cli', 'main.js');
const sha = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

async function tarDir(dir: string): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c) => chunks.push(c as Buffer));
  const done = new Promise<void>((r) => p.on('end', () => r()));
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = statSync(path.join(dir, r));
      if (st.isDirectory()) {
        p.entry({ name: r + '/', type: 'directory', mode: 0o755, mtime: new Date(0) });
        walk(r);
      } else {
        p.entry({ name: r, mode: 0o644, mtime: new Date(0) }, readFileSync(path.join(dir, r)));
      }
    }
  };
  walk('');
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

function layerfs(args: string[], env: NodeJS.ProcessEnv): string {
  process.stdout.write(`\n$ layerfs ${args.join(' ')}\n`);
  const out = execFileSync(process.execPath, [cliEntry, ...args], { env, encoding: 'utf8' });
  process.stdout.write(out);
  return out;
}

async function main(): Promise<void> {
  const work = mkdtempSync(path.join(os.tmpdir(), 'layerfs-demo-'));
  const root = process.env.LAYERFS_ROOT ?? path.join(work, 'root');
  const env = { ...process.env, LAYERFS_ROOT: root, LAYERFS_SHARED: process.env.LAYERFS_SHARED ?? path.join(root, 'shared') };
  const mnt = path.join(work, 'rootfs');
  let mounted = false;
  try {
    // an OCI image layout built from the shipped files
    const src = path.join(repo, 'scripts', 'demo-image');
    const layout = path.join(work, 'oci');
    mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
    const put = (b: Buffer) => writeFileSync(path.join(layout, 'blobs', 'sha256', sha(b).slice(7)), b);
    const layers = [];
    const diffIds = [];
    for (const l of readdirSync(src).sort()) {
      const tar = await tarDir(path.join(src, l));
      const gz = gzipSync(tar);
      put(gz);
      diffIds.push(sha(tar));
      layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(gz), size: gz.length });
    }
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: diffIds } }));
    put(config);
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length }, layers }));
    put(manifest);
    writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length }] }));
    process.stdout.write(`built an OCI layout of ${layers.length} layers from ${src} in ${layout}\n`);

    layerfs(['image', 'import', layout, '--name', 'demo/hello:1'], env);
    layerfs(['image', 'ls'], env);
    layerfs(['layer', 'ls'], env);
    layerfs(['mount', 'demo/hello:1', mnt], env);
    mounted = true;
    layerfs(['mount-info', mnt], env);
    process.stdout.write(`\n$ find ${mnt} | sort\n${execFileSync('find', [mnt], { encoding: 'utf8' }).split('\n').filter(Boolean).sort().join('\n')}\n`);
    process.stdout.write(`\n$ cat ${mnt}/etc/motd\n${readFileSync(path.join(mnt, 'etc/motd'), 'utf8')}`);
    writeFileSync(path.join(mnt, 'etc/written-by-demo'), 'a write lands in the RW layer\n');
    process.stdout.write(`\n(etc/obsolete is hidden by layer 2's whiteout; etc/written-by-demo went to the RW layer)\n`);
    layerfs(['umount', mnt, '--rm'], env);
    mounted = false;
    layerfs(['status'], env);
    process.stdout.write(`\ndemo done. The store is in ${root}.\n`);
  } finally {
    if (mounted) execFileSync(process.execPath, [cliEntry, 'umount', mnt, '--rm'], { env, stdio: 'inherit' });
    if (!process.env.LAYERFS_ROOT) rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
