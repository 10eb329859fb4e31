export { Store, writeFileAtomic, type Role, type StoreOptions, type StoreMarker } from './store.js';
export { FileLock, readLockHolder, type LockHolder } from './lock.js';
export { type LayerRecord, type ImageRecord, isLayerId, parseLayerRecord, parseImageRecord } from './records.js';
