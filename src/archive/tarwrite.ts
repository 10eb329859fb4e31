/**
 * Tar header encoding (ustar + PAX 'x' records). Our own rather than tar-stream's packer because PAX
 * values must carry raw bytes (binary xattrs such as security.capability), and so must names:
 * `name` and `linkname` are byte strings (one char per byte, latin1, as tarparse.ts reads them), so
 * a name that is not UTF-8 is written back byte for byte (in a PAX path record, as GNU tar does).
 */
export type WriteType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface WriteHeader {
  name: string;
  type: WriteType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number; // integer seconds
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
  /** Further PAX records (e.g. GNU.sparse.*), written before the xattrs. */
  pax?: [string, Buffer][];
  /** The ustar name field when PAX records carry the real name (e.g. GNUSparseFile.0/NAME). */
  ustarName?: string;
}

const FLAG: Record<WriteType, string> = { file: '0', link: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function octal(buf: Buffer, off: number, len: number, v: number): boolean {
  const s = Math.floor(v).toString(8);
  if (s.length > len - 1 || v < 0) return false;
  buf.write(s.padStart(len - 1, '0'), off, 'latin1');
  buf[off + len - 1] = 0;
  return true;
}

function block(h: WriteHeader, name: string, flag: string, size: number, linkname: string, pax: boolean): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'latin1');
  octal(b, 100, 8, h.mode & 0o7777);
  if (!octal(b, 108, 8, h.uid) && !pax) throw new Error('uid needs PAX');
  if (!octal(b, 116, 8, h.gid) && !pax) throw new Error('gid needs PAX');
  if (!octal(b, 124, 12, size)) throw new Error('size needs PAX');
  if (!octal(b, 136, 12, h.mtime)) octal(b, 136, 12, 0);
  b.write(flag, 156, 1, 'latin1');
  b.write(linkname, 157, 100, 'latin1');
  b.write('ustar\u000000', 257, 8, 'latin1');
  octal(b, 329, 8, h.devmajor ?? 0);
  octal(b, 337, 8, h.devminor ?? 0);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 8, 'latin1');
  return b;
}

function fits(s: string, max: number): boolean {
  return s.length <= max && /^[\x20-\x7e]*$/.test(s);
}

const MAX_OCT7 = 0o7777777;
const MAX_OCT11 = 0o77777777777;

/** The header block(s) for one entry: an optional PAX 'x' header + its records, then the ustar block. */
export function encodeHeader(h: WriteHeader): Buffer {
  const name = h.type === 'dir' && !h.name.endsWith('/') ? h.name + '/' : h.name;
  const linkname = h.linkname ?? '';
  const recs: Buffer[] = [];
  if (!fits(name, 100) && !h.ustarName) recs.push(paxRecord('path', Buffer.from(name, 'latin1')));
  if (!fits(linkname, 100)) recs.push(paxRecord('linkpath', Buffer.from(linkname, 'latin1')));
  if (h.uid > MAX_OCT7) recs.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (h.gid > MAX_OCT7) recs.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (h.size > MAX_OCT11) recs.push(paxRecord('size', Buffer.from(String(h.size))));
  for (const [k, v] of h.pax ?? []) recs.push(paxRecord(k, v));
  if (h.xattrs) {
    for (const [k, v] of [...h.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) recs.push(paxRecord('SCHILY.xattr.' + k, v));
  }
  const plain = block(h, h.ustarName ? asciiCut(h.ustarName) : recs.length ? asciiCut(name) : name, FLAG[h.type], h.size > MAX_OCT11 ? 0 : h.size, recs.length ? asciiCut(linkname) : linkname, recs.length > 0);
  if (!recs.length) return plain;
  const data = Buffer.concat(recs);
  const paxName = asciiCut('PaxHeaders/' + name.replace(/\/$/, '').split('/').pop());
  const ph = block({ ...h, uid: 0, gid: 0, mode: 0o644 }, paxName, 'x', data.length, '', true);
  return Buffer.concat([ph, data, Buffer.alloc(padLen(data.length)), plain]);
}

function asciiCut(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[^\x20-\x7e]/g, '_').slice(0, 100);
}

export function padLen(size: number): number {
  return (512 - (size % 512)) % 512;
}

export const END_OF_ARCHIVE = Buffer.alloc(1024);
