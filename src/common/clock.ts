/**
 * Wall-clock time with nanosecond precision (Date has milliseconds only): process.hrtime.bigint()
 * (monotonic) anchored to the wall clock at the instant Date.now() ticks over to its next
 * millisecond, so the anchor is exact to the length of one loop turn (a microsecond or so; an edge
 * seen across a preemption, wider than 20 µs, is not used), never rounded down by up to a
 * millisecond as Date.now() * 1e6 is. The anchor is taken again
 * when the wall clock has moved away from it (clock set, NTP slew) or after a minute. Successive
 * values strictly increase.
 */
let anchor: bigint | null = null; // wall ns - hrtime ns
let anchoredAt = 0n;
let last = 0n;
const MINUTE = 60_000_000_000n;

function takeAnchor(): void {
  const hr = process.hrtime.bigint;
  for (let attempt = 0; ; attempt++) {
    // spin (at most a millisecond) until Date.now() turns to the next millisecond n: the wall clock reached n.000000
    // after hPrev (the last call that still returned m began after it) and by h1
    const m = Date.now();
    let hPrev = hr();
    let h0 = hPrev;
    let n = m;
    let h1 = hPrev;
    for (;;) {
      h0 = hr();
      n = Date.now();
      h1 = hr();
      if (n !== m) break;
      hPrev = h0;
    }
    // a preemption inside that window (a loaded machine) makes it wide: take another edge
    if (h1 - hPrev <= 20_000n || attempt >= 20) {
      anchor = BigInt(n) * 1_000_000n - (hPrev + h1) / 2n;
      anchoredAt = h1;
      return;
    }
  }
}

/** Nanoseconds since the epoch, now. */
export function nowNs(): bigint {
  let h = process.hrtime.bigint();
  if (anchor === null || h - anchoredAt > MINUTE) {
    takeAnchor();
    h = process.hrtime.bigint();
  }
  let ns = h + anchor!;
  const wallMs = BigInt(Date.now());
  // Date.now() floors: the true time is within [wallMs, wallMs + 1 ms); outside it, re-anchor
  if (ns < wallMs * 1_000_000n - 1_000_000n || ns > wallMs * 1_000_000n + 2_000_000n) {
    takeAnchor();
    ns = process.hrtime.bigint() + anchor!;
  }
  if (ns <= last) ns = last + 1n;
  last = ns;
  return ns;
}

/** RFC 3339 with nine fraction digits, e.g. 2024-05-01T10:00:00.123456789Z. */
export function isoNs(ns: bigint = nowNs()): string {
  const ms = ns / 1_000_000n;
  const base = new Date(Number(ms)).toISOString(); // ...T10:00:00.123Z
  const frac = (ns % 1_000_000_000n).toString().padStart(9, '0');
  return `${base.slice(0, 19)}.${frac}Z`;
}

/** Seconds and nanos of an RFC 3339 time with any number of fraction digits (as our records hold). */
export function parseIsoNs(s: string): { seconds: number; nanos: number } {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(s);
  if (!m) {
    const ms = new Date(s).getTime();
    return { seconds: Math.floor(ms / 1000), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
  }
  const seconds = Math.floor(new Date(`${m[1]}${m[3]}`).getTime() / 1000);
  const nanos = Number((m[2] ?? '').slice(0, 9).padEnd(9, '0'));
  return { seconds, nanos };
}
