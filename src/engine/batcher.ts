// Coalesces calls made in the same turn of the event loop into one batch, so N resources reconciling
// at once cost one host observation (one `ip -j`), not N. Each caller gets its own outcome.
export class Batcher<Req, Res> {
  private pending: { req: Req; resolve: (r: Res) => void; reject: (e: unknown) => void }[] = [];
  private scheduled = false;

  constructor(private readonly run: (reqs: Req[]) => Promise<PromiseSettledResult<Res>[]>) {}

  load(req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      this.pending.push({ req, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    this.scheduled = false;
    try {
      const results = await this.run(batch.map((b) => b.req));
      batch.forEach((b, i) => {
        const r = results[i]!;
        if (r.status === 'fulfilled') b.resolve(r.value);
        else b.reject(r.reason);
      });
    } catch (err) {
      for (const b of batch) b.reject(err);
    }
  }
}

export const fulfilled = <T>(value: T): PromiseSettledResult<T> => ({ status: 'fulfilled', value });
