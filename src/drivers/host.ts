import { execFile } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { readMountTable } from '../common/mountinfo.js';
import { native } from '../common/native.js';

export const run = promisify(execFile);

/** Filesystem magic numbers (statfs f_type) we care about. */
const FS_NAMES: Record<number, string> = {
  0xef53: 'ext4',
  0x9123683e: 'btrfs',
  0x58465342: 'xfs',
  0x01021994: 'tmpfs',
  0x6969: 'nfs',
  0x794c7630: 'overlay',
  0x65735546: 'fuse',
  0x2fc12fc1: 'zfs',
  0x73717368: 'squashfs',
};

export async function backingFs(dir: string): Promise<string> {
  const st = await statfs(dir);
  return FS_NAMES[st.type] ?? `0x${st.type.toString(16)}`;
}

export interface HostProbe {
  backingFs: string;
  supportsDType: boolean;
  overlaySupported: boolean;
  fuseSupported: boolean;
}

/** Mount point -> filesystem type, from the mount table (the last mount at a path wins). */
export async function mountpoints(): Promise<Map<string, string>> {
  return new Map((await readMountTable()).map((m) => [m.mountpoint, m.fstype]));
}

export async function isMountpoint(dir: string): Promise<boolean> {
  return (await mountpoints()).has(path.resolve(dir));
}

/** `LAYERFS_NO_KERNEL_OVERLAY=1` hides kernel overlay (to test the FUSE fallback on a host that has it). */
export function kernelOverlayHidden(): boolean {
  return process.env.LAYERFS_NO_KERNEL_OVERLAY === '1';
}

async function probeOverlay(root: string): Promise<boolean> {
  if (kernelOverlayHidden()) return false;
  const fsList = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\toverlay$/m.test(fsList)) {
    await run('modprobe', ['overlay']).catch(() => undefined);
    if (!/\toverlay$/m.test(await readFile('/proc/filesystems', 'utf8').catch(() => ''))) return false;
  }
  const dir = await mkdtemp(path.join(root, 'overlay', '.tmp-probe-'));
  try {
    for (const d of ['lower', 'upper', 'work', 'merged']) await mkdir(path.join(dir, d));
    await writeFile(path.join(dir, 'lower', 'f'), '');
    await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${dir}/lower,upperdir=${dir}/upper,workdir=${dir}/work`, `${dir}/merged`]);
    await run('umount', [`${dir}/merged`]);
    return true;
  } catch {
    return false;
  } finally {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

const probes = new Map<string, Promise<HostProbe>>();

/** What this host and the root's filesystem support (probed once per root per process). */
export function probeHost(root: string): Promise<HostProbe> {
  const key = `${path.resolve(root)}|${kernelOverlayHidden()}`;
  let p = probes.get(key);
  if (!p) {
    p = probeHostNow(root);
    probes.set(key, p);
    p.catch(() => probes.delete(key));
  }
  return p;
}

async function probeHostNow(root: string): Promise<HostProbe> {
  const dir = await mkdtemp(path.join(root, 'overlay', '.tmp-dtype-'));
  let supportsDType = false;
  try {
    await writeFile(path.join(dir, 'f'), '');
    supportsDType = native.dtypeSupported(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const fuseSupported = await access('/dev/fuse').then(
    () => true,
    () => false,
  );
  return { backingFs: await backingFs(root), supportsDType, overlaySupported: await probeOverlay(root), fuseSupported };
}
