import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm, stat, open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { LayerfsError, isErrno } from '../common/errors.js';
import { checkDigest, sha256Digest } from './digest.js';

/** One layer of an image source, bottom first. */
export interface SourceLayer {
  /** The digest the source names the blob by, when it has one (OCI: the descriptor digest of the compressed blob). */
  digest: string | null;
  size: number | null;
  mediaType: string;
  open(): Readable;
}

/** An image read from an OCI layout, an OCI archive or a docker-save archive. */
export interface ImageSource {
  format: 'oci-layout' | 'oci-archive' | 'docker-archive';
  /** The manifest as stored in the source; null for docker-save (one is synthesized after import). */
  manifest: Buffer | null;
  config: Buffer;
  configDigest: string;
  layers: SourceLayer[];
  /** Names the source gives the image (OCI ref-name annotations, docker RepoTags). */
  names: string[];
  close(): Promise<void>;
}

export const MT_INDEX = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];
export const MT_MANIFEST = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'];

export function hostPlatform(): { os: string; architecture: string; variant?: string } {
  const arch = ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ?? process.arch;
  return { os: 'linux', architecture: arch, ...(arch === 'arm64' ? { variant: 'v8' } : {}) };
}

export interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

function parseJson<T>(buf: Buffer, what: string): T {
  try {
    return JSON.parse(buf.toString('utf8')) as T;
  } catch (err) {
    throw new LayerfsError('EBADIMAGE', what, `not valid JSON: ${(err as Error).message}`);
  }
}

/** Blob access of an OCI layout, backed by a directory or by an extracted archive. */
interface BlobReader {
  read(name: string): Promise<Buffer>;
  open(name: string): Readable;
  has(name: string): Promise<boolean>;
}

function dirReader(dir: string): BlobReader {
  return {
    read: (name) => readFile(path.join(dir, name)),
    open: (name) => createReadStream(path.join(dir, name), { highWaterMark: 1 << 20 }),
    has: (name) => stat(path.join(dir, name)).then(() => true, () => false),
  };
}

function blobPath(digest: string): string {
  const [alg, hex] = digest.split(':');
  return `blobs/${alg}/${hex}`;
}

async function readBlob(r: BlobReader, d: Descriptor, what: string): Promise<Buffer> {
  const digest = checkDigest(d.digest, what);
  let buf: Buffer;
  try {
    buf = await r.read(blobPath(digest));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) throw new LayerfsError('EBADIMAGE', what, `blob ${digest} is missing`);
    throw err;
  }
  if (sha256Digest(buf) !== digest) throw new LayerfsError('EDIGEST', what, `blob content does not match its digest ${digest}`);
  return buf;
}

export function platformMatches(p: Descriptor['platform']): boolean {
  if (!p) return true;
  const h = hostPlatform();
  if (p.os && p.os !== h.os) return false;
  if (p.architecture && p.architecture !== h.architecture) return false;
  if (p.variant && h.variant && p.variant !== h.variant) return false;
  return true;
}

/** The host platform's entry among an index's manifests (the first that matches), or EBADIMAGE naming what there is. */
export function choosePlatform<D extends Descriptor>(candidates: D[], what: string): D {
  const usable = candidates.filter((d) => platformMatches(d.platform));
  if (usable.length === 0) {
    const seen = candidates.map((d) => (d.platform ? `${d.platform.os}/${d.platform.architecture}` : 'unknown')).join(', ');
    const h = hostPlatform();
    throw new LayerfsError('EBADIMAGE', what, `no manifest for ${h.os}/${h.architecture} (has: ${seen || 'none'})`);
  }
  return usable[0]!;
}

function refNames(d: Descriptor): string[] {
  const a = d.annotations ?? {};
  const out: string[] = [];
  if (a['io.containerd.image.name']) out.push(a['io.containerd.image.name']);
  else if (a['org.opencontainers.image.ref.name']) out.push(a['org.opencontainers.image.ref.name']);
  return out;
}

/** Whether descriptor d of an OCI index is the image `ref` names: its ref.name annotation (a tag or a full name), its containerd name, or its digest. */
function refMatches(d: Descriptor, ref: string): boolean {
  const a = d.annotations ?? {};
  const rn = a['org.opencontainers.image.ref.name'];
  const cn = a['io.containerd.image.name'];
  return ref === rn || ref === cn || ref === d.digest || (cn !== undefined && cn.endsWith(':' + ref) && !ref.includes('/'));
}

