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

/**
 * The dirs of a kernel overlay mount, from its superblock options as /proc/self/mountinfo shows them
 * (each option already unescaped). The kernel shows the paths as mount(2) was given them: ours are
 * relative to the store's mount base (see overlayMountData). `lowerdir=A:B` (a `\:` is a colon in a
 * name) and the newer `lowerdir+=A` options, one per lower, are both read, top first.
 */
export function parseOverlayMountData(superOptions: string[]): { lowers: string[]; upper?: string; work?: string } {
  const out: { lowers: string[]; upper?: string; work?: string } = { lowers: [] };
  for (const o of superOptions) {
    if (o.startsWith('lowerdir=')) out.lowers.push(...o.slice('lowerdir='.length).split(/(?<!\\):/).map((s) => s.replace(/\\:/g, ':')).filter(Boolean));
    else if (o.startsWith('lowerdir+=')) out.lowers.push(o.slice('lowerdir+='.length));
    else if (o.startsWith('upperdir=')) out.upper = o.slice('upperdir='.length);
    else if (o.startsWith('workdir=')) out.work = o.slice('workdir='.length);
  }
  return out;
}
