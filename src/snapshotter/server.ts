/**
 * The gRPC side of `layerfs snapshotter`: containerd.services.snapshots.v1.Snapshots on a unix
 * socket (containerd's proxy plugin dials it). The .proto files under `proto/` are loaded at start.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseIsoNs } from '../common/clock.js';
import { logger } from '../common/log.js';
import { useSpareServers } from '../fuse/spawn.js';
import { grpcCodeOf, Snapshotter, type Mount, type SnapshotInfo, type SnapshotterOptions } from './snapshots.js';

/** `<repo>/proto` (this file is `dist/src/snapshotter/server.js` once built). */
export const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'proto');
export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto';

export function loadSnapshotsService(): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(SNAPSHOTS_PROTO, { includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } } };
  return pkg.containerd.services.snapshots.v1.Snapshots;
}

interface Timestamp {
  seconds: number;
  nanos: number;
}

/** Our records hold RFC 3339 times with nanoseconds (src/common/clock.ts). */
function ts(iso: string): Timestamp {
  return parseIsoNs(iso);
}

function wireInfo(i: SnapshotInfo) {
  return { name: i.name, parent: i.parent, kind: i.kind, created_at: ts(i.created), updated_at: ts(i.updated), labels: i.labels };
}

function wireMounts(m: Mount[]) {
  return { mounts: m };
}

type Req = Record<string, unknown> & { key?: string; parent?: string; name?: string; labels?: Record<string, string>; filters?: string[] };

function fail(method: string, err: unknown): grpc.ServiceError {
  const code = grpcCodeOf(err);
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'Internal') logger().error({ err, method }, 'snapshotter request failed');
  else logger().debug({ method, code, msg }, 'snapshotter request refused');
  return Object.assign(new Error(msg), { code: grpc.status[code === 'Unimplemented' ? 'UNIMPLEMENTED' : (code.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase() as keyof typeof grpc.status)] as grpc.status, details: msg, metadata: new grpc.Metadata() });
}

/** Wrap a unary handler: call the snapshotter, map errors to gRPC codes. */
function unary<T>(method: string, fn: (req: Req) => Promise<T>): grpc.handleUnaryCall<Req, T> {
  return (call, cb) => {
    const t0 = performance.now();
    fn(call.request).then(
      (res) => {
        logger().debug({ method, key: call.request.key ?? call.request.name, ms: +(performance.now() - t0).toFixed(1) }, 'snapshotter request');
        cb(null, res);
      },
      (err: unknown) => cb(fail(method, err)),
    );
  };
}

export interface RunningServer {
  server: grpc.Server;
  snapshotter: Snapshotter;
  address: string;
  stop(): Promise<void>;
}

/** Start serving on `address` (a unix socket path; a stale socket file is replaced). */
export async function startSnapshotterServer(address: string, opts: SnapshotterOptions): Promise<RunningServer> {
  const sn = new Snapshotter(opts);
  // FUSE: keep a server process started ahead, so a Prepare/View does not wait for a node start-up
  if (opts.driver === 'fuse') useSpareServers(true);
  const Service = loadSnapshotsService();
  const server = new grpc.Server();
  server.addService(Service.service, {
    Prepare: unary('Prepare', async (r) => wireMounts(await sn.prepare(r.key ?? '', r.parent ?? '', r.labels ?? {}))),
    View: unary('View', async (r) => wireMounts(await sn.view(r.key ?? '', r.parent ?? '', r.labels ?? {}))),
    Mounts: unary('Mounts', async (r) => wireMounts(await sn.mounts(r.key ?? ''))),
    Commit: unary('Commit', async (r) => {
      await sn.commit(r.name ?? '', r.key ?? '', r.labels ?? {});
      return {};
    }),
    Remove: unary('Remove', async (r) => {
      await sn.remove(r.key ?? '');
      return {};
    }),
    Stat: unary('Stat', async (r) => ({ info: wireInfo(await sn.stat(r.key ?? '')) })),
    Update: unary('Update', async (r) => {
      const info = (r.info ?? {}) as { name?: string; labels?: Record<string, string> };
      const mask = (r.update_mask ?? null) as { paths?: string[] } | null;
      return { info: wireInfo(await sn.update({ name: info.name ?? '', labels: info.labels ?? {} }, mask?.paths ?? [])) };
    }),
    List: ((call: grpc.ServerWritableStream<Req, unknown>) => {
      sn.list(call.request.filters ?? []).then(
        (infos) => {
          for (let i = 0; i < infos.length; i += 100) call.write({ info: infos.slice(i, i + 100).map(wireInfo) });
          call.end();
        },
        (err: unknown) => call.destroy(fail('List', err)),
      );
    }) as grpc.handleServerStreamingCall<Req, unknown>,
    Usage: unary('Usage', async (r) => sn.usage(r.key ?? '')),
    Cleanup: unary('Cleanup', async () => {
      await sn.cleanup();
      return {};
    }),
  });
  const sock = path.resolve(address);
  await mkdir(path.dirname(sock), { recursive: true });
  await rm(sock, { force: true });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${sock}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  // (grpc-js >= 1.10 serves as soon as bindAsync completes)
  return {
    server,
    snapshotter: sn,
    address: sock,
    async stop() {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      if (opts.driver === 'fuse') useSpareServers(false);
      await sn.close();
      await rm(sock, { force: true });
    },
  };
}
