import { mkdir, readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { run } from '../host.js';
import type { Quota } from './index.js';

/**
 * xfs (mounted with prjquota) and ext4 (project quota feature, mounted with prjquota): a project
 * id on the RW layer dir, inherited by everything created below it, with a hard block limit.
 * NOT exercised by the test suite: this machine's kernel lacks XFS and ext4 quota support.
 */
async function mountOf(dir: string): Promise<{ mnt: string; opts: string } | null> {
  let best: { mnt: string; opts: string } | null = null;
  for (const line of (await readFile('/proc/self/mounts', 'utf8')).split('\n')) {
    const f = line.split(' ');
    if (f.length < 4) continue;
    const mnt = f[1]!;
    if ((dir === mnt || dir.startsWith(mnt.endsWith('/') ? mnt : mnt + '/')) && (!best || mnt.length > best.mnt.length)) best = { mnt, opts: f[3]! };
  }
  return best;
}

/** A project id derived from the layer dir name, in the range docker's overlay2 also avoids (>= 2^20). */
function projectId(dir: string): number {
  const h = createHash('sha256').update(path.basename(dir)).digest();
  return (1 << 20) + (h.readUInt32BE(0) % (1 << 30));
}

export async function projectQuota(root: string, fs: 'xfs' | 'ext4'): Promise<Quota | null> {
  const m = await mountOf(path.resolve(root));
  if (!m || !/(^|,)(prjquota|pquota)(,|$)/.test(m.opts)) return null;
  return {
    kind: fs === 'xfs' ? 'xfs-prjquota' : 'ext4-prjquota',
    makeLayerDir: async (dir) => {
      await mkdir(dir);
    },
    limit: async (dir, bytes) => {
      const id = projectId(dir);
      if (fs === 'xfs') {
        await run('xfs_quota', ['-x', '-c', `project -s -p ${dir} ${id}`, m.mnt]);
        await run('xfs_quota', ['-x', '-c', `limit -p bhard=${bytes} ${id}`, m.mnt]);
      } else {
        await run('chattr', ['-R', '-p', String(id), '+P', dir]);
        await run('setquota', ['-P', String(id), '0', String(Math.ceil(bytes / 1024)), '0', '0', m.mnt]);
      }
    },
    removeLayerDir: async () => undefined,
  };
}
