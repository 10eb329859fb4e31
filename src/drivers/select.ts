import { LayerfsError } from '../common/errors.js';
import type { Index } from '../index/index.js';
import type { Store } from '../store/index.js';
import type { LayeredDriver } from './base.js';
import { FuseDriver } from './fuse/fuse.js';
import { probeHost } from './host.js';
import { OverlayDriver } from './overlay/overlay.js';

export type DriverName = 'overlay' | 'fuse' | 'auto';

/** `auto`: kernel overlay where it works on this backing filesystem, else FUSE. */
export async function selectDriver(name: DriverName, store: Store, index: Index): Promise<LayeredDriver> {
  if (name === 'overlay') return new OverlayDriver(store, index);
  if (name === 'fuse') return new FuseDriver(store, index);
  if (name !== 'auto') throw new LayerfsError('EUSAGE', `driver ${String(name)}`, 'unknown driver (use overlay, fuse or auto)');
  const p = await probeHost(store.root);
  if (p.overlaySupported && p.supportsDType) return new OverlayDriver(store, index);
  if (p.fuseSupported) return new FuseDriver(store, index);
  throw new LayerfsError('EDRIVER', 'driver auto', 'neither kernel overlay nor FUSE is available on this host');
}

/** The driver that made a given mount. */
export function driverFor(name: 'overlay' | 'fuse', store: Store, index: Index): LayeredDriver {
  return name === 'overlay' ? new OverlayDriver(store, index) : new FuseDriver(store, index);
}
