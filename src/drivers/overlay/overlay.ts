import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { LayerfsError } from '../../common/errors.js';
import type { MountRecord } from '../../index/index.js';
import { LayeredDriver, type MergeSpec } from '../base.js';
import { run, type HostProbe } from '../host.js';
import { overlayMountData } from './mountdata.js';

/** The kernel overlay driver: `mount -t overlay`, run from the store's overlay dir so lowers are short relative paths. */
export class OverlayDriver extends LayeredDriver {
  readonly name = 'overlay' as const;

  protected usable(p: HostProbe): string | null {
    if (!p.overlaySupported) return `kernel overlay does not work on ${p.backingFs} here (no overlay module, or the backing filesystem cannot hold an upper dir)`;
    if (!p.supportsDType) return `the backing filesystem (${p.backingFs}) does not report d_type, which overlay needs`;
    return null;
  }

  protected async mountMerged(spec: MergeSpec): Promise<{ pid?: number }> {
    let lowers = spec.shortLowers;
    if (!spec.upper && lowers.length === 1) {
      // overlay needs two lowers without an upper dir: add an empty one
      const empty = path.join(spec.base, 'empty');
      await mkdir(empty, { recursive: true, mode: 0o755 });
      lowers = [...lowers, 'empty'];
    }
    if (lowers.length === 0 && !spec.upper) throw new LayerfsError('EMOUNT', spec.target, 'nothing to mount');
    if (lowers.length === 0) {
      // an RW layer with no parent: overlay still wants a lower
      await mkdir(path.join(spec.base, 'empty'), { recursive: true, mode: 0o755 });
      lowers = ['empty'];
    }
    const rel = (p?: string) => (p ? path.relative(spec.base, p) : undefined);
    const data = overlayMountData(lowers, rel(spec.upper), rel(spec.work));
    try {
      await run('mount', ['-t', 'overlay', 'overlay', '-o', data, spec.target], { cwd: spec.base });
    } catch (err) {
      const msg = ((err as { stderr?: string }).stderr ?? (err as Error).message).trim();
      throw new LayerfsError('EMOUNT', spec.target, `overlay mount failed: ${msg}`);
    }
    return {};
  }

  protected async unmountMerged(rec: MountRecord): Promise<void> {
    try {
      await run('umount', [rec.mountpoint]);
    } catch (err) {
      const msg = ((err as { stderr?: string }).stderr ?? (err as Error).message).trim();
      throw new LayerfsError('EMOUNT', rec.mountpoint, `unmount failed: ${msg}`);
    }
  }
}
