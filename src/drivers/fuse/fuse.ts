import { startFuseMount, stopFuseMount } from '../../fuse/index.js';
import type { MountRecord } from '../../index/index.js';
import { LayeredDriver, type MergeSpec } from '../base.js';
import type { HostProbe } from '../host.js';

/** The FUSE driver: a layerfs overlay server process per mount (src/fuse), over the same layer dirs. */
export class FuseDriver extends LayeredDriver {
  readonly name = 'fuse' as const;

  protected usable(p: HostProbe): string | null {
    return p.fuseSupported ? null : 'FUSE is not available here (no /dev/fuse)';
  }

  protected async mountMerged(spec: MergeSpec): Promise<{ pid?: number }> {
    const { pid } = await startFuseMount({
      lowerdirs: spec.lowers,
      mountpoint: spec.target,
      ...(spec.upper && spec.work ? { upperdir: spec.upper, workdir: spec.work } : {}),
    });
    return { pid };
  }

  protected async unmountMerged(rec: MountRecord): Promise<void> {
    await stopFuseMount(rec.mountpoint);
  }
}
