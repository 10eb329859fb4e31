/**
 * Byte-level tar construction for tests: lets a test write headers no well-behaved packer would
 * (GNU 'L' long names with `..`, PAX records with raw binary values or NULs, bad checksums).
 * Independent of src/archive on purpose, so the tests do not check the parser against itself.
 */
export interface RawHeader {
  name: string;
  /** typeflag character: '0' file, '1' link, '2' symlink, '3' chr, '4' blk, '5' dir, '6' fifo, 'x' PAX, 'L' GNU long name... */
  flag: string;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** 'ustar' (default) or 'gnu' */
  format?: 'ustar' | 'gnu';
  /** Corrupt the checksum on purpose. */
  badChecksum?: boolean;
}

function oct(b: Buffer, off: number, len: number, v: number): void {
  b.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
}

export function rawHeader(h: RawHeader): Buffer {
  const b = Buffer.alloc(512);
  b.write(h.name, 0, 100, 'utf8');
  oct(b, 100, 8, h.mode ?? (h.flag === '5' ? 0o755 : 0o644));
  oct(b, 108, 8, h.uid ?? 0);
  oct(b, 116, 8, h.gid ?? 0);
  oct(b, 124, 12, h.size ?? 0);
  oct(b, 136, 12, h.mtime ?? 1704164645);
  b.write(h.flag, 156, 1, 'latin1');
  if (h.linkname) b.write(h.linkname, 157, 100, 'utf8');
  if ((h.format ?? 'ustar') === 'gnu') b.write('ustar  \0', 257, 8, 'latin1');
  else b.write('ustar\u000000', 257, 8, 'latin1');
  oct(b, 329, 8, h.devmajor ?? 0);
  oct(b, 337, 8, h.devminor ?? 0);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  if (h.badChecksum) sum += 1;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return b;
}

/** Recompute the checksum of a header block changed after rawHeader(). */
export function fixChecksum(b: Buffer): Buffer {
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return b;
}

export function pad(n: number): Buffer {
  return Buffer.alloc((512 - (n % 512)) % 512);
}

/** One entry: header + body + padding. */
export function rawEntry(h: RawHeader, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const data = typeof body === 'string' ? Buffer.from(body) : body;
  return Buffer.concat([rawHeader({ ...h, size: h.size ?? data.length }), data, pad(data.length)]);
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** A PAX 'x' header applying to the next entry. */
export function paxHeader(records: [string, Buffer | string][]): Buffer {
  const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, typeof v === 'string' ? Buffer.from(v) : v)));
  return rawEntry({ name: 'PaxHeaders/x', flag: 'x' }, data);
}

/** A GNU 'L' long-name entry applying to the next entry (which should use format 'gnu'). */
export function gnuLongName(name: string): Buffer {
  return rawEntry({ name: '././@LongLink', flag: 'L', format: 'gnu' }, Buffer.concat([Buffer.from(name), Buffer.from([0])]));
}

export const END = Buffer.alloc(1024);

export function rawTar(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, END]);
}
