import { statfs } from 'node:fs/promises';
import { defaultTransport, startFuseMount, stopFuseMount } from '../../fuse/index.js';
import { unmount } from '../../fuse/mountinfo.js';
import { logger } from '../../common/log.js';
import { processAlive } from '../../common/proc.js';
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
      transport: defaultTransport(),
      ...(spec.upper && spec.work ? { upperdir: spec.upper, workdir: spec.work } : {}),
    });
    return { pid };
  }

  protected async unmountMerged(rec: MountRecord): Promise<void> {
    await stopFuseMount(rec.mountpoint);
  }

  /**
   * Mounts of ours whose server died (kill -9, OOM): the pid is gone and the mount answers ENOTCONN. Unmount them
   * and drop their records (their RW layers stay). Returns the mount points cleaned.
   */
  async cleanStale(): Promise<string[]> {
    const out: string[] = [];
    for (const m of await this.index.listMounts()) {
      if (m.driver !== 'fuse' || !m.pid || processAlive(m.pid)) continue;
      // statfs always reaches the server (stat may be answered from the kernel's attribute cache)
      const code = await statfs(m.mountpoint).then(
        () => null,
        (err: NodeJS.ErrnoException) => err.code ?? null,
      );
      if (code !== 'ENOTCONN' && code !== 'ECONNABORTED') continue;
      try {
        await unmount(m.mountpoint, { lazy: true });
      } catch (err) {
        logger().warn({ err, mount: m.mountpoint }, 'stale FUSE mount: unmount failed');
        continue;
      }
      await this.index.delMount(m.mountpoint);
      logger().info({ mount: m.mountpoint, pid: m.pid }, 'removed a stale FUSE mount (its server had died)');
      out.push(m.mountpoint);
    }
    return out;
  }
}
