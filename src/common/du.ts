import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';

/** Bytes of regular-file content under a dir (LayerRecord.size; an RW layer's real size in `layer ls`). */
export async function contentSize(dir: string): Promise<number> {
  let total = 0;
  for (const d of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (d.isFile()) total += (await lstat(path.join(d.parentPath ?? (d as unknown as { path: string }).path, d.name))).size;
  }
  return total;
}
