/**
 * Copying byte ranges between fds on the JS thread, a bounded step at a time: copy_file_range(2), or through a
 * buffer where the two files' filesystems cannot (EXDEV: layers on another fs than the upper; ENOSYS/EOPNOTSUPP).
 * Used by the copy_file_range op and by the copy-up of sparse files (which copies only their data segments).
 */
import { closeSync, constants as fsc, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { native, SEEK_DATA, SEEK_HOLE } from '../../common/native.js';
import { isCode } from './errors.js';

/** Bytes one step copies: a synchronous syscall, so other requests wait at most this long. */
export const COPY_STEP = 1 << 20;

export class RangeCopier {
  private buf: Buffer | null = null;

  constructor(private readonly flags = 0) {}

  /** Copy at most COPY_STEP of `len` bytes once: bytes copied, 0 at the end of the input. */
  step(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number {
    const want = Math.min(len, COPY_STEP);
    if (this.buf === null) {
      try {
        return native.copyFileRange(fdIn, offIn, fdOut, offOut, want, this.flags);
      } catch (err) {
        if (this.flags !== 0 || !isCode(err, 'EXDEV', 'ENOSYS', 'ENOTSUP', 'EOPNOTSUPP')) throw err;
        this.buf = Buffer.allocUnsafe(COPY_STEP);
      }
    }
    const n = readSync(fdIn, this.buf, 0, want, offIn);
    for (let w = 0; w < n; ) w += writeSync(fdOut, this.buf, w, n - w, offOut + w);
    return n;
  }
}

export const loopTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Copy a sparse file into a new file `dst` (created, must not exist) keeping its holes, as kernel overlay's copy-up
 * does: only the data segments (SEEK_DATA/SEEK_HOLE) are copied, then the size is set. A 1 TiB sparse file (say,
 * /var/log/lastlog) costs what its data costs. A turn of the loop between steps keeps other requests answered.
 */
export async function copySparse(src: string, dst: string, size: number): Promise<void> {
  const fin = openSync(src, fsc.O_RDONLY);
  let fout = -1;
  try {
    fout = openSync(dst, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    const copier = new RangeCopier();
    let off = 0;
    while (off < size) {
      let data: number;
      try {
        data = native.lseek(fin, off, SEEK_DATA);
      } catch (err) {
        if (isCode(err, 'ENXIO')) break; // only a hole is left
        throw err;
      }
      const end = native.lseek(fin, data, SEEK_HOLE);
      for (let at = data; at < end; ) {
        const n = copier.step(fin, at, fout, at, end - at);
        if (n === 0) break; // the file shrank under us: lowers do not change, so this is only a guard
        at += n;
        await loopTurn();
      }
      off = end;
    }
    ftruncateSync(fout, size);
  } finally {
    closeSync(fin);
    if (fout >= 0) closeSync(fout);
  }
}
