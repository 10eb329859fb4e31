/** Builds real image sources for tests: OCI layout dirs, OCI archives and docker-save archives. */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildTar, sha256, type TarEntry } from './tarbuild.js';

export interface TestImage {
  /** Layer tars as stored in the source (gzip for OCI unless gzip:false). */
  blobs: Buffer[];
  diffIds: string[];
  config: Buffer;
  configDigest: string;
  manifest: Buffer;
  manifestDigest: string;
}

export async function makeImage(layers: TarEntry[][], opts: { gzip?: boolean; arch?: string } = {}): Promise<TestImage> {
  const gzip = opts.gzip ?? true;
  const blobs: Buffer[] = [];
  const diffIds: string[] = [];
  for (const entries of layers) {
    const blob = await buildTar(entries, { gzip });
    blobs.push(blob);
    diffIds.push(sha256(gzip ? gunzipSync(blob) : blob));
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: opts.arch ?? 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: blobs.map((b) => ({
        mediaType: gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
        digest: sha256(b),
        size: b.length,
      })),
    }),
  );
  return { blobs, diffIds, config, configDigest: sha256(config), manifest, manifestDigest: sha256(manifest) };
}

async function putBlob(dir: string, data: Buffer): Promise<void> {
  const hex = sha256(data).slice(7);
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(dir, 'blobs', 'sha256', hex), data);
}

/** An OCI image layout directory. `index` lists several platform images when given more than one. */
export async function writeOciLayout(dir: string, images: { image: TestImage; name?: string; platform?: { os: string; architecture: string } }[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const manifests = [];
  for (const { image, name, platform } of images) {
    for (const b of image.blobs) await putBlob(dir, b);
    await putBlob(dir, image.config);
    await putBlob(dir, image.manifest);
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: image.manifestDigest,
      size: image.manifest.length,
      ...(platform ? { platform } : {}),
      ...(name ? { annotations: { 'org.opencontainers.image.ref.name': name } } : {}),
    });
  }
  await writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }));
}

/** Tar up a dir's files (flat list of relative paths -> content) as an archive. */
async function archiveOf(files: [string, Buffer][]): Promise<Buffer> {
  const dirs = new Set<string>();
  for (const [name] of files) {
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/') + '/');
  }
  return buildTar([...[...dirs].sort().map((d) => ({ name: d })), ...files.map(([name, content]) => ({ name, content }))]);
}

export async function ociArchive(image: TestImage, name?: string): Promise<Buffer> {
  const files: [string, Buffer][] = [['oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' }))]];
  for (const b of [...image.blobs, image.config, image.manifest]) files.push([`blobs/sha256/${sha256(b).slice(7)}`, b]);
  files.push([
    'index.json',
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: image.manifestDigest, size: image.manifest.length, ...(name ? { annotations: { 'org.opencontainers.image.ref.name': name } } : {}) }],
      }),
    ),
  ]);
  return archiveOf(files);
}

/** A classic `docker save` archive: <id>/layer.tar per layer, <config>.json, manifest.json. Layers must be uncompressed. */
export async function dockerSave(image: TestImage, repoTags: string[]): Promise<Buffer> {
  const files: [string, Buffer][] = [];
  const layerPaths: string[] = [];
  image.blobs.forEach((b, i) => {
    const p = `${image.diffIds[i]!.slice(7, 71)}/layer.tar`;
    layerPaths.push(p);
    files.push([p, b]);
  });
  const configName = `${image.configDigest.slice(7)}.json`;
  files.push([configName, image.config]);
  files.push(['manifest.json', Buffer.from(JSON.stringify([{ Config: configName, RepoTags: repoTags, Layers: layerPaths }]))]);
  return archiveOf(files);
}
