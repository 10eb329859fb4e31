import { run } from '../host.js';
import type { Quota } from './index.js';

/** btrfs: each RW layer dir is a subvolume with a qgroup limit (tested here, on a loop-mounted image). */
export async function btrfsQuota(root: string): Promise<Quota | null> {
  try {
    await run('btrfs', ['qgroup', 'show', root]);
  } catch {
    return null; // quotas not enabled on this filesystem (or no btrfs-progs)
  }
  return {
    kind: 'btrfs-qgroup',
    makeLayerDir: async (dir) => {
      await run('btrfs', ['subvolume', 'create', dir]);
    },
    limit: async (dir, bytes) => {
      await run('btrfs', ['qgroup', 'limit', String(bytes), dir]);
    },
    removeLayerDir: async (dir) => {
      await run('btrfs', ['subvolume', 'delete', dir]).catch(() => undefined);
    },
  };
}
