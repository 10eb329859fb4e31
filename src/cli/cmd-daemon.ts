import type { Argv, CommandModule } from 'yargs';
import { Store } from '../store/index.js';
import { type GlobalArgs, storeOptions } from './context.js';
import { printJson, short } from './output.js';

type A<T = object> = GlobalArgs & T;

const openStore = (args: GlobalArgs) => Store.open(storeOptions(args, { logLockWaits: true }));

export const daemonCommand: CommandModule<GlobalArgs, A<{ interval: number }>> = {
  command: 'daemon',
  describe: 'run the periodic scan of the shared store (reader); one per root; stops on SIGTERM/SIGINT',
  builder: (y) =>
    y.option('interval', { type: 'number', default: 5, describe: 'seconds between scans' }) as Argv<A<{ interval: number }>>,
  handler: async (args) => {
    const { runDaemon } = await import('../scanner/daemon.js');
    await runDaemon(await openStore(args), { interval: args.interval });
  },
};

export const scanCommand: CommandModule<GlobalArgs, A<{ full: boolean }>> = {
  command: 'scan',
  describe: 'scan the shared store once now; prints what was added and removed',
  builder: (y) => y.option('full', { type: 'boolean', default: false, describe: 'list every dir whatever the mtimes say' }) as Argv<A<{ full: boolean }>>,
  handler: async (args) => {
    const { scanStore } = await import('../scanner/daemon.js');
    const r = await scanStore(await openStore(args), { full: args.full });
    if (args.json) return printJson(r);
    const lines = [
      ...r.added.layers.map((l) => `added layer ${short(l)}`),
      ...r.added.images.map((i) => `added image ${short(i)}`),
      ...r.updated.images.map((i) => `updated image ${short(i)}`),
      ...r.removed.images.map((i) => `removed image ${short(i)}`),
      ...r.removed.layers.map((l) => `removed layer ${short(l)}`),
      ...r.missing.map((l) => `missing layer ${short(l)} (gone from the store, still used here)`),
      ...r.repairedNames.map((n) => `repaired name ${n.name}: ${n.now ? `image ${short(n.now)}` : 'dropped'} (was ${n.was ? `image ${short(n.was)}` : 'missing'})`),
    ];
    if (r.waiting.layers.length || r.waiting.images.length) lines.push(`waiting: ${r.waiting.layers.length} layers, ${r.waiting.images.length} images not ready yet`);
    process.stdout.write((lines.length ? lines : ['no change']).join('\n') + '\n');
  },
};
