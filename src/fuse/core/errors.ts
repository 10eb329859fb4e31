/** POSIX errors of the overlay core: every failure the core reports carries an errno code (e.g. 'ENOENT'). */
import { constants } from 'node:os';

export class FsError extends Error {
  readonly code: string;
  constructor(code: string, what = '') {
    // no stack trace: these are answers (ENOENT, ENODATA, EEXIST...), thrown on hot paths, and capturing a stack
    // cost more than the whole request (26 us of ~40 us of JS for a getxattr answered ENODATA)
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(what ? `${code}: ${what}` : code);
    Error.stackTraceLimit = limit;
    this.code = code;
    this.name = 'FsError';
  }
}

export const fsErr = (code: string, what?: string): FsError => new FsError(code, what);

/** The positive errno for any thrown value (Node fs errors, FsError, native addon errors); EIO when unknown. Node
 *  names only the errors libuv knows: EDQUOT, for one, comes as code 'Unknown system error -122' with errno -122. */
export function errnoOf(err: unknown): number {
  if (typeof err !== 'object' || err === null) return constants.errno.EIO;
  const { code, errno } = err as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') {
    const n = (constants.errno as Record<string, number>)[code];
    if (typeof n === 'number') return n;
  }
  if (typeof errno === 'number' && Number.isInteger(errno) && errno !== 0) return Math.abs(errno);
  return constants.errno.EIO;
}

export function isCode(err: unknown, ...codes: string[]): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && codes.includes(code);
}
