/**
 * The daemon's hold on the root's index: one `Service`, open for the daemon's life. Work that changes things (the
 * scans, the removal passes, mutating requests) runs one at a time; reads run at once beside it. Another process
 * that needs the index itself (the containerd snapshotter) can borrow it: the holder closes it until the borrower's
 * connection ends, then opens it again.
 */
import { Service, type ServiceOptions } from '../service/index.js';

export class IndexHolder {
  private svc: Service | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(private readonly opts: ServiceOptions) {}

  static async open(opts: ServiceOptions): Promise<IndexHolder> {
    const h = new IndexHolder(opts);
    h.svc = await Service.open(opts);
    return h;
  }

  /** Run `fn` alone: after everything queued before it, before everything queued after it. */
  exclusive<T>(fn: (svc: Service) => Promise<T>): Promise<T> {
    const p = this.queue.then(async () => {
      this.svc ??= await Service.open(this.opts);
      return fn(this.svc);
    });
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** Run a read now, beside whatever runs (LevelDB reads are safe beside writes); waits only while the index is lent. */
  read<T>(fn: (svc: Service) => Promise<T>): Promise<T> {
    return this.svc ? fn(this.svc) : this.exclusive(fn);
  }

  /** Close the index until `returned` settles (another process uses it meanwhile), then open it again. */
  lend(returned: Promise<unknown>, lent: () => void): Promise<void> {
    return this.exclusive(async (svc) => {
      this.svc = null;
      await svc.close();
      lent();
      await returned.catch(() => undefined);
      this.svc = await Service.open(this.opts);
    });
  }

  async close(): Promise<void> {
    await this.exclusive(async (svc) => {
      this.svc = null;
      await svc.close();
    });
  }
}
