import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { Argv, CommandModule } from 'yargs';
import { Store } from '../store/index.js';
import { type GlobalArgs, callService, pathOrRef, storeOptions } from './context.js';
import { LayerfsError } from '../common/errors.js';
import { describeKept } from '../usage/lifetime.js';
import { describeLease } from '../usage/leases.js';
import { humanSize, printJson, printTable, short } from './output.js';
import { exportSubcommand, progressPrinter, pullSubcommand } from './cmd-pull.js';
import { layerMountCommands } from './cmd-mount.js';

type A<T = object> = GlobalArgs & T;

export const imageCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'image <command>',
  describe: 'import, pull, export, list, inspect and remove images',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<A<{ path: string; name?: string[]; quiet: boolean }>>(
        'import <path>',
        'import an OCI layout dir, OCI archive or docker-save tar (PATH[:REF], oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF]); prints the image id',
        (c) =>
          c
            .positional('path', { type: 'string', demandOption: true })
            .option('name', { type: 'string', array: true, describe: 'name(s) for the image' })
            .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'no progress output' }),
        async (args) => {
          const progress = progressPrinter(args.quiet || args.json, Boolean(process.stderr.isTTY), 'importing');
          try {
            const { absoluteImageInput } = await import('../image/source.js');
            const res = await callService(args, 'importImage', [await absoluteImageInput(args.path), args.name ?? []], (ev) => progress.onEvent(ev as never));
            progress.finish();
            if (args.json) printJson({ ...res.image, extracted: res.extracted });
            else process.stdout.write(res.image.id + '\n');
          } catch (err) {
            progress.finish();
            throw err;
          }
        },
      )
      .command<A>(
        ['ls', 'list'],
        'list images',
        (c) => c,
        async (args) => {
          const images = await callService(args, 'listImages', []);
          if (args.json) return printJson(images);
          printTable(
            ['ID', 'NAMES', 'LAYERS', 'SIZE', 'CREATED'],
            images.map((i) => [short(i.id), i.names.join(',') || '<none>', String(i.layers.length), humanSize(i.size), i.created]),
          );
        },
      )
      .command<A<{ ref: string }>>(
        'inspect <ref>',
        'show an image: record, layers (bottom first) and lowerDirs (top first)',
        (c) => c.positional('ref', { type: 'string', demandOption: true }),
        async (args) => {
          const rec = await callService(args, 'inspectImage', [args.ref]);
          printJson(rec);
        },
      )
      .command(pullSubcommand)
      .command(exportSubcommand)
      .command<A<{ ref: string }>>(
        ['rm <ref>', 'remove <ref>'],
        'remove an image and the layers nothing else uses',
        (c) => c.positional('ref', { type: 'string', demandOption: true }),
        async (args) => {
          const res = await callService(args, 'removeImage', [args.ref]);
          if (args.json) printJson(res);
          else process.stdout.write([`removed image ${res.image}`, ...res.layers.map((l) => `removed layer ${l}`), ...describeKept(res.kept)].join('\n') + '\n');
        },
      )
      .demandCommand(1),
  handler: () => undefined,
};

export const layerCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'layer <command>',
  describe: 'list, inspect, create and remove layers',
  builder: (y: Argv<GlobalArgs>) =>
    layerMountCommands(y)
      .command<A>(
        ['ls', 'list'],
        'list layers',
        (c) => c,
        async (args) => {
          const layers = await callService(args, 'layerRows', []);
          if (args.json) return printJson(layers);
          printTable(
            ['ID', 'NAME', 'PARENT', 'KIND', 'SIZE', 'STATE', 'MOUNTPOINT', 'CREATED'],
            layers.map((l) => [short(l.id), l.name ?? '-', short(l.parent), l.rw ? 'rw' : 'ro', humanSize(l.size), l.missing ? 'missing' : 'ok', l.mountpoint ?? '-', l.created]),
          );
        },
      )
      .command<A<{ id: string }>>(
        'inspect <id>',
        'show a layer record, its chain and its users',
        (c) => c.positional('id', { type: 'string', demandOption: true }),
        async (args) => {
          const out = await callService(args, 'inspectLayer', [args.id]);
          printJson(out);
        },
      )
      .command<A<{ tar: string; parent?: string }>>(
        'create',
        'create an RO layer from a tar (plain or gzip); prints its id',
        (c) => c.option('tar', { type: 'string', demandOption: true }).option('parent', { type: 'string', describe: 'parent layer id' }),
        async (args) => {
          const res = await callService(args, 'createLayerFromTar', [pathOrRef(args.tar), args.parent]);
          if (args.json) printJson({ ...res.layer, created: res.created });
          else process.stdout.write(res.layer.id + '\n');
        },
      )
      .command<A<{ id: string }>>(
        ['rm <id>', 'remove <id>'],
        'remove an RO layer nothing uses (else the error names its users), or an RW layer that is not mounted',
        (c) => c.positional('id', { type: 'string', demandOption: true }),
        async (args) => {
          const id = await callService(args, 'removeLayer', [args.id]);
          process.stdout.write(`removed layer ${id}\n`);
        },
      )
      .demandCommand(1),
  handler: () => undefined,
};

export const applyCommand: CommandModule<GlobalArgs, A<{ tar: string; dir: string }>> = {
  command: 'apply <tar> <dir>',
  describe: 'apply one layer tar onto a plain dir, exactly as the drivers do (whiteouts become overlay whiteouts)',
  builder: (y) => y.positional('tar', { type: 'string', demandOption: true }).positional('dir', { type: 'string', demandOption: true }) as Argv<A<{ tar: string; dir: string }>>,
  handler: async (args) => {
    await mkdir(args.dir, { recursive: true });
    const { applyLayer } = await import('../archive/index.js');
    const res = await applyLayer(createReadStream(args.tar, { highWaterMark: 1 << 20 }), args.dir);
    if (args.json) printJson(res);
    else process.stdout.write(`${res.diffDigest}\n`);
  },
};

