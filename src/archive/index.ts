/**
 * Layer tars: apply one (plain or gzip, detected by magic bytes) into a directory in kernel overlay
 * format, and export an overlay upper dir back into an OCI layer tar with `.wh.` whiteouts.
 * See apply.ts / export.ts for the details.
 */
export { applyLayer, type ApplyOptions, type ApplyResult } from './apply.js';
export { exportDiff } from './export.js';
