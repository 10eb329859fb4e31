import { LayerfsError } from '../../common/errors.js';

/** The kernel copies mount data into one page: options longer than this cannot be passed to mount(2). */
export const MOUNT_DATA_MAX = 4096 - 1;

/**
 * Kernel overlay mount options with lower dirs given as short paths relative to the mount's
 * working dir (docker overlay2's `l/` trick): 200 lowers take ~3.2 KiB instead of ~20 KiB.
 */
export function overlayMountData(lowers: string[], upper?: string, work?: string): string {
  const parts = [`lowerdir=${lowers.join(':')}`];
  if (upper && work) parts.push(`upperdir=${upper}`, `workdir=${work}`);
  const data = parts.join(',');
  if (Buffer.byteLength(data) > MOUNT_DATA_MAX) {
    throw new LayerfsError('EMOUNT', `overlay mount of ${lowers.length} layers`, `mount data is ${Buffer.byteLength(data)} bytes, more than a page (${MOUNT_DATA_MAX})`);
  }
  for (const p of [...lowers, upper ?? '', work ?? '']) {
    if (/[,:]/.test(p)) throw new LayerfsError('EMOUNT', p, 'an overlay path may not contain "," or ":"');
  }
  return data;
}
