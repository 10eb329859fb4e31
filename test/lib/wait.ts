/** Wait for a condition, polling, up to a generous bound (tests run on busy machines: never a fixed sleep). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** waitFor with a plain predicate (e.g. on a watched child's output so far). */
export async function waitUntil(what: string, fn: () => boolean, ms = 60_000): Promise<void> {
  await waitFor(what, async () => fn(), ms);
}
