/**
 * One error class per kind of failure, each with a stable code. The CLI prints
 * `layerfs: <what>: <why>` and exits non-zero; nothing else formats errors.
 */
export type ErrorCode =
  | 'EBADTAR' // a layer tar is malformed or hostile
  | 'EDIGEST' // a digest did not match what the manifest/config says
  | 'EBADIMAGE' // an image archive/layout is malformed
  | 'ELAYERNOTFOUND'
  | 'EIMAGENOTFOUND'
  | 'EINUSE' // a layer or image is still used by something
  | 'EEXIST'
  | 'ELOCKED' // another process holds a lock (index, shared store, daemon)
  | 'EROLE' // the operation is not allowed for this host's role
  | 'ENOSTORE' // the shared store is not there (not mounted?) or is another store than this index follows
  | 'EQUOTA' // quota requested where it cannot be enforced, or bad size
  | 'EMOUNT' // a mount or unmount failed
  | 'EDRIVER' // driver unavailable or misused
  | 'EREGISTRY' // a registry request failed (unreachable, bad status, interrupted download)
  | 'EAUTH' // a registry refused our credentials or we have none
  | 'EUSAGE'; // bad command-line input

export class LayerfsError extends Error {
  readonly code: ErrorCode;
  /** What was being worked on, e.g. a layer id, a tar entry name, a path. */
  readonly what: string;
  constructor(code: ErrorCode, what: string, why: string, options?: { cause?: unknown }) {
    super(`${what}: ${why}`, options);
    this.code = code;
    this.what = what;
    this.name = 'LayerfsError';
  }
}

export const badTar = (entry: string, why: string) => new LayerfsError('EBADTAR', `tar entry ${JSON.stringify(entry)}`, why);

export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}
