export { scanOnce, resetScannerState, scanChanged, SCANNER_STATE_KEY, type ScanResult, type ScanOptions, type ScannerState } from './scanner.js';
export { runDaemon, type DaemonOptions } from './daemon.js';
export * from './readiness.js';
export { checkStoreBeforeFirstBuild, readStore, rebuildIndex, type StoreSnapshot } from './rebuild.js';
