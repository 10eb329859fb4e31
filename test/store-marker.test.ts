/**
 * "Layer lifetime" item 6: a store that knows itself. Real processes, real dirs: local roots share
 * one dir (<tmp>/nfs) as in scanner.test.ts. The store marker `<shared>/.layerfs-store` (storeId,
 * recorded writer), the host id of each root, what a reader's scan does when the shared dir is an
 * empty mount point or another store, and the role a host gets when it is not told one.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk } from './lib/cli.js';
import { makeImage, writeOciLayout } from './lib/images.js';


async function layout(dir: string, tag: string): Promise<void> {
  const img = await makeImage([
    [{ name: 'etc/' }, { name: 'etc/base', content: 'base' }],
    [{ name: 'app/' }, { name: `app/${tag}`, content: `hello from ${tag}\n` }],
  ]);
  await writeOciLayout(dir, [{ image: img, name: tag }]);
}

interface Marker {
  storeId: string;
  created: string;
  writer: { hostId: string; hostname: string; since: string };
}
interface Status {
  role: string;
  roleReason: string;
  hostId: string;
  storeId: string | null;
  writer: Marker['writer'] | string;
}

describe('a store that knows itself', () => {
  let scratch: string;
  const nfs = () => path.join(scratch, 'nfs');
  /** A host: its own root, the shared dir, and a role only when given (LAYERFS_ROLE '' = not given). */
  const host = (name: string, role: 'writer' | 'reader' | '' = '', shared = nfs()) => ({ LAYERFS_ROOT: path.join(scratch, name), LAYERFS_SHARED: shared, LAYERFS_ROLE: role });
  const marker = async (shared = nfs()) => JSON.parse(await readFile(path.join(shared, '.layerfs-store'), 'utf8')) as Marker;
  const hostId = async (name: string) => (JSON.parse(await readFile(path.join(scratch, name, 'host.json'), 'utf8')) as { hostId: string }).hostId;
  const status = async (env: Record<string, string>) => JSON.parse(await cliOk(['status', '--json'], env)) as Status;
  const imageIds = async (env: Record<string, string>) => (JSON.parse(await cliOk(['image', 'ls', '--json'], env)) as { id: string }[]).map((i) => i.id).sort();
  let imported: string;

  before(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'layerfs-marker-'));
    await layout(path.join(scratch, 'oci1'), 'one');
    await layout(path.join(scratch, 'oci2'), 'two');
    // the first writer: told so once (the dir is not its local store), it makes the store and is recorded
    imported = (await cliOk(['image', 'import', path.join(scratch, 'oci1')], host('hostW', 'writer'))).trim();
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  test('the writer writes the marker and each root has a stable host id', async () => {
    const m = await marker();
    assert.match(m.storeId, /^[0-9a-f]{32}$/);
    assert.equal(m.writer.hostId, await hostId('hostW'));
    assert.equal(m.writer.hostname, os.hostname());
    const st = await status(host('hostW'));
    assert.equal(st.role, 'writer');
    assert.equal(st.roleReason, 'recorded writer');
    assert.equal(st.hostId, m.writer.hostId);
    assert.equal(st.storeId, m.storeId);
    assert.deepEqual(st.writer, m.writer);
    assert.equal((await status(host('hostW'))).hostId, st.hostId, 'the same id on every open');
    assert.deepEqual((await readdir(nfs())).filter((n) => n.startsWith('.tmp-')), [], 'no temp files left');
    // the plain status output names them too
    const text = await cliOk(['status'], host('hostW'));
    assert.match(text, new RegExp(`^storeId: ${m.storeId}$`, 'm'));
    assert.match(text, new RegExp(`^hostId: ${m.writer.hostId}$`, 'm'));
    assert.match(text, new RegExp(`^writer.hostId: ${m.writer.hostId}$`, 'm'));
  });

  test('a reader scan of an empty shared dir (nothing mounted) fails and changes nothing', async () => {
    const R = host('hostR', 'reader');
    await cliOk(['scan'], R);
    assert.deepEqual(await imageIds(R), [imported]);
    const layers = (JSON.parse(await cliOk(['layer', 'ls', '--json'], R)) as { id: string }[]).map((l) => l.id);
    assert.equal(layers.length, 2);
    // "unmount": the store moves away, an empty mount point stays
    await rename(nfs(), path.join(scratch, 'nfs-real'));
    await mkdir(nfs());
    try {
      for (const args of [['scan'], ['scan', '--full']]) {
        const r = await cli(args, R);
        assert.notEqual(r.code, 0, `${args.join(' ')} fails`);
        assert.equal(r.stderr, `layerfs: scan: the shared store at ${nfs()} is not there (no .layerfs-store marker: is it mounted?)\n`);
        assert.equal(r.stdout, '', 'and removes nothing');
      }
      const rb = await cli(['index', 'rebuild'], R);
      assert.notEqual(rb.code, 0);
      assert.match(rb.stderr, /^layerfs: index rebuild: the shared store at .* is not there \(no \.layerfs-store marker: is it mounted\?\)\n$/);
      // the reader's index and links still have everything
      assert.deepEqual(await imageIds(R), [imported]);
      assert.deepEqual((JSON.parse(await cliOk(['layer', 'ls', '--json'], R)) as { id: string }[]).map((l) => l.id), layers);
      for (const l of layers) assert.equal(await readlink(path.join(R.LAYERFS_ROOT, 'overlay', l)), `RO/${l}`);
      assert.ok((await readdir(path.join(R.LAYERFS_ROOT, 'overlay-images'))).includes(imported));
      // a new reader root cannot build its index from an empty dir: it fails and makes no index
      const R2 = host('hostR2', 'reader');
      const first = await cli(['image', 'ls'], R2);
      assert.notEqual(first.code, 0);
      assert.match(first.stderr, /^layerfs: index: the shared store at .* is not there \(no \.layerfs-store marker: is it mounted\?\)\n$/);
      await assert.rejects(stat(path.join(R2.LAYERFS_ROOT, 'index')));
      assert.deepEqual(await readdir(nfs()), [], 'nothing was written into the mount point');
    } finally {
      await rm(nfs(), { recursive: true });
      await rename(path.join(scratch, 'nfs-real'), nfs());
    }
    // mounted again: the next scan finds nothing changed
    assert.equal(await cliOk(['scan'], R), 'no change\n');
    assert.deepEqual(await imageIds(R), [imported]);
  });

  test('another store mounted in its place fails the scan; index rebuild follows the new one', async () => {
    const R = host('hostR', 'reader');
    const mine = (await marker()).storeId;
    const other = path.join(scratch, 'nfs-other');
    await cliOk(['status'], host('hostO', 'writer', other));
    const otherId = (await marker(other)).storeId;
    assert.notEqual(otherId, mine);
    await rename(nfs(), path.join(scratch, 'nfs-real'));
    await rename(other, nfs());
    try {
      const r = await cli(['scan'], R);
      assert.notEqual(r.code, 0);
      assert.equal(
        r.stderr,
        `layerfs: scan: the shared store at ${nfs()} is another store (storeId ${otherId}) than this index follows (${mine}): is the right one mounted? (\`layerfs index rebuild\` follows the new one)\n`,
      );
      assert.deepEqual(await imageIds(R), [imported], 'nothing removed');
      // an explicit rebuild follows the store that is there
      await cliOk(['index', 'rebuild'], R);
      assert.deepEqual(await imageIds(R), []);
      assert.equal((await status(R)).storeId, otherId);
    } finally {
      await rename(nfs(), other);
      await rename(path.join(scratch, 'nfs-real'), nfs());
    }
    const back = await cli(['scan'], R);
    assert.notEqual(back.code, 0, 'the index follows the other store now');
    assert.match(back.stderr, new RegExp(`is another store \\(storeId ${mine}\\) than this index follows \\(${otherId}\\)`));
    await cliOk(['index', 'rebuild'], R);
    assert.deepEqual(await imageIds(R), [imported]);
  });

  test('roles when not given: reader where the marker names another host; take-writer makes this host the writer', async () => {
    const N = host('hostN');
    const st = await status(N);
    assert.equal(st.role, 'reader');
    assert.match(st.roleReason, /recorded writer is another host/);
    const wId = await hostId('hostW');
    const r = await cli(['image', 'import', path.join(scratch, 'oci2')], N);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^layerfs: image import .*: this host is a reader: only the writer host changes the shared store\n$/);
    const rm1 = await cli(['image', 'rm', imported], N);
    assert.notEqual(rm1.code, 0);
    assert.match(rm1.stderr, /this host is a reader/);
    assert.ok((await readdir(path.join(nfs(), 'overlay-images'))).includes(imported), 'nothing removed');

    const before = await marker();
    const out = await cliOk(['store', 'take-writer'], N);
    const nId = await hostId('hostN');
    assert.match(out, new RegExp(`is now the writer of store ${before.storeId}; previous writer: ${os.hostname()} \\(${wId}\\) since ${before.writer.since}\\n$`));
    const after = await marker();
    assert.equal(after.storeId, before.storeId, 'the same store');
    assert.equal(after.writer.hostId, nId);
    assert.equal((await status(N)).role, 'writer');
    const id2 = (await cliOk(['image', 'import', path.join(scratch, 'oci2')], N)).trim();
    assert.ok((await readdir(path.join(nfs(), 'overlay-images'))).includes(id2));

    // the old writer is a reader now, unless told otherwise; told, it writes, with a warning
    assert.equal((await status(host('hostW'))).role, 'reader');
    const refused = await cli(['image', 'import', path.join(scratch, 'oci2')], host('hostW'));
    assert.match(refused.stderr, /this host is a reader/);
    const told = await cli(['image', 'import', path.join(scratch, 'oci2')], host('hostW', 'writer'));
    assert.equal(told.code, 0, told.stderr);
    assert.match(told.stderr, /the store's recorded writer is .*\(([0-9a-f]{32})\).*store take-writer/);
    assert.ok(told.stderr.includes(nId));
    assert.equal((await marker()).writer.hostId, nId, 'an explicit writer does not take the record');
    // hand it back for the other tests
    await cliOk(['store', 'take-writer'], host('hostW'));
    assert.equal((await status(host('hostW'))).role, 'writer');
  });

  test('roles when not given: a local store is written by its host; a shared dir with no store is only read', async () => {
    const L = { LAYERFS_ROOT: path.join(scratch, 'hostL'), LAYERFS_ROLE: '', LAYERFS_SHARED: '' };
    const st = await status(L);
    assert.equal(st.role, 'writer');
    assert.equal(st.roleReason, 'local store');
    assert.equal((await marker(path.join(scratch, 'hostL', 'shared'))).writer.hostId, await hostId('hostL'));

    const empty = path.join(scratch, 'nfs-new');
    await mkdir(empty);
    const E = host('hostE', '', empty);
    // a reader: it neither makes a store there nor builds its index from the empty dir
    const est = await cli(['status'], E);
    assert.notEqual(est.code, 0);
    assert.match(est.stderr, /^layerfs: index: the shared store at .*nfs-new is not there/);
    const imp = await cli(['image', 'import', path.join(scratch, 'oci2')], E);
    assert.notEqual(imp.code, 0);
    assert.deepEqual(await readdir(empty), [], 'a reader makes nothing there');
    // an explicit writer makes the store (and is its recorded writer)
    await cliOk(['status'], host('hostE', 'writer', empty));
    assert.equal((await marker(empty)).writer.hostId, await hostId('hostE'));
    assert.equal((await status(E)).role, 'writer');
  });

  test('a store made before markers gets one from its writer', async () => {
    const old = path.join(scratch, 'nfs-old');
    const OW = host('hostOW', 'writer', old);
    const id = (await cliOk(['image', 'import', path.join(scratch, 'oci1')], OW)).trim();
    await rm(path.join(old, '.layerfs-store')); // as a store written before this change
    const OR = host('hostOR', 'reader', old);
    const r = await cli(['image', 'ls'], OR);
    assert.notEqual(r.code, 0, 'a reader does not trust an unmarked dir');
    assert.match(r.stderr, /no \.layerfs-store marker/);
    // the writer's next command marks it; the images are untouched
    assert.deepEqual(await imageIds(OW), [id]);
    const m = await marker(old);
    assert.equal(m.writer.hostId, await hostId('hostOW'));
    assert.deepEqual(await imageIds(OR), [id]);
    assert.equal((await status(OR)).storeId, m.storeId);
    // a local store of before gets one too
    const L = { LAYERFS_ROOT: path.join(scratch, 'hostOL'), LAYERFS_ROLE: '', LAYERFS_SHARED: '' };
    const lid = (await cliOk(['image', 'import', path.join(scratch, 'oci2')], L)).trim();
    await rm(path.join(scratch, 'hostOL', 'shared', '.layerfs-store'));
    assert.deepEqual(await imageIds(L), [lid]);
    assert.equal((await marker(path.join(scratch, 'hostOL', 'shared'))).writer.hostId, await hostId('hostOL'));
  });
});
