/** `image pull` and `image export` (mounted under `image` in cmd-store.ts). */
import type { Argv, CommandModule } from 'yargs';
import type { PullEvent, PullMode } from '../image/index.js';
import { normalizeName } from '../image/refs.js';
import { type GlobalArgs, withService } from './context.js';
import { humanSize, printJson } from './output.js';

type A<T = object> = GlobalArgs & T;

interface LayerLine {
  digest: string;
  state: string;
  bytes: number;
  total: number;
}

/** Progress to stderr: redrawn per-layer lines and a total on a TTY, plain lines otherwise. */
export function progressPrinter(quiet: boolean, tty = Boolean(process.stderr.isTTY)): { onEvent: (ev: PullEvent) => void; finish: () => void } {
  if (quiet) return { onEvent: () => undefined, finish: () => undefined };
  const out = process.stderr;
  const lines: LayerLine[] = [];
  let drawn = 0;
  let timer: NodeJS.Timeout | null = null;
  const size = (n: number) => (n >= 0 ? humanSize(n) : '?');
  const draw = () => {
    timer = null;
    const total = lines.reduce((a, l) => a + (l.state === 'exists' ? 0 : Math.max(0, l.total)), 0);
    const done = lines.reduce((a, l) => a + (l.state === 'exists' ? 0 : l.bytes), 0);
    const text = [
      ...lines.map((l) => `${l.digest.slice(7, 19)}  ${l.state.padEnd(11)} ${l.state === 'exists' ? '' : `${size(l.bytes)} / ${size(l.total)}`}`),
      `total       ${humanSize(done)} / ${humanSize(total)}`,
    ];
    let s = drawn ? `\x1b[${drawn}A` : '';
    for (const t of text) s += `\x1b[2K${t}\n`;
    out.write(s);
    drawn = text.length;
  };
  const schedule = () => {
    if (!timer) timer = setTimeout(draw, 100);
  };
  return {
    onEvent(ev) {
      if (ev.type === 'resolved') {
        if (!tty) {
          const missing = ev.layers.filter((l) => !l.exists);
          out.write(`pulling ${ev.name} (${ev.manifestDigest}): ${ev.layers.length} layers, ${missing.length} to fetch (${humanSize(missing.reduce((a, l) => a + Math.max(0, l.size), 0))})\n`);
        }
        for (const l of ev.layers) lines.push({ digest: l.digest, state: 'waiting', bytes: 0, total: l.size });
        if (tty) draw();
        return;
      }
      const l = lines[ev.index];
      if (!l) return;
      const changed = l.state !== ev.state;
      Object.assign(l, { state: ev.state, bytes: ev.bytes, total: ev.total });
      if (tty) return schedule();
      if (!changed) return;
      const tag = `layer ${ev.index + 1}/${lines.length} ${ev.digest}`;
      if (ev.state === 'exists') out.write(`${tag}: already in the store\n`);
      else if (ev.state === 'downloading') out.write(`${tag}: downloading ${size(ev.total)}\n`);
      else if (ev.state === 'done') out.write(`${tag}: done (${size(ev.bytes)})\n`);
      else if (ev.state === 'failed') out.write(`${tag}: failed after ${size(ev.bytes)}\n`);
    },
    finish() {
      if (timer) clearTimeout(timer);
      if (tty && lines.length) draw();
    },
  };
}

type PullArgs = A<{ ref: string; insecure: boolean; creds?: string; quiet: boolean; 'max-connections': number; mode: PullMode; name?: string[] }>;

export const pullSubcommand: CommandModule<GlobalArgs, PullArgs> = {
  command: 'pull <ref>',
  describe: 'pull an image from an OCI/Docker registry (HOST[:PORT]/REPO[:TAG|@DIGEST]); prints the image id',
  builder: (c: Argv<GlobalArgs>) =>
    c
      .positional('ref', { type: 'string', demandOption: true })
      .option('insecure', { type: 'boolean', default: false, describe: 'plain HTTP (default HTTPS)' })
      .option('creds', { type: 'string', describe: 'USER:PASSWORD (default: docker config.json auths[host])' })
      .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'no progress output' })
      .option('max-connections', { type: 'number', default: 3, describe: 'connections to the registry (and layers applied at once)' })
      .option('mode', { choices: ['parallel', 'ordered'] as const, default: 'parallel' as PullMode, describe: 'apply layers in parallel (publish in order), or one at a time' })
      .option('name', { type: 'string', array: true, describe: 'extra name(s) for the image' }) as unknown as Argv<PullArgs>,
  handler: async (args) => {
    const progress = progressPrinter(args.quiet || args.json);
    try {
      const { pullImage } = await import('../image/index.js'); // the registry client: loaded only here
      const res = await withService(args, (svc) =>
        pullImage(svc.store, svc.index, args.ref, {
          insecure: args.insecure,
          ...(args.creds !== undefined ? { creds: args.creds } : {}),
          maxConnections: args['max-connections'],
          mode: args.mode,
          names: args.name ?? [],
          onProgress: progress.onEvent,
        }),
      );
      progress.finish();
      if (args.json) printJson({ ...res.image, fetched: res.fetched, bytes: res.bytes });
      else process.stdout.write(res.image.id + '\n');
    } catch (err) {
      progress.finish();
      throw err;
    }
  },
};

type ExportArgs = A<{ ref: string; out: string; gzip: boolean }>;

export const exportSubcommand: CommandModule<GlobalArgs, ExportArgs> = {
  command: 'export <ref> <out>',
  describe: 'write an image as an OCI archive (layers re-created from the store; digests differ from the original)',
  builder: (c: Argv<GlobalArgs>) =>
    c
      .positional('ref', { type: 'string', demandOption: true })
      .positional('out', { type: 'string', demandOption: true })
      .option('gzip', { type: 'boolean', default: false, describe: 'gzip the layer blobs' }) as unknown as Argv<ExportArgs>,
  handler: async (args) => {
    const res = await withService(args, async (svc) => {
      const image = await svc.resolveImage(args.ref);
      let name: string | undefined;
      try {
        const n = normalizeName(args.ref);
        if (image.names.includes(n)) name = n;
      } catch {
        name = undefined;
      }
      return (await import('../image/index.js')).exportImage(svc.store, image, args.out, { gzip: args.gzip, ...(name ? { name } : {}) });
    });
    if (args.json) printJson(res);
    else process.stdout.write(res.manifestDigest + '\n');
  },
};
