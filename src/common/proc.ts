import { readdirSync, readFileSync } from 'node:fs';

/** The state letter of /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat ("pid (comm) S ..."; comm may hold ')'). */
function procState(file: string): string | null {
  try {
    const stat = readFileSync(file, 'utf8');
    const i = stat.lastIndexOf(')');
    return stat.slice(i + 2, i + 3);
  } catch {
    return null;
  }
}

/**
 * Whether process `pid` is still running. A killed process whose parent has not reaped it yet
 * (an orphan waits for init, which can take a second or more) is a zombie: `kill(pid, 0)` still
 * succeeds, but once all of its threads have exited it holds no files and serves nothing, so it
 * counts as dead here. A zombie leader whose other threads are still exiting still holds its
 * files (a FUSE server's /dev/fuse among them), so it counts as alive.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  const dead = (s: string | null) => s === null || s === 'Z' || s === 'X';
  if (!dead(procState(`/proc/${pid}/stat`))) return true;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tasks.some((tid) => !dead(procState(`/proc/${pid}/task/${tid}/stat`)));
}

/**
 * A test's hook at a known step: when LAYERFS_CRASH_AT names it, the process kills itself with SIGKILL right here
 * (a real kill -9 where a test killing from outside could only hope to land); when LAYERFS_PAUSE_AT names it, the
 * process stops itself (SIGSTOP) until the test, having done something at that very moment, sends SIGCONT.
 */
export function testPoint(name: string): void {
  if (process.env.LAYERFS_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
  if (process.env.LAYERFS_PAUSE_AT === name) process.kill(process.pid, 'SIGSTOP');
}
