import type { Readable } from 'node:stream';

/**
 * The graph-driver API (iSulad's, seed 001), one interface for every driver. Layers are keyed by
 * id; RO layers live on the shared store (created by the store/import code, applied with
 * `applyDiff`), RW layers in the local root.
 */
export interface DriverStatus {
  driver: 'overlay' | 'fuse';
  /** Filesystem the local root is on, e.g. `ext4`, `btrfs`, `xfs`, `tmpfs`. */
  backingFs: string;
  supportsDType: boolean;
  /** Kernel overlay works on this backing filesystem (a probe mount succeeded). */
  overlaySupported: boolean;
  /** FUSE can be served here (/dev/fuse and the kernel module). */
  fuseSupported: boolean;
  /** RW-layer quotas can be enforced on the backing filesystem, and how. */
  quotaSupported: boolean;
  quotaKind: 'btrfs-qgroup' | 'xfs-prjquota' | 'ext4-prjquota' | null;
  mounts: number;
}

export interface LayerMetadata {
  WorkDir: string;
  MergedDir: string;
  UpperDir: string;
  /** Lower diff dirs, top first, joined by `:` (as kernel overlay's lowerdir=). */
  LowerDir: string;
}

export interface CreateRWOptions {
  /** Bytes the RW layer may hold. */
  quota?: number;
  /** A human name for the RW layer. */
  name?: string;
}

export interface MountOptions {
  /** Where to mount; default the layer's own `merged` dir. */
  target?: string;
}

export interface GraphDriver {
  readonly name: 'overlay' | 'fuse';
  /** Check the host can run this driver; clean up what a crash left. */
  init(): Promise<void>;
  /** Create an RO layer on the shared store from a layer tar (the writer host only). Returns its id (the chainID). */
  createRO(parent: string | null, tar: Readable): Promise<string>;
  /** Create an RW layer on top of `parent` (an RO layer id, or null for an empty rootfs). */
  createRW(id: string, parent: string | null, opts?: CreateRWOptions): Promise<void>;
  /** Remove an RW layer (it must not be mounted). RO layers are removed through the image/layer commands. */
  remove(id: string): Promise<void>;
  /** Mount an RW layer over its parents (reference counted); returns the mount point. */
  mount(id: string, opts?: MountOptions): Promise<string>;
  /** Read-only merged view of an RO layer and its parents. */
  mountRO(id: string, target: string): Promise<string>;
  /** Drop one reference to the mount at `mountpoint`; unmount at zero (or at once with `force`). */
  unmount(mountpoint: string, opts?: { force?: boolean }): Promise<void>;
  exists(id: string): Promise<boolean>;
  /** Apply a layer tar into an RW layer's upper dir (not mounted). Returns the bytes of file content applied. */
  applyDiff(id: string, tar: Readable): Promise<number>;
  metadata(id: string): Promise<LayerMetadata>;
  status(): Promise<DriverStatus>;
  /** Unmount everything this driver mounted and remove stale work dirs. */
  cleanup(): Promise<void>;
  /** What an RW layer changed, as an OCI layer tar with `.wh.` whiteouts. */
  diff(id: string): Readable;
}
