import { createHash } from 'node:crypto';
import { LayerfsError } from '../common/errors.js';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function sha256Digest(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

export function checkDigest(d: unknown, what: string): string {
  if (typeof d !== 'string' || !DIGEST.test(d)) throw new LayerfsError('EBADIMAGE', what, `not a sha256 digest: ${JSON.stringify(d)}`);
  return d;
}

export function hexOf(digest: string): string {
  return digest.slice('sha256:'.length);
}

/**
 * ChainIDs as containerd (and the OCI image spec) compute them:
 * chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n]).
 */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    out.push(out.length === 0 ? d : sha256Digest(`${out[out.length - 1]} ${d}`));
  }
  return out;
}
