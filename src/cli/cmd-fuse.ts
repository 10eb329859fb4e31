import type { CommandModule } from 'yargs';

/** `layerfs fuse -o lowerdir=A:B,upperdir=U,workdir=W MNT` — owned by the FUSE work (src/fuse). Placeholder until it lands. */
export const fuseCommand: CommandModule = {
  command: 'fuse',
  describe: 'serve a FUSE overlay mount (fuse-overlayfs compatible command line)',
  handler: () => {
    throw new Error('not built yet');
  },
};
