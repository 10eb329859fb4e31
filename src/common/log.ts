import { createRequire } from 'node:module';
import type { Logger } from 'pino';

let root: Logger | undefined;
let level = process.env.LAYERFS_LOG_LEVEL ?? 'warn';

/**
 * The process-wide logger: JSON lines to stderr. Quiet (warn) unless configured otherwise. pino is loaded at the
 * first log call, not at start-up: most commands never log, and `layerfs --help` should not pay for it.
 */
export function logger(): Logger {
  if (!root) {
    const { pino } = createRequire(import.meta.url)('pino') as typeof import('pino');
    root = pino({ level, base: { pid: process.pid } }, pino.destination(2));
  }
  return root;
}

export function setLogLevel(l: string): void {
  level = l;
  if (root) root.level = l;
}
