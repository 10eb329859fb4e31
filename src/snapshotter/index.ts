export { startSnapshotterServer, loadSnapshotsService, type RunningServer } from './server.js';
export { SnapshotError, grpcCodeOf, type GrpcCodeName } from './snapshots.js';