export const indexCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'index <command>',
  describe: 'maintain the LevelDB index',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<A>(
        'rebuild',
        'rebuild the index from the store (it is only a cache of the disk)',
        (c) => c,
        async (args) => {
          const snap = await callService(args, 'rebuildIndex', []);
          const out = { ...snap, mountsRecovered: snap.mountsRecovered.map((m) => m.mountpoint) };
          if (args.json) printJson(out);
          else process.stdout.write(`index rebuilt: ${out.images} images, ${out.layers} layers${out.mountsRecovered.length ? `, ${out.mountsRecovered.length} mounts recovered` : ''}\n`);
        },
      )
      .demandCommand(1),
  handler: () => undefined,
};

export const statusCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'status',
  describe: 'show the store, index and driver status',
  handler: async (args) => {
    const st = await callService(args, 'status', []);
    if (args.json) return printJson(st);
    const flat = (prefix: string, obj: Record<string, unknown>): void => {
      for (const [k, v] of Object.entries(obj)) {
        if (v && typeof v === 'object' && !Array.isArray(v)) flat(`${prefix}${k}.`, v as Record<string, unknown>);
        else process.stdout.write(`${prefix}${k}: ${Array.isArray(v) ? v.join(',') || '-' : String(v)}\n`);
      }
    };
    flat('', st);
  },
};

const DURATION = /^(\d+(?:\.\d+)?)(s|m|h|d)?$/;

/** "90s", "10m", "24h", "7d" (no unit: seconds) -> ms. */
export function parseDuration(s: string, what: string): number {
  const m = DURATION.exec(s.trim());
  if (!m) throw new LayerfsError('EUSAGE', `${what} ${s}`, 'is not a duration (e.g. 90s, 10m, 24h, 7d)');
  return Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[(m[2] ?? 's') as 's']!;
}

export const pruneCommand: CommandModule<GlobalArgs, A<{ 'dry-run': boolean; rw: boolean; 'rw-age': string }>> = {
  command: 'prune',
  describe: 'delete RO layers nothing uses (no image, child layer, local user or live lease) and temp leftovers; --rw also old unmounted RW layers',
  builder: (y) =>
    y
      .option('dry-run', { type: 'boolean', default: false, describe: 'say what would go, delete nothing' })
      .option('rw', { type: 'boolean', default: false, describe: 'also RW layers that are not mounted and not a containerd snapshot\'s' })
      .option('rw-age', { type: 'string', default: '24h', describe: 'with --rw: only those unchanged for this long (e.g. 90s, 10m, 24h, 7d)' }) as unknown as Argv<A<{ 'dry-run': boolean; rw: boolean; 'rw-age': string }>>,
  handler: async (args) => {
    const rwAge = args.rw ? parseDuration(args['rw-age'], '--rw-age') : undefined;
    const res = await callService(args, 'prune', [{ dryRun: args['dry-run'], ...(rwAge !== undefined ? { rwOlderThanMs: rwAge } : {}) }]);
    if (args.json) return printJson(res);
    const verb = res.dryRun ? 'would remove' : 'removed';
    const lines = [...res.removed.map((l) => `${verb} layer ${l}`), ...res.rwRemoved.map((l) => `${verb} RW layer ${l}`), ...describeKept(res.kept)];
    process.stdout.write((lines.length ? lines.join('\n') : 'nothing to prune') + '\n');
  },
};

export const hostCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'host <command>',
  describe: 'the hosts that use the shared store (their leases)',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<A>(
        ['ls', 'list'],
        'list every host\'s lease: what it uses, how old (on the shared store\'s clock), expired or live',
        (c) => c,
        async (args) => {
          const hosts = await callService(args, 'hosts', []);
          if (args.json) return printJson(hosts);
          printTable(
            ['HOST', 'HOSTNAME', 'LAYERS', 'USERS', 'AGE', 'STATE'],
            hosts.map((h) => [h.host + (h.self ? ' (this host)' : ''), h.hostname, String(h.layers.length), describeLease(h), `${Math.round(h.ageMs / 1000)}s`, h.expired ? 'expired' : 'live']),
          );
        },
      )
      .command<A<{ id: string }>>(
        'forget <id>',
        'remove a dead host\'s lease (the layers it used are no longer protected by it)',
        (c) => c.positional('id', { type: 'string', demandOption: true }),
        async (args) => {
          await callService(args, 'forgetHost', [args.id]);
          process.stdout.write(`forgot host ${args.id}\n`);
        },
      )
      .demandCommand(1),
  handler: () => undefined,
};

export const storeCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'store <command>',
  describe: 'the shared store itself',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<A>(
        'take-writer',
        "record this host as the shared store's writer (in <shared>/.layerfs-store); prints the previous writer",
        (c) => c,
        async (args) => {
          const store = await Store.open({ ...storeOptions(args), role: 'reader' }); // the marker is all it writes
          const { marker, previous } = await store.takeWriter();
          if (args.json) return printJson({ storeId: marker.storeId, writer: marker.writer, previous });
          const prev = previous ? `${previous.hostname} (${previous.hostId}) since ${previous.since}` : 'none recorded';
          const same = previous?.hostId === store.hostId ? ' (already this host)' : '';
          process.stdout.write(`this host (${marker.writer.hostname}, ${marker.writer.hostId}) is now the writer of store ${marker.storeId}; previous writer: ${prev}${same}\n`);
        },
      )
      .demandCommand(1),
  handler: () => undefined,
};
