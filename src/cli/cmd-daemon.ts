import type { Argv, CommandModule } from 'yargs';
import { readFile } from 'node:fs/promises';
import { LayerfsError } from '../common/errors.js';
import { Store } from '../store/index.js';
import { type GlobalArgs, callService, storeOptions } from './context.js';
import { printJson, short } from './output.js';

type A<T = object> = GlobalArgs & T;

const openStore = (args: GlobalArgs) => Store.open(storeOptions(args, { logLockWaits: true }));

export const daemonCommand: CommandModule<GlobalArgs, A<{ interval: number; 'socket-group'?: string }>> = {
  command: 'daemon',
  describe: "own the root's index and serve the CLI on <root>/api.sock; scan the shared store (reader), renew this host's lease, remove what the writer marked; one per root; stops on SIGTERM/SIGINT",
  builder: (y) =>
    y
      .option('interval', { type: 'number', default: 5, describe: 'seconds between scans' })
      .option('socket-group', { type: 'string', describe: 'a group whose members may use the API socket too (default: the root\'s owner only)' }) as unknown as Argv<A<{ interval: number; 'socket-group'?: string }>>,
  handler: async (args) => {
    const store = await openStore(args);
    const gid = args['socket-group'] !== undefined ? await groupId(args['socket-group']) : undefined;
    let holder: import('../api/holder.js').IndexHolder | null = null;
    let server: import('../api/server.js').ApiServer | null = null;
    // loaded here only: the daemon's parts (the scanner, the index holder with the Service, the socket server)
    const [{ runDaemon }, { IndexHolder }, { startApiServer }] = await Promise.all([import('../scanner/daemon.js'), import('../api/holder.js'), import('../api/server.js')]);
    await runDaemon(store, {
      interval: args.interval,
      started: async () => {
        holder = await IndexHolder.open(storeOptions(args, { logLockWaits: true }));
        server = await startApiServer(holder, store.apiSocket, gid !== undefined ? { gid } : {});
      },
      withIndex: (fn) => holder!.exclusive((svc) => fn(svc.index)),
      stopped: async () => {
        await server?.close();
        await holder?.close();
      },
    });
  },
};

/** A group name or number -> gid (getent). */
async function groupId(group: string): Promise<number> {
  if (/^\d+$/.test(group)) return Number(group);
  const line = (await readFile('/etc/group', 'utf8')).split('\n').find((l) => l.split(':')[0] === group);
  if (!line) throw new LayerfsError('EUSAGE', `--socket-group ${group}`, 'no such group');
  return Number(line.split(':')[2]);
}

export const scanCommand: CommandModule<GlobalArgs, A<{ full: boolean }>> = {
  command: 'scan',
  describe: 'scan the shared store once now; prints what was added and removed',
  builder: (y) => y.option('full', { type: 'boolean', default: false, describe: 'list every dir whatever the mtimes say' }) as Argv<A<{ full: boolean }>>,
  handler: async (args) => {
    const r = await callService(args, 'scan', [{ full: args.full }]);
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
