export type { GraphDriver, DriverStatus, LayerMetadata, CreateRWOptions, MountOptions } from './driver.js';
export { OverlayDriver } from './overlay/overlay.js';
export { LayeredDriver, type MergeSpec } from './base.js';
export { probeHost, isMountpoint, mountpoints, backingFs, kernelOverlayHidden, type HostProbe } from './host.js';
export { parseSize, quotaFor, type Quota } from './quota/index.js';
export { overlayMountData, parseOverlayMountData, MOUNT_DATA_MAX } from './overlay/mountdata.js';
export { FuseDriver } from './fuse/fuse.js';
export { selectDriver, driverFor, type DriverName } from './select.js';
