/**
 * The daemon's socket API is this table: each method a thin face over one `Service` call, with JSON in and out.
 * The CLI runs the same table either through the daemon's socket or on a `Service` it opens itself, so the answers
 * are the same either way by construction.
 */
import type { Service } from '../service/index.js';
import type { DriverName } from '../drivers/index.js';
import type { PullOptions } from '../image/registry/pull.js';

export type Emit = (event: unknown) => void;

/** The FUSE driver takes its transport from the environment (`defaultTransport`): the caller's choice, for one call. */
async function withTransport<T>(transport: string | undefined, fn: () => Promise<T>): Promise<T> {
  if (!transport) return fn();
  const was = process.env.LAYERFS_FUSE_TRANSPORT;
  process.env.LAYERFS_FUSE_TRANSPORT = transport;
  try {
    return await fn();
  } finally {
    if (was === undefined) delete process.env.LAYERFS_FUSE_TRANSPORT;
    else process.env.LAYERFS_FUSE_TRANSPORT = was;
  }
}

/* eslint-disable @typescript-eslint/no-explicit-any */
export const API = {
  listImages: (svc: Service) => svc.listImages(),
  inspectImage: (svc: Service, ref: string) => svc.inspectImage(ref),
  removeImage: (svc: Service, ref: string) => svc.removeImage(ref),
  importImage: (svc: Service, input: string, names: string[], emit: Emit) => svc.importImage(input, names, emit as never),
  pullImage: (svc: Service, ref: string, opts: Omit<PullOptions, 'onProgress'>, emit: Emit) => svc.pullImage(ref, { ...opts, onProgress: emit }),
  exportImage: (svc: Service, ref: string, out: string, opts: Parameters<Service['exportImage']>[2]) => svc.exportImage(ref, out, opts),
  layerRows: (svc: Service) => svc.layerRows(),
  inspectLayer: (svc: Service, ref: string) => svc.inspectLayer(ref),
  createLayerFromTar: (svc: Service, tar: string, parent?: string) => svc.createLayerFromTar(tar, parent),
  removeLayer: (svc: Service, ref: string) => svc.removeLayer(ref),
  mountLayer: (svc: Service, ref: string, target: string, driver: DriverName) => svc.mountLayer(ref, target, driver),
  layerDiffDir: (svc: Service, ref: string) => svc.layerDiffDir(ref),
  mountImage: (svc: Service, ref: string, target: string, opts: Parameters<Service['mountImage']>[2]) => withTransport(opts?.transport, () => svc.mountImage(ref, target, opts)),
  umount: (svc: Service, target: string, opts: { rm?: boolean; force?: boolean }) => svc.umount(target, opts),
  commit: (svc: Service, ref: string, names: string[]) => svc.commit(ref, names),
  metadata: (svc: Service, ref: string) => svc.metadata(ref),
  status: (svc: Service) => svc.status(),
  prune: (svc: Service, opts: Parameters<Service['prune']>[0]) => svc.prune(opts),
  hosts: (svc: Service) => svc.hosts(),
  forgetHost: (svc: Service, host: string) => svc.forgetHost(host),
  rebuildIndex: (svc: Service) => svc.rebuildSummary(),
  scan: (svc: Service, opts: { full?: boolean }) => svc.scan(opts),
} satisfies Record<string, (svc: Service, ...args: any[]) => Promise<unknown>>;

export type ApiMethod = keyof typeof API;
type Fn<M extends ApiMethod> = (typeof API)[M];
/** A method's arguments after the service (an `emit` last for those that report progress). */
export type ApiArgs<M extends ApiMethod> = Fn<M> extends (svc: Service, ...args: infer P) => any ? P : never;
export type ApiResult<M extends ApiMethod> = Awaited<ReturnType<Fn<M>>>;

/** Methods that only read: the daemon answers them at once, even during a scan; a client may retry them locally. */
export const READ_ONLY = new Set<ApiMethod>(['listImages', 'inspectImage', 'layerRows', 'inspectLayer', 'layerDiffDir', 'metadata', 'status', 'hosts']);

export function isApiMethod(m: unknown): m is ApiMethod {
  return typeof m === 'string' && Object.prototype.hasOwnProperty.call(API, m);
}
