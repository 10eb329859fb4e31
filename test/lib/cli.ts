/** Run the real CLI (the compiled entry) in a child process. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const cliEntry = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The signal that ended the process, if one did (then `code` is 1). */
  signal: NodeJS.Signals | null;
}

export function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliEntry, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr, signal: (err as { signal?: NodeJS.Signals } | null)?.signal ?? null });
    });
  });
}

/** Run the CLI and fail with its stderr unless it exits 0. */
export async function cliOk(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await cli(args, env);
  if (r.code !== 0) throw new Error(`layerfs ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export function cliSpawn(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [cliEntry, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A child's output as it comes, whether it still runs, and its exit code once it ends. */
export interface Watched {
  stdout: () => string;
  stderr: () => string;
  running: () => boolean;
  exited: Promise<number | null>;
}

export function watch(child: ChildProcess): Watched {
  let out = '';
  let err = '';
  child.stdout!.on('data', (c) => (out += c));
  child.stderr!.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return { stdout: () => out, stderr: () => err, running: () => child.exitCode === null && child.signalCode === null, exited };
}
