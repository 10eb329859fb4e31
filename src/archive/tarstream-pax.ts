/**
 * Lossless PAX values for tar-stream's extractor (binary xattrs).
 *
 * Why: tar-stream's `headers.decodePax` decodes every PAX record value as a UTF-8 string, which
 * corrupts binary xattr values such as `SCHILY.xattr.security.capability` (bytes >= 0x80 become
 * U+FFFD). Its extractor calls `headers.decodePax(buf)` through the module object of
 * node_modules/tar-stream/headers.js at each PAX header, so we load that same CommonJS module
 * instance and replace `decodePax` once, at import time, with a version that differs only in how
 * it decodes the values of `SCHILY.xattr.*` keys: as latin1 (one char per byte), so that
 * `Buffer.from(value, 'latin1')` gives back the exact bytes. Keys and all other values are UTF-8,
 * parsed with tar-stream's own (lenient) record rules. The result object has no prototype, so a
 * `__proto__` key is just a key.
 *
 * The bare subpath `tar-stream/headers` is blocked by the package's `exports` map, hence: resolve
 * the package entry, take its directory, and require headers.js by absolute path (the same file,
 * hence the same cached module, that extract.js gets from `require('./headers')`).
 */
import { createRequire } from 'node:module';
import path from 'node:path';

export const XATTR_PAX_PREFIX = 'SCHILY.xattr.';

type PaxRecords = Record<string, string>;
interface Headers {
  decodePax: (buf: Uint8Array) => PaxRecords;
  decode: (buf: Uint8Array, filenameEncoding: string, allowUnknownFormat: boolean) => { size: number } | null;
}

const PATCHED = Symbol.for('layerfs.tarstream.losslessPax');

/** tar-stream's decodePax, except that SCHILY.xattr.* values are latin1 (byte-exact). */
export function decodePaxLossless(input: Uint8Array): PaxRecords {
  const result: PaxRecords = Object.create(null) as PaxRecords;
  let buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  while (buf.length) {
    let i = 0;
    while (i < buf.length && buf[i] !== 32) i++;
    const len = parseInt(buf.toString('utf8', 0, i), 10);
    if (!len) return result;
    const rec = buf.subarray(i + 1, len - 1); // same bounds as tar-stream (drops the trailing '\n')
    const eq = rec.indexOf(0x3d); // '=' never occurs inside a UTF-8 multi-byte sequence
    if (eq === -1) return result;
    const key = rec.toString('utf8', 0, eq);
    result[key] = rec.toString(key.startsWith(XATTR_PAX_PREFIX) ? 'latin1' : 'utf8', eq + 1);
    buf = buf.subarray(len);
  }
  return result;
}

const require = createRequire(import.meta.url);
const headersPath = path.join(path.dirname(require.resolve('tar-stream')), 'headers.js');
const headers = require(headersPath) as Headers & { [PATCHED]?: true };
if (typeof headers.decodePax !== 'function') {
  throw new Error(`layerfs: ${headersPath} has no decodePax (tar-stream changed?); cannot make PAX values lossless`);
}
if (!headers[PATCHED]) {
  headers.decodePax = decodePaxLossless;
  headers[PATCHED] = true;
}

/**
 * tar-stream's own header-block decoder (read-only use): the applier walks the extended headers
 * tar-stream consumed before an entry, to find zero blocks it skipped. null for a zero block.
 */
export function decodeHeaderBlock(block: Buffer): { size: number } | null {
  return headers.decode(block, 'utf-8', true);
}

/** The bytes of a SCHILY.xattr.* value as decoded by the patched extractor. */
export function xattrBytes(value: string): Buffer {
  return Buffer.from(value, 'latin1');
}
