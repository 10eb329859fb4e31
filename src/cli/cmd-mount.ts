import { pipeline } from 'node:stream/promises';
import type { Argv, CommandModule } from 'yargs';
import type { DriverName } from '../drivers/index.js';
import { LayerfsError } from '../common/errors.js';
import path from 'node:path';
import { exportDiff } from '../archive/index.js';
import { type GlobalArgs, callService, pathOrRef } from './context.js';
import { printJson } from './output.js';

type A<T = object> = GlobalArgs & T;
const DRIVERS = ['overlay', 'fuse', 'auto'] as const;

async function size(s: string | undefined): Promise<number | undefined> {
  if (s === undefined) return undefined;
  const { parseSize } = await import('../drivers/index.js'); // the drivers are loaded by the commands that use them
  try {
    return parseSize(s);
  } catch (err) {
    throw new LayerfsError('EQUOTA', `--quota ${s}`, (err as Error).message);
  }
}

export const mountCommand: CommandModule<GlobalArgs, A<{ ref: string; mnt: string; driver: DriverName; ro: boolean; quota?: string; name?: string; transport?: string }>> = {
  command: 'mount <ref> <mnt>',
  describe: 'mount image REF with a new RW layer on top (or, with --name, the unmounted RW layer of that name), or an existing RW layer REF, at MNT; prints the RW layer id',
  builder: (y) =>
    y
      .positional('ref', { type: 'string', demandOption: true })
      .positional('mnt', { type: 'string', demandOption: true })
      .option('driver', { choices: DRIVERS, default: 'auto' as DriverName, describe: 'overlay (kernel), fuse (userspace), auto' })
      .option('ro', { type: 'boolean', default: false, describe: 'a read-only merged view, no RW layer' })
      .option('quota', { type: 'string', describe: 'limit the RW layer, e.g. 10m' })
      .option('name', { type: 'string', describe: 'a name for the RW layer' })
      .option('transport', { choices: ['direct', 'fuse-native'], describe: 'FUSE driver: /dev/fuse spoken directly (default as root) or libfuse 2' }) as unknown as Argv<A<{ ref: string; mnt: string; driver: DriverName; ro: boolean; quota?: string; name?: string; transport?: string }>>,
  handler: async (args) => {
    const quota = await size(args.quota);
    // the FUSE transport: this command's choice, passed to whoever mounts (the daemon, when one runs)
    const transport = args.transport ?? process.env.LAYERFS_FUSE_TRANSPORT;
    const res = await callService(args, 'mountImage', [
      args.ref,
      path.resolve(args.mnt),
      { driver: args.driver, ro: args.ro, ...(quota !== undefined ? { quota } : {}), ...(args.name ? { name: args.name } : {}), ...(transport ? { transport } : {}) },
    ]);
    if (args.json) printJson(res);
    else process.stdout.write(res.layer + '\n');
  },
};

export const umountCommand: CommandModule<GlobalArgs, A<{ mnt: string; rm: boolean; force: boolean }>> = {
  command: ['umount <mnt>', 'unmount <mnt>'],
  describe: 'unmount a layerfs mount, or an RW layer wherever it is mounted (drops one reference); --rm also deletes the RW layer (mounted or not)',
  builder: (y) =>
    y
      .positional('mnt', { type: 'string', demandOption: true })
      .option('rm', { type: 'boolean', default: false, describe: 'delete the RW layer too' })
      .option('force', { type: 'boolean', default: false, describe: 'unmount whatever the reference count' }) as unknown as Argv<A<{ mnt: string; rm: boolean; force: boolean }>>,
  handler: async (args) => {
    const res = await callService(args, 'umount', [pathOrRef(args.mnt), { rm: args.rm, force: args.force }]);
    if (args.json) printJson(res);
  },
};

export const commitCommand: CommandModule<GlobalArgs, A<{ ref: string; name?: string[] }>> = {
  command: 'commit <ref>',
  describe: 'turn an RW layer (or the one mounted at a path) into a new RO layer and image; prints the image id',
  builder: (y) =>
    y.positional('ref', { type: 'string', demandOption: true, describe: 'mount point or RW layer id' }).option('name', { type: 'string', array: true, describe: 'name(s) for the new image' }) as unknown as Argv<
      A<{ ref: string; name?: string[] }>
    >,
  handler: async (args) => {
    const rec = await callService(args, 'commit', [pathOrRef(args.ref), args.name ?? []]);
    if (args.json) printJson(rec);
    else process.stdout.write(rec.id + '\n');
  },
};

export const mountInfoCommand: CommandModule<GlobalArgs, A<{ ref: string }>> = {
  command: 'mount-info <ref>',
  describe: 'driver metadata of a mount point or layer: WorkDir, MergedDir, UpperDir, LowerDir',
  builder: (y) => y.positional('ref', { type: 'string', demandOption: true }) as unknown as Argv<A<{ ref: string }>>,
  handler: async (args) => {
    const md = await callService(args, 'metadata', [pathOrRef(args.ref)]);
    if (args.json) return printJson(md);
    for (const [k, v] of Object.entries(md)) process.stdout.write(`${k}: ${String(v)}\n`);
  },
};

/** `layer diff ID` and `layer mount ID MNT`, added to the `layer` command. */
export function layerMountCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command<A<{ id: string }>>(
      'diff <id>',
      'write what an RW layer (or the one mounted at a path) changed, as an OCI layer tar, to stdout',
      (c) => c.positional('id', { type: 'string', demandOption: true }),
      async (args) => {
        if (process.stdout.isTTY) throw new LayerfsError('EUSAGE', 'layer diff', 'refusing to write a tar to a terminal: redirect stdout');
        const dir = await callService(args, 'layerDiffDir', [pathOrRef(args.id)]);
        await pipeline(exportDiff(dir), process.stdout, { end: false });
      },
    )
    .command<A<{ id: string; mnt: string; driver: DriverName }>>(
      'mount <id> <mnt>',
      'read-only view of one layer alone, whiteouts shown as stored',
      (c) =>
        c
          .positional('id', { type: 'string', demandOption: true })
          .positional('mnt', { type: 'string', demandOption: true })
          .option('driver', { choices: DRIVERS, default: 'auto' as DriverName, describe: 'driver whose host checks apply (the view itself is a read-only bind mount)' }),
      async (args) => {
        const mnt = await callService(args, 'mountLayer', [args.id, path.resolve(args.mnt), args.driver]);
        if (args.json) printJson({ mountpoint: mnt });
      },
    );
}
