/**
 * FUSE mounts for one named transport (direct or fuse-native), for the tests that run per transport. A transport
 * the build does not know (the `transport=` mount option is refused) is reported as unavailable, so a test can say
 * so instead of silently passing.
 */
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { isMounted, parseMountOptions, SERVER_MAIN } from '../../src/fuse/index.js';
import { forceUnmount, waitProcessGone } from './mounts.js';

const run = promisify(execFile);

/** `direct-pt`: the direct transport with `-o passthrough`. */
export type TransportName = 'direct' | 'fuse-native' | 'direct-pt';
export const TRANSPORT_NAMES: TransportName[] = ['fuse-native', 'direct', 'direct-pt'];

/** Does this build know the `transport=` option (and so the direct transport)? */
export function transportOptionKnown(): boolean {
  try {
    parseMountOptions(['lowerdir=/x,transport=fuse-native'], '/m');
    return true;
  } catch {
    return false;
  }
}

/** Why a transport cannot run here, or null. Without the option the build only has fuse-native. */
export function transportUnavailable(t: TransportName): string | null {
  if (transportOptionKnown()) return null;
  return t === 'fuse-native' ? null : `this build has no transport=${t} mount option yet`;
}

export interface TMount {
  mnt: string;
  pid: number;
  stop(): Promise<void>;
}

/** Mount with the server as a detached child process (the server binary's background mode). */
export async function mountWith(t: TransportName, lowers: string[], mnt: string, upper?: string, work?: string): Promise<TMount> {
  await mkdir(mnt, { recursive: true });
  let o = `lowerdir=${lowers.join(':')}`;
  if (upper) o += `,upperdir=${upper},workdir=${work}`;
  if (transportOptionKnown()) o += t === 'direct-pt' ? ',transport=direct,passthrough' : `,transport=${t}`;
  await run(process.execPath, [SERVER_MAIN, '-o', o, mnt]);
  const { stdout } = await run('pgrep', ['-f', `server-main.js -f --ready-fd 3 -o ${o} ${mnt}`]).catch(() => ({ stdout: '' }));
  const pid = Number(stdout.trim().split('\n')[0] || 0);
  return {
    mnt,
    pid,
    stop: async () => {
      if (await isMounted(mnt)) await run('umount', [mnt]).catch(() => undefined);
      await forceUnmount(mnt);
      if (pid) await waitProcessGone(pid, 5000);
    },
  };
}
