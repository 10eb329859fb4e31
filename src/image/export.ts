/**
 * `image export`: an image of the store as an OCI archive (oci-layout, index.json, blobs). Each
 * layer is re-created from its diff dir with exportDiff, so its bytes (and digests) differ from
 * the tar it was made from; the config's rootfs.diff_ids and the manifest are rewritten to match,
 * which also gives the exported image a new id (config digest) and new chainIDs. Each layer is
 * compressed as it came in (gzip, zstd or none, from its record), unless a compression is asked for.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { compressor } from '../archive/compress.js';
import { pack } from 'tar-stream';
import { exportDiff } from '../archive/index.js';
import { LayerfsError } from '../common/errors.js';
import type { ImageRecord, Store } from '../store/index.js';
import { sha256Digest } from './digest.js';

export interface ExportOptions {
  /** gzip the layer blobs (same as compression 'gzip'). */
  gzip?: boolean;
  /** 'keep' (default): each layer as it came in; or one compression for all ('none': plain tars, whose blob digest is the diff id). */
  compression?: 'keep' | 'none' | 'gzip' | 'zstd';
  /** The name to record in index.json (default: the image's first name, if any). */
  name?: string;
}

export interface ExportResult {
  manifestDigest: string;
  configDigest: string;
  layers: { digest: string; diffId: string; size: number }[];
}

const MT = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  tar: 'application/vnd.oci.image.layer.v1.tar',
  tgz: 'application/vnd.oci.image.layer.v1.tar+gzip',
  tzst: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

function hashing(h: ReturnType<typeof createHash>, count: { n: number }): Transform {
  return new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _e, cb) {
      h.update(chunk);
      count.n += chunk.length;
      cb(null, chunk);
    },
  });
}

/** The tag of a name (`host/repo:tag` -> `tag`), for org.opencontainers.image.ref.name. */
function tagOf(name: string): string | null {
  if (name.includes('@')) return null;
  const last = name.slice(name.lastIndexOf('/') + 1);
  const i = last.lastIndexOf(':');
  return i >= 0 ? last.slice(i + 1) : 'latest';
}

export async function exportImage(store: Store, image: ImageRecord, out: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const outAbs = path.resolve(out);
  const work = await mkdtemp(path.join(path.dirname(outAbs), '.layerfs-export-'));
  try {
    // 1. layers: exportDiff -> (gzip) -> temp file, hashing both sides
    const layers: { digest: string; diffId: string; size: number; file: string; mediaType: string }[] = [];
    const want = opts.gzip ? 'gzip' : (opts.compression ?? 'keep');
    for (let i = 0; i < image.layers.length; i++) {
      const id = image.layers[i]!;
      const comp = want === 'keep' ? ((await store.readSharedLayer(id))?.compression ?? 'none') : want;
      const packed = comp !== 'none';
      const file = path.join(work, `layer-${i}`);
      const diffHash = createHash('sha256');
      const blobHash = createHash('sha256');
      const diffCount = { n: 0 };
      const blobCount = { n: 0 };
      const stages: (Readable | Transform | NodeJS.WritableStream)[] = [exportDiff(store.diffDir(id)), hashing(diffHash, diffCount)];
      if (packed) stages.push(compressor(comp, `layer ${id}`));
      stages.push(packed ? hashing(blobHash, blobCount) : new Transform({ transform: (c, _e, cb) => cb(null, c) }));
      stages.push(createWriteStream(file));
      try {
        await (pipeline as (...s: unknown[]) => Promise<void>)(...stages);
      } catch (err) {
        throw new LayerfsError('EBADIMAGE', `layer ${id}`, `cannot export: ${(err as Error).message}`, { cause: err });
      }
      const diffId = 'sha256:' + diffHash.digest('hex');
      const mediaType = comp === 'gzip' ? MT.tgz : comp === 'zstd' ? MT.tzst : MT.tar;
      layers.push(
        packed
          ? { digest: 'sha256:' + blobHash.digest('hex'), diffId, size: blobCount.n, file, mediaType }
          : { digest: diffId, diffId, size: diffCount.n, file, mediaType },
      );
    }

    // 2. config with the new diff ids; 3. manifest
    let cfg: Record<string, unknown>;
    try {
      cfg = JSON.parse((await store.readImageBlob(image.id, 'config')).toString('utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new LayerfsError('EBADIMAGE', `image ${image.id}`, `cannot read its config: ${(err as Error).message}`);
    }
    cfg.rootfs = { type: 'layers', diff_ids: layers.map((l) => l.diffId) };
    const config = Buffer.from(JSON.stringify(cfg));
    const configDigest = sha256Digest(config);
    let annotations: Record<string, string> | undefined;
    try {
      annotations = (JSON.parse((await store.readImageBlob(image.id, 'manifest')).toString('utf8')) as { annotations?: Record<string, string> }).annotations;
    } catch {
      annotations = undefined;
    }
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.manifest,
        config: { mediaType: MT.config, digest: configDigest, size: config.length },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
        ...(annotations ? { annotations } : {}),
      }),
    );
    const manifestDigest = sha256Digest(manifest);
    const name = opts.name ?? image.names[0];
    const tag = name ? tagOf(name) : null;
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.index,
        manifests: [
          {
            mediaType: MT.manifest,
            digest: manifestDigest,
            size: manifest.length,
            ...(name ? { annotations: { 'io.containerd.image.name': name, ...(tag ? { 'org.opencontainers.image.ref.name': tag } : {}) } } : {}),
          },
        ],
      }),
    );

    // 4. the archive, written beside OUT and renamed into place
    const tmpOut = path.join(path.dirname(outAbs), `.${path.basename(outAbs)}.tmp-${process.pid}`);
    const p = pack();
    const written = pipeline(p, createWriteStream(tmpOut, { mode: 0o644, flush: true } as Parameters<typeof createWriteStream>[1]));
    written.catch(() => undefined); // awaited below; this only keeps an early failure from being unhandled
    const mtime = new Date(image.created);
    const add = (name: string, body: Buffer) => new Promise<void>((res, rej) => p.entry({ name, mtime, mode: 0o644 }, body, (e) => (e ? rej(e) : res())));
    const addFile = async (name: string, file: string, size: number) => {
      const entry = p.entry({ name, size, mtime, mode: 0o644 });
      await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), entry);
    };
    try {
      p.entry({ name: 'blobs/', type: 'directory', mtime, mode: 0o755 });
      p.entry({ name: 'blobs/sha256/', type: 'directory', mtime, mode: 0o755 });
      await add('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
      await add('index.json', index);
      const seen = new Set<string>();
      for (const l of layers) {
        if (seen.has(l.digest)) continue;
        seen.add(l.digest);
        await addFile(`blobs/sha256/${l.digest.slice(7)}`, l.file, l.size);
      }
      await add(`blobs/sha256/${configDigest.slice(7)}`, config);
      await add(`blobs/sha256/${manifestDigest.slice(7)}`, manifest);
      p.finalize();
      await written;
      await rename(tmpOut, outAbs);
    } catch (err) {
      p.destroy();
      await rm(tmpOut, { force: true });
      throw err;
    }
    return { manifestDigest, configDigest, layers: layers.map(({ digest, diffId, size }) => ({ digest, diffId, size })) };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
