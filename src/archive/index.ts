/**
 * Layer tars: apply one (plain or gzip) into a directory in kernel overlay format, and export an
 * overlay upper dir back into an OCI layer tar. See apply.ts / export.ts for the details.
 */
import type { Readable } from 'node:stream';
import { applyLayer as apply } from './apply.js';
import { exportDiff as exp } from './export.js';

export interface ApplyOptions {
  /** 'sha256:<hex>' of the uncompressed tar stream; mismatch -> LayerfsError 'EDIGEST' */
  expectDiffDigest?: string;
  /** 'sha256:<hex>' of the bytes as given (compressed or not); mismatch -> 'EDIGEST' */
  expectCompressedDigest?: string;
}

export interface ApplyResult {
  diffDigest: string;
  compressedDigest: string;
  /** sum of regular file sizes */
  size: number;
  compressedSize: number;
}

/** Apply one layer tar (plain or gzip, detected by magic bytes) into `dir` (exists; usually empty). */
export function applyLayer(input: NodeJS.ReadableStream | Readable, dir: string, opts?: ApplyOptions): Promise<ApplyResult> {
  return apply(input, dir, opts);
}

/** Export an overlay upper dir (kernel format) as an OCI layer tar with `.wh.` whiteouts; returns a Readable of the plain tar. */
export function exportDiff(upperDir: string): Readable {
  return exp(upperDir);
}
