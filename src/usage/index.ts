export { Lifetime, describeKept, type KeptLayer, type RemovalReport } from './lifetime.js';
export { Leases, leaseTtlMs, describeLease, type Lease, type HostLease, type LeaseIo } from './leases.js';
export { localUsers, describeUsers, type LayerUser, type UserKind } from './users.js';
export { recoverMountRecords } from './mounttable.js';
