import type { CommandModule } from 'yargs';
import { LayerfsError } from '../common/errors.js';

interface FuseArgs {
  mountpoint: string;
  o?: string | string[];
  f?: boolean;
  d?: boolean;
  transport?: string;
}

/**
 * `layerfs fuse -o lowerdir=A:B,upperdir=U,workdir=W MNT` — fuse-overlayfs' command line. Returns when the mount
 * is ready; the mount is served by its own background process (src/fuse/server-main). `-f` serves in the foreground.
 * `umount MNT` / `fusermount -u MNT` or SIGTERM to the server ends it.
 */
export const fuseCommand: CommandModule<object, FuseArgs> = {
  command: 'fuse <mountpoint>',
  describe: 'mount an overlay with the FUSE driver (fuse-overlayfs compatible command line)',
  builder: (y) =>
    y
      .positional('mountpoint', { type: 'string', demandOption: true, describe: 'where to mount' })
      .option('o', { type: 'string', nargs: 1, describe: 'lowerdir=A:B (top first),upperdir=U,workdir=W[,...]' })
      .option('f', { type: 'boolean', default: false, describe: 'stay in the foreground' })
      .option('d', { type: 'boolean', default: false, describe: 'debug: foreground with libfuse tracing' })
      .option('transport', { choices: ['direct', 'fuse-native'], describe: '/dev/fuse spoken directly (default as root) or libfuse 2 (fuse-native); also -o transport=' }) as never,
  handler: async (argv) => {
    const opts = ([] as string[]).concat(argv.o ?? []);
    if (argv.transport) opts.push(`transport=${argv.transport}`);
    const { parseMountOptions } = await import('../fuse/options.js');
    parseMountOptions(opts, argv.mountpoint); // usage errors before anything starts
    const args = [...opts.flatMap((o) => ['-o', o]), ...(argv.d ? ['-d'] : []), argv.mountpoint];
    if (argv.f || argv.d) {
      // foreground: this process becomes the server
      const { serverMain } = await import('../fuse/server-cli.js');
      await serverMain(['-f', ...args]);
      return;
    }
    try {
      const { spawnServer } = await import('../fuse/spawn.js');
      await spawnServer(args);
    } catch (err) {
      if (err instanceof LayerfsError) throw err;
      throw new LayerfsError('EMOUNT', 'fuse', (err as Error).message);
    }
  },
};