/** How an index entry is shown when we list the images of a layout. */
function refLabel(d: Descriptor): string | null {
  const a = d.annotations ?? {};
  return a['org.opencontainers.image.ref.name'] ?? a['io.containerd.image.name'] ?? null;
}

/**
 * The entries of a layout's index.json that make up the image asked for: those `ref` names, or,
 * without a ref, all of them when they are one image (one name, or none: platform variants);
 * several named images without a ref is an error that lists them.
 */
function selectImage(manifests: Descriptor[], ref: string | null, where: string): Descriptor[] {
  const labels = [...new Set(manifests.map(refLabel).filter((x): x is string => x !== null))];
  if (ref !== null) {
    const hit = manifests.filter((d) => refMatches(d, ref));
    if (hit.length === 0) {
      throw new LayerfsError('EBADIMAGE', where, `no image named ${JSON.stringify(ref)} (it has: ${labels.length ? labels.join(', ') : manifests.map((d) => d.digest).join(', ') || 'none'})`);
    }
    return hit;
  }
  if (labels.length > 1) {
    throw new LayerfsError('EBADIMAGE', where, `holds ${labels.length} images (${labels.join(', ')}): name one, as ${where}:REF`);
  }
  return manifests;
}

/** Walk an OCI index (possibly nested) down to the host platform's image manifest. */
async function resolveOci(r: BlobReader, format: ImageSource['format'], close: () => Promise<void>, ref: string | null, where: string): Promise<ImageSource> {
  if (!(await r.has('oci-layout'))) throw new LayerfsError('EBADIMAGE', format, 'no oci-layout file');
  const index = parseJson<{ manifests?: Descriptor[] }>(await r.read('index.json'), 'index.json');
  let candidates = selectImage(index.manifests ?? [], ref, where);
  let names: string[] = [];
  for (let depth = 0; depth < 4; depth++) {
    const d = choosePlatform(candidates, format);
    if (names.length === 0) names = refNames(d);
    const buf = await readBlob(r, d, `manifest ${d.digest}`);
    const doc = parseJson<{ mediaType?: string; manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] }>(buf, `manifest ${d.digest}`);
    const mt = doc.mediaType ?? d.mediaType ?? (doc.manifests ? MT_INDEX[0] : MT_MANIFEST[0]);
    if (MT_INDEX.includes(mt!) || doc.manifests) {
      candidates = doc.manifests ?? [];
      continue;
    }
    if (!doc.config || !Array.isArray(doc.layers)) throw new LayerfsError('EBADIMAGE', `manifest ${d.digest}`, 'has no config or layers');
    const config = await readBlob(r, doc.config, 'image config');
    const layers: SourceLayer[] = doc.layers.map((l, i) => {
      const digest = checkDigest(l.digest, `layer ${i}`);
      return { digest, size: l.size ?? null, mediaType: l.mediaType ?? '', open: () => r.open(blobPath(digest)) };
    });
    for (const l of layers) if (!(await r.has(blobPath(l.digest!)))) throw new LayerfsError('EBADIMAGE', `layer ${l.digest}`, 'blob is missing');
    return { format, manifest: buf, config, configDigest: doc.config.digest, layers, names, close };
  }
  throw new LayerfsError('EBADIMAGE', format, 'image index nested too deeply');
}

/**
 * Read a tar archive's regular files into flat files under `dir`, never using entry names as paths
 * (so a hostile archive cannot write anywhere). Symlinks inside the archive are resolved by name.
 */
