import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { Argv, CommandModule } from 'yargs';
import { applyLayer } from '../archive/index.js';
import { type GlobalArgs, withService } from './context.js';
import { humanSize, printJson, printTable, short } from './output.js';
import { exportSubcommand, pullSubcommand } from './cmd-pull.js';
import { layerMountCommands } from './cmd-mount.js';

type A<T = object> = GlobalArgs & T;

export const imageCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'image <command>',
  describe: 'import, pull, export, list, inspect and remove images',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command<A<{ path: string; name?: string[] }>>(
        'import <path>',
        'import an OCI layout dir, OCI archive or docker-save tar; prints the image id',
        (c) => c.positional('path', { type: 'string', demandOption: true }).option('name', { type: 'string', array: true, describe: 'name(s) for the image' }),
        async (args) => {
          const res = await withService(args, (svc) => svc.importImage(args.path, args.name ?? []));
          if (args.json) printJson({ ...res.image, extracted: res.extracted });
          else process.stdout.write(res.image.id + '\n');
        },
      )
      .command<A>(
        ['ls', 'list'],
        'list images',
        (c) => c,
        async (args) => {
          const images = await withService(args, (svc) => svc.listImages());
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
          const rec = await withService(args, (svc) => svc.inspectImage(args.ref));
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
          const res = await withService(args, (svc) => svc.removeImage(args.ref));
          if (args.json) printJson(res);
          else process.stdout.write([`removed image ${res.image}`, ...res.layers.map((l) => `removed layer ${l}`)].join('\n') + '\n');
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
          const layers = await withService(args, (svc) => svc.listLayers());
          if (args.json) return printJson(layers);
          printTable(
            ['ID', 'PARENT', 'KIND', 'SIZE', 'STATE', 'CREATED'],
            layers.map((l) => [short(l.id), short(l.parent), l.rw ? 'rw' : 'ro', humanSize(l.size), l.missing ? 'missing' : 'ok', l.created]),
          );
        },
      )
      .command<A<{ id: string }>>(
        'inspect <id>',
        'show a layer record, its chain and its users',
        (c) => c.positional('id', { type: 'string', demandOption: true }),
        async (args) => {
          const out = await withService(args, async (svc) => {
            const rec = await svc.resolveLayer(args.id);
            return { ...rec, diffDir: svc.store.diffDir(rec.id), chain: (await svc.chain(rec.id)).map((l) => l.id), usedBy: await svc.layerUsers(rec.id) };
          });
          printJson(out);
        },
      )
      .command<A<{ tar: string; parent?: string }>>(
        'create',
        'create an RO layer from a tar (plain or gzip); prints its id',
        (c) => c.option('tar', { type: 'string', demandOption: true }).option('parent', { type: 'string', describe: 'parent layer id' }),
        async (args) => {
          const res = await withService(args, (svc) => svc.createLayerFromTar(args.tar, args.parent));
          if (args.json) printJson({ ...res.layer, created: res.created });
          else process.stdout.write(res.layer.id + '\n');
        },
      )
      .command<A<{ id: string }>>(
        ['rm <id>', 'remove <id>'],
        'remove an RO layer nothing uses',
        (c) => c.positional('id', { type: 'string', demandOption: true }),
        async (args) => {
          const id = await withService(args, (svc) => svc.removeROLayer(args.id));
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
          const snap = await withService(args, (svc) => svc.rebuildIndex());
          const out = { layers: snap.layers.size, images: snap.images.size, notReady: snap.notReady, junk: snap.junk, mountsRecovered: snap.recoveredMounts.map((m) => m.mountpoint) };
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
    const st = await withService(args, (svc) => svc.status());
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
