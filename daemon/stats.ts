// Counters for the debug socket's `stats`: requests, bytes, errors by code, and per size bucket the
// latency percentiles and bandwidths, computed the way nccl-tests reports them.
const BUCKETS = [1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, Infinity];
const BUCKET_NAMES = ['≤1KiB', '≤64KiB', '≤1MiB', '≤16MiB', '≤256MiB', '>256MiB'];
/** Latency samples kept per bucket (the newest), enough for stable percentiles. */
const SAMPLES = 1024;

interface Bucket {
  count: number;
  bytes: number;
  seconds: number;
  samples: number[];
}

export interface BucketStats {
  bucket: string;
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** Bytes per buffer over time, averaged over the bucket. */
  algBwGBps: number;
  /** algbw × 2(n−1)/n: what each rank's links carried in a ring AllReduce. */
  busBwGBps: number;
}

export interface StatsSnapshot {
  collectives: number;
  failed: number;
  bytes: number;
  errors: Record<string, number>;
  buckets: BucketStats[];
}

export class Stats {
  private collectives = 0;
  private failed = 0;
  private bytes = 0;
  private readonly errors: Record<string, number> = {};
  private readonly buckets: Bucket[] = BUCKETS.map(() => ({ count: 0, bytes: 0, seconds: 0, samples: [] }));

  constructor(private readonly nranks: number) {}

  /** A collective that completed: its bytes per buffer and its time on the ranks. */
  completed(bytes: number, ms: number): void {
    this.collectives++;
    this.bytes += bytes;
    const b = this.buckets[BUCKETS.findIndex((limit) => bytes <= limit)];
    b.count++;
    b.bytes += bytes;
    b.seconds += ms / 1000;
    b.samples.push(ms);
    if (b.samples.length > SAMPLES) b.samples.shift();
  }

  /** Any error reply, validation errors included. */
  error(code: string): void {
    this.errors[code] = (this.errors[code] ?? 0) + 1;
  }

  /** A collective that was queued and then failed (timed out, lost a rank...). */
  collectiveFailed(): void {
    this.failed++;
  }

  get completedCount(): number {
    return this.collectives;
  }

  get failedCount(): number {
    return this.failed;
  }

  snapshot(): StatsSnapshot {
    const factor = this.nranks > 1 ? (2 * (this.nranks - 1)) / this.nranks : 1;
    return {
      collectives: this.collectives,
      failed: this.failed,
      bytes: this.bytes,
      errors: { ...this.errors },
      buckets: this.buckets.flatMap((b, i) => {
        if (b.count === 0) return [];
        const sorted = [...b.samples].sort((x, y) => x - y);
        const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
        const algBw = b.seconds > 0 ? b.bytes / b.seconds / 1e9 : 0;
        return [{ bucket: BUCKET_NAMES[i], count: b.count, p50Ms: pct(0.5), p90Ms: pct(0.9), p99Ms: pct(0.99), algBwGBps: algBw, busBwGBps: algBw * factor }];
      }),
    };
  }
}