async function unpackArchive(file: string, dir: string): Promise<BlobReader> {
  const files = new Map<string, string>();
  const links = new Map<string, string>();
  let n = 0;
  const norm = (name: string) => path.posix.normalize(name.replace(/^\/+/, '')).replace(/^\.\//, '');
  const ex = extract();
  ex.on('entry', (header, stream, next) => {
    const name = norm(header.name);
    if (header.type === 'file' || header.type === 'contiguous-file') {
      const target = path.join(dir, `f${n++}`);
      files.set(name, target);
      open(target, 'wx')
        .then(async (fh) => {
          try {
            await pipeline(stream, fh.createWriteStream());
          } finally {
            await fh.close().catch(() => undefined);
          }
        })
        .then(() => next(), next);
    } else {
      if (header.type === 'symlink' || header.type === 'link') {
        const to = header.type === 'symlink' ? path.posix.join(path.posix.dirname(name), header.linkname ?? '') : header.linkname ?? '';
        links.set(name, norm(to));
      }
      stream.on('end', () => next());
      stream.resume();
    }
  });
  try {
    await pipeline(createReadStream(file), ex);
  } catch (err) {
    throw new LayerfsError('EBADIMAGE', file, `cannot read archive: ${(err as Error).message}`);
  }
  const lookup = (name: string): string | undefined => {
    let cur = norm(name);
    for (let i = 0; i < 16; i++) {
      const f = files.get(cur);
      if (f) return f;
      const l = links.get(cur);
      if (l === undefined) return undefined;
      cur = l;
    }
    return undefined;
  };
  const must = (name: string) => {
    const f = lookup(name);
    if (!f) throw Object.assign(new Error(`ENOENT: ${name} not in archive`), { code: 'ENOENT' });
    return f;
  };
  return {
    read: async (name) => readFile(must(name)),
    open: (name) => createReadStream(must(name), { highWaterMark: 1 << 20 }),
    has: async (name) => lookup(name) !== undefined,
  };
}

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

async function resolveDocker(r: BlobReader, close: () => Promise<void>, ref: string | null, where: string): Promise<ImageSource> {
  const entries = parseJson<DockerManifestEntry[]>(await r.read('manifest.json'), 'manifest.json');
  if (!Array.isArray(entries) || entries.length === 0) throw new LayerfsError('EBADIMAGE', 'manifest.json', 'lists no image');
  const label = (x: DockerManifestEntry, i: number) => (x.RepoTags?.length ? x.RepoTags.join(' ') : `#${i} (${x.Config})`);
  let e = entries[0]!;
  if (ref !== null) {
    const hit = entries.find((x) => (x.RepoTags ?? []).some((t) => t === ref || t.endsWith(':' + ref) || t === `${ref}:latest` || t === `docker.io/library/${ref}` || t === `docker.io/${ref}`));
    if (!hit) throw new LayerfsError('EBADIMAGE', where, `no image named ${JSON.stringify(ref)} (it has: ${entries.map(label).join(', ')})`);
    e = hit;
  } else if (entries.length > 1) {
    throw new LayerfsError('EBADIMAGE', where, `holds ${entries.length} images (${entries.map(label).join(', ')}): name one, as ${where}:REF`);
  }
  if (typeof e.Config !== 'string' || !Array.isArray(e.Layers)) throw new LayerfsError('EBADIMAGE', 'manifest.json', 'entry lacks Config or Layers');
  if (!(await r.has(e.Config))) throw new LayerfsError('EBADIMAGE', 'manifest.json', `config ${e.Config} is not in the archive`);
  const config = await r.read(e.Config);
  for (const l of e.Layers) if (!(await r.has(l))) throw new LayerfsError('EBADIMAGE', 'manifest.json', `layer ${l} is not in the archive`);
  const layers: SourceLayer[] = e.Layers.map((l) => ({
    digest: null,
    size: null,
    mediaType: 'application/vnd.docker.image.rootfs.diff.tar',
    open: () => r.open(l),
  }));
  const names = ref !== null ? (e.RepoTags ?? []).filter((t) => t === ref || t.endsWith(':' + ref)).slice(0, 1) : (e.RepoTags ?? []);
  return { format: 'docker-archive', manifest: null, config, configDigest: sha256Digest(config), layers, names, close };
}

export interface ImageInput {
  /** A transport named as skopeo names it, when given. */
  transport: 'oci' | 'oci-archive' | 'docker-archive' | null;
  path: string;
  /** The image inside (an OCI ref name / tag, a containerd name, a manifest digest, a docker RepoTag). */
  ref: string | null;
}

/**
 * `PATH`, `PATH:REF`, or skopeo's `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`.
 * A PATH that exists as given wins over reading its last `:` part as a ref.
 */
export async function parseImageInput(input: string): Promise<ImageInput> {
  const m = /^(oci|oci-archive|docker-archive):(.*)$/.exec(input);
  if (m) {
    const rest = m[2]!;
    const c = rest.indexOf(':'); // as skopeo: the path cannot hold a ':'
    const p = c >= 0 ? rest.slice(0, c) : rest;
    const ref = c >= 0 ? rest.slice(c + 1) : null;
    if (p === '') throw new LayerfsError('EUSAGE', `image source ${JSON.stringify(input)}`, 'names no path');
    if (ref === '') throw new LayerfsError('EUSAGE', `image source ${JSON.stringify(input)}`, 'empty reference after the path');
    return { transport: m[1] as ImageInput['transport'], path: p, ref };
  }
  const exists = (p: string) => stat(p).then(() => true, () => false);
  if (await exists(input)) return { transport: null, path: input, ref: null };
  const c = input.lastIndexOf(':');
  if (c > 0 && !input.slice(c + 1).includes('/') && (await exists(input.slice(0, c)))) {
    const ref = input.slice(c + 1);
    if (ref === '') throw new LayerfsError('EUSAGE', `image source ${JSON.stringify(input)}`, 'empty reference after the path');
    return { transport: null, path: input.slice(0, c), ref };
  }
  return { transport: null, path: input, ref: null };
}

/** The same image input with its path made absolute (the daemon that opens it does not share the caller's cwd). */
export async function absoluteImageInput(input: string): Promise<string> {
  const { transport, path: p, ref } = await parseImageInput(input);
  return `${transport ? `${transport}:` : ''}${path.resolve(p)}${ref !== null ? `:${ref}` : ''}`;
}

/**
 * Open an image source: a directory holding an OCI layout, or a tar file holding an OCI layout
 * (OCI archive) or a `docker save` image (manifest.json), optionally with a ref naming one image
 * inside (see parseImageInput). `scratch` is a dir for unpacking archives.
 */
export async function openImageSource(input: string, scratch: string): Promise<ImageSource> {
  const { transport, path: file, ref } = await parseImageInput(input);
  const where = file;
  let st;
  try {
    st = await stat(file);
  } catch (err) {
    throw new LayerfsError('EBADIMAGE', file, isErrno(err, 'ENOENT') ? 'no such file or directory' : (err as Error).message);
  }
  if (st.isDirectory()) {
    if (transport === 'oci-archive' || transport === 'docker-archive') throw new LayerfsError('EBADIMAGE', file, `is a directory, not a ${transport} file`);
    const r = dirReader(file);
    if (await r.has('oci-layout')) return resolveOci(r, 'oci-layout', async () => undefined, ref, where);
    if (await r.has('manifest.json')) return resolveDocker(r, async () => undefined, ref, where);
    throw new LayerfsError('EBADIMAGE', file, 'directory is neither an OCI layout (no oci-layout file) nor an unpacked docker save (no manifest.json)');
  }
  if (transport === 'oci') throw new LayerfsError('EBADIMAGE', file, 'oci: names a layout directory, and this is a file (oci-archive:?)');
  const dir = path.join(scratch, `.tmp-import-${randomBytes(6).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  const close = () => rm(dir, { recursive: true, force: true });
  try {
    const r = await unpackArchive(file, dir);
    if (await r.has('oci-layout')) return await resolveOci(r, 'oci-archive', close, ref, where);
    if (await r.has('manifest.json')) return await resolveDocker(r, close, ref, where);
    throw new LayerfsError('EBADIMAGE', file, 'archive holds neither an OCI layout (oci-layout) nor a docker save (manifest.json)');
  } catch (err) {
    await close();
    throw err;
  }
}

/** The diff ids an image config lists (rootfs.diff_ids), checked. */
export function configDiffIds(config: Buffer): string[] {
  const c = parseJson<{ rootfs?: { type?: string; diff_ids?: unknown[] } }>(config, 'image config');
  const ids = c.rootfs?.diff_ids;
  if (!Array.isArray(ids)) throw new LayerfsError('EBADIMAGE', 'image config', 'has no rootfs.diff_ids');
  return ids.map((d, i) => checkDigest(d, `image config rootfs.diff_ids[${i}]`));
}
