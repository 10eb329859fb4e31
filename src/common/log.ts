import { pino, type Logger } from 'pino';

let root: Logger | undefined;

/** The process-wide logger: JSON lines to stderr. Quiet (warn) unless configured otherwise. */
export function logger(): Logger {
  root ??= pino({ level: process.env.LAYERFS_LOG_LEVEL ?? 'warn', base: { pid: process.pid } }, pino.destination(2));
  return root;
}

export function setLogLevel(level: string): void {
  logger().level = level;
}
