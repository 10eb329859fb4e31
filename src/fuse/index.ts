/**
 * The FUSE overlay: public surface for the graph driver and the CLI.
 *  - startFuseMount / stopFuseMount: a mount served by its own process;
 *  - Overlay: the transport-independent core (node ids, lookup, copy-up, whiteouts, hardlinks);
 *  - the fuse-overlayfs style option parser.
 */
import path from 'node:path';
import { LayerfsError } from '../common/errors.js';
import { isMounted, unmount } from './mountinfo.js';
import { formatMountOptions, type Transport } from './options.js';
import { spawnServer } from './spawn.js';

export { Overlay, ROOT_ID, type OverlayOptions, type StatFs } from './core/overlay.js';
export type { Node, NodeStat, DirEntry, Kind } from './core/node.js';
export { FsError, errnoOf } from './core/errors.js';
export { parseMountOptions, formatMountOptions, splitLowerdirs, defaultTransport, parseTransport, TRANSPORTS, type MountConfig, type Transport } from './options.js';
export { isMounted } from './mountinfo.js';
export { SERVER_MAIN } from './spawn.js';
export { listServers, serverOfCmdline, type ServerProcess } from './servers.js';

export interface FuseMountOptions {
  /** Lower dirs, top first. */
  lowerdirs: string[];
  /** Without an upper dir the mount is read-only. */
  upperdir?: string;
  workdir?: string;
  mountpoint: string;
  /** Default: defaultTransport() (direct as root). */
  transport?: Transport;
  /** FUSE passthrough (`-o passthrough`; direct transport). */
  passthrough?: boolean;
}

/** Spawn the server process for one mount; resolves when the mount is ready. */
export async function startFuseMount(o: FuseMountOptions): Promise<{ pid: number }> {
  const abs = (p: string) => path.resolve(p);
  const opt = formatMountOptions({ lowerdirs: o.lowerdirs.map(abs), upperdir: o.upperdir && abs(o.upperdir), workdir: o.workdir && abs(o.workdir), transport: o.transport, passthrough: o.passthrough });
  return spawnServer(['-o', opt, abs(o.mountpoint)]);
}

/** Unmount; the server process notices and exits. Resolves when the mount is gone. */
export async function stopFuseMount(mountpoint: string): Promise<void> {
  const mnt = path.resolve(mountpoint);
  if (!(await isMounted(mnt))) return;
  try {
    await unmount(mnt);
  } catch (err) {
    throw new LayerfsError('EMOUNT', `fuse: ${mnt}`, (err as Error).message, { cause: err });
  }
}
