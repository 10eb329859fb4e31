/** Builds real tar files for tests (tar-stream's packer), plain or gzipped. */
import { pack, type Header } from 'tar-stream';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';

export type TarEntry = {
  name: string;
  type?: Header['type'];
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  mtime?: Date;
  /** PAX records, e.g. { 'SCHILY.xattr.user.foo': 'bar' } */
  pax?: Record<string, string>;
};

export const FIXED_MTIME = new Date('2024-01-02T03:04:05Z');

export async function buildTar(entries: TarEntry[], opts: { gzip?: boolean } = {}): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', () => resolve());
    p.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? (e.content !== undefined ? 'file' : 'directory');
    const header: Partial<Header> & { name: string } = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? FIXED_MTIME,
    };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    if (e.devmajor !== undefined) header.devmajor = e.devmajor;
    if (e.devminor !== undefined) header.devminor = e.devminor;
    if (e.pax !== undefined) header.pax = e.pax;
    if (type === 'file') {
      const body = typeof e.content === 'string' ? Buffer.from(e.content) : (e.content ?? Buffer.alloc(0));
      header.size = body.length;
      p.entry(header, body);
    } else {
      p.entry(header);
    }
  }
  p.finalize();
  await done;
  const raw = Buffer.concat(chunks);
  return opts.gzip ? gzipSync(raw) : raw;
}

export function sha256(buf: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}
