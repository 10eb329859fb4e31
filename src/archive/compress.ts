/**
 * Layer compression: detection by magic bytes, and streaming decompressors.
 *
 * gzip: Node's zlib. zstd: Node 20's zlib has none, so Debian's `zstd` binary runs as a child
 * process (`zstd -d -c`), fed and read as a stream: no whole-layer buffering, and the
 * decompression runs on another core, beside the tar parsing (the same design as containerd's
 * and podman's fallbacks to an external binary; a maintained npm zstd package with prebuilt
 * binaries for Node 20 would add a native dependency for what the packaged binary does as fast).
 * zstd:chunked layers are plain zstd frames followed by skippable frames (the TOC): `zstd -d`
 * reads them as one stream, as containerd does without the chunked snapshotter.
 */
import { spawn } from 'node:child_process';
import { Duplex, PassThrough } from 'node:stream';
import zlib from 'node:zlib';
import { LayerfsError } from '../common/errors.js';

export type Compression = 'none' | 'gzip' | 'zstd';

export function sniffCompression(first: Buffer): Compression {
  if (first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b) return 'gzip';
  if (first.length >= 4 && first[0] === 0x28 && first[1] === 0xb5 && first[2] === 0x2f && first[3] === 0xfd) return 'zstd';
  return 'none';
}

/** The binary used for zstd (env LAYERFS_ZSTD for tests and odd installs). */
export const zstdBinary = () => process.env.LAYERFS_ZSTD ?? 'zstd';

function zstdMissing(what: string, e: unknown): LayerfsError {
  return new LayerfsError('EBADTAR', what, `zstd layer, but the zstd program cannot run (${(e as Error).message}); install the Debian package zstd`, { cause: e });
}

/**
 * A child process as a Duplex: bytes written go to its stdin, its stdout is read. A non-zero exit
 * fails the stream with `why` + the program's stderr; destroying the stream kills the child.
 */
function childDuplex(cmd: string, args: string[], what: string, why: string): Duplex {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let stderr = '';
  let failed = false;
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  child.stdout.pipe(out, { end: false });
  let exited: { code: number | null; sig: NodeJS.Signals | null } | null = null;
  let stdoutEnded = false;
  const settle = () => {
    if (!exited || !stdoutEnded || failed) return;
    if (exited.code === 0) out.end();
    else {
      failed = true;
      const msg = stderr.trim().replace(/\s+/g, ' ');
      out.destroy(new LayerfsError('EBADTAR', what, `${why}: ${msg || (exited.sig ? `killed by ${exited.sig}` : `exit code ${exited.code}`)}`));
    }
  };
  child.stdout.on('end', () => {
    stdoutEnded = true;
    settle();
  });
  child.on('error', (e) => {
    failed = true;
    out.destroy(zstdMissing(what, e));
  });
  child.on('close', (code, sig) => {
    exited = { code, sig };
    settle();
  });
  child.stdin.on('error', () => undefined); // EPIPE when the child fails early: its exit status tells why
  const d = Duplex.from({ writable: child.stdin, readable: out });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  d.on('close', kill);
  d.on('error', kill);
  return d;
}

/** A decompressing stream for `c` (not 'none'). Errors name `what` (the layer). */
export function decompressor(c: Compression, what: string): Duplex {
  if (c === 'gzip') return zlib.createGunzip({ chunkSize: 256 << 10 });
  if (c === 'zstd') return childDuplex(zstdBinary(), ['-d', '-c', '-q', '--long=31'], what, 'corrupt zstd stream');
  throw new Error(`no decompressor for ${c}`);
}

/** A compressing stream (export): gzip level 6, zstd level 3 (zstd's and containerd's default). */
export function compressor(c: Compression, what: string): Duplex {
  if (c === 'gzip') return zlib.createGzip({ level: 6, chunkSize: 256 << 10 });
  if (c === 'zstd') return childDuplex(zstdBinary(), ['-c', '-q', '-3', '-T0'], what, 'zstd failed');
  throw new Error(`no compressor for ${c}`);
}
