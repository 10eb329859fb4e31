import { backingFs } from '../host.js';
import { btrfsQuota } from './btrfs.js';
import { projectQuota } from './projquota.js';

/**
 * How an RW layer's size is limited on a backing filesystem. The RW layer's whole dir (diff and
 * work, which overlay needs on one filesystem and subvolume) is the unit the limit applies to.
 */
export interface Quota {
  kind: 'btrfs-qgroup' | 'xfs-prjquota' | 'ext4-prjquota';
  /** Create the (temp) layer dir so a limit can later apply to it. */
  makeLayerDir(dir: string): Promise<void>;
  /** Limit the layer dir (at its final path) to `bytes`. */
  limit(dir: string, bytes: number): Promise<void>;
  /** Remove a layer dir made by makeLayerDir. */
  removeLayerDir(dir: string): Promise<void>;
}

/** The quota mechanism for `root`, or null when its filesystem cannot enforce one. */
export async function quotaFor(root: string): Promise<Quota | null> {
  const fs = await backingFs(root);
  if (fs === 'btrfs') return btrfsQuota(root);
  if (fs === 'xfs' || fs === 'ext4') return projectQuota(root, fs);
  return null;
}

/** Parse `10m`, `1.5G`, `4096` (bytes; k/m/g/t are powers of 1024). */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$/i.exec(s);
  if (!m) throw new Error(`not a size: ${JSON.stringify(s)} (use e.g. 512k, 10m, 2g)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.floor(parseFloat(m[1]!) * mult);
}
