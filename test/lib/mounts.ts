/** Test helpers for mounts: every mount a test makes is undone in a finally through these. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import { processAlive } from '../../src/common/proc.js';

export const run = promisify(execFile);

export async function isMounted(dir: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mounts', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[1] === dir);
}

/** Unmount if mounted; lazy as a last resort so a failing test never leaves a mount behind. */
export async function forceUnmount(dir: string): Promise<void> {
  for (let i = 0; i < 5 && (await isMounted(dir)); i++) {
    try {
      await run('umount', [dir]);
    } catch {
      await new Promise((r) => setTimeout(r, 100));
      if (i >= 3) await run('umount', ['-l', dir]).catch(() => undefined);
    }
  }
}

/** Waits (up to `ms`) until process `pid` has exited; a zombie waiting for init to reap it counts as exited. */
export async function waitProcessGone(pid: number, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
