#!/usr/bin/env node
import yargs, { type CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { LayerfsError } from '../common/errors.js';
import { logger, setLogLevel } from '../common/log.js';
import { type GlobalArgs, globalOptions } from './context.js';
import { applyCommand, hostCommand, imageCommand, indexCommand, layerCommand, pruneCommand, statusCommand, storeCommand } from './cmd-store.js';
import { fuseCommand } from './cmd-fuse.js';
import { commitCommand, mountCommand, mountInfoCommand, umountCommand } from './cmd-mount.js';
import { daemonCommand, scanCommand } from './cmd-daemon.js';
import { snapshotterCommand } from './cmd-snapshotter.js';

/** `layerfs: <what>: <why>` for our errors; system errors keep their message. */
export function formatError(err: unknown): string {
  if (err instanceof LayerfsError) return `layerfs: ${err.message}`;
  if (err instanceof Error) return `layerfs: ${err.message}`;
  return `layerfs: ${String(err)}`;
}

/** `--json`: the error as one JSON line on stderr: {error: {code, what, message}}. */
export function errorJson(err: unknown): { error: { code: string; what?: string; message: string } } {
  if (err instanceof LayerfsError) return { error: { code: err.code, what: err.what, message: err.message } };
  const e = err as NodeJS.ErrnoException;
  if (e instanceof Error) return { error: { code: typeof e.code === 'string' ? e.code : 'ERROR', message: e.message } };
  return { error: { code: 'ERROR', message: String(err) } };
}

export async function main(argv: string[]): Promise<void> {
  const commands = [imageCommand, layerCommand, applyCommand, indexCommand, statusCommand, storeCommand, pruneCommand, hostCommand, mountCommand, umountCommand, commitCommand, mountInfoCommand, fuseCommand, daemonCommand, scanCommand, snapshotterCommand] as CommandModule<GlobalArgs, never>[];
  let y = globalOptions(yargs(argv).scriptName('layerfs'))
    .middleware((a) => setLogLevel(String(a['log-level'])))
    .strict()
    .demandCommand(1, 'name a command (see --help)')
    .recommendCommands()
    .help()
    .fail((msg, err) => {
      throw err ?? new LayerfsError('EUSAGE', 'usage', msg);
    });
  for (const c of commands) y = y.command(c as CommandModule) as typeof y;
  await y.parseAsync();
}

const isEntry = process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (isEntry || process.argv[1]?.endsWith('/layerfs')) {
  const argv = hideBin(process.argv);
  main(argv).catch((err: unknown) => {
    logger().debug({ err }, 'command failed');
    if (argv.includes('--json')) process.stderr.write(JSON.stringify(errorJson(err)) + '\n');
    else process.stderr.write(formatError(err) + '\n');
    process.exitCode = 1;
  });
}
