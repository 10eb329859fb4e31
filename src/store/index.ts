export { Store, writeFileAtomic, type Role, type StoreOptions, type StoreMarker } from './store.js';
export { FileLock, readLockHolder, describeHolder, describeLockWait, type LockHolder, type LockWait, type AcquireOptions } from './lock.js';
export { type LayerRecord, type ImageRecord, isLayerId, parseLayerRecord, parseImageRecord } from './records.js';
