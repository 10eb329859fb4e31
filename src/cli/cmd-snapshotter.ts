import type { Argv, CommandModule } from 'yargs';
import { logger } from '../common/log.js';
import { type GlobalArgs, storeOptions } from './context.js';

type A<T = object> = GlobalArgs & T;

export const snapshotterCommand: CommandModule<GlobalArgs, A<{ address: string; driver: 'overlay' | 'fuse' }>> = {
  command: 'snapshotter',
  describe: 'serve containerd snapshots (a containerd proxy snapshotter plugin) on a unix socket; stops on SIGTERM/SIGINT',
  builder: (y) =>
    y
      .option('address', { type: 'string', default: '/run/layerfs/snapshotter.sock', describe: 'unix socket to listen on' })
      .option('driver', { choices: ['overlay', 'fuse'] as const, default: 'overlay' as const, describe: 'overlay: containerd mounts kernel overlays; fuse: layerfs mounts FUSE views and returns bind mounts' }) as unknown as Argv<
      A<{ address: string; driver: 'overlay' | 'fuse' }>
    >,
  handler: async (args) => {
    const { startSnapshotterServer } = await import('../snapshotter/index.js'); // gRPC: loaded only here
    const srv = await startSnapshotterServer(args.address, { ...storeOptions(args, { logLockWaits: true }), driver: args.driver });
    logger().info({ address: srv.address, driver: args.driver, root: args.root }, 'snapshotter listening');
    process.stderr.write(`layerfs snapshotter: listening on ${srv.address} (driver ${args.driver}, root ${args.root})\n`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        srv.stop().then(resolve, (err: unknown) => {
          logger().error({ err }, 'snapshotter stop failed');
          resolve();
        });
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
  },
};
