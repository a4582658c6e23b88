// `ncclctl bench`: AllReduce time and bandwidth over a range of sizes, the way nccl-tests reports
// them (algbw = bytes / time, busbw = algbw × 2(n−1)/n), through the daemon or, with --direct,
// through the addon in this one process with no daemon, for the ratio of the two.
import { performance } from 'node:perf_hooks';
import { native, type GpuComm, type GpuDeviceBuffer, type ShmSegment } from '../shared/native.js';
import { DTYPES, REDUCE_OPS, type DType, type ReduceOp } from '../shared/dtypes.js';
import type { Client } from './client.js';
import { allocRankBuffers, freeRankBuffers } from './rank-buffers.js';

export interface BenchOptions {
  minBytes: number;
  maxBytes: number;
  factor: number;
  dtype: DType;
  op: ReduceOp;
  iters: number;
  warmup: number;
  /** One request at a time instead of `iters` in flight (latency rather than throughput). */
  serial: boolean;
}

export interface BenchRow {
  bytes: number;
  count: number;
  /** Microseconds per AllReduce: wall time over the count (with many in flight, less than a latency). */
  us: number;
  /** Latency of one AllReduce, from call to resolution, in microseconds: median and 99th percentile. */
  p50us: number;
  p99us: number;
  algBwGBps: number;
  busBwGBps: number;
}

/** One AllReduce of `count` elements. */
type RunOnce = (count: number) => Promise<unknown>;

export function sizes(o: BenchOptions): number[] {
  const out: number[] = [];
  const elem = DTYPES[o.dtype].bytes;
  for (let b = o.minBytes; b <= o.maxBytes; b = Math.max(b + elem, Math.floor(b * o.factor))) out.push(Math.max(elem, b - (b % elem)));
  return out;
}

/** Runs `n` calls of `once` with at most `width` in flight. */
async function pool(n: number, width: number, once: () => Promise<unknown>): Promise<void> {
  let started = 0;
  const lane = async () => {
    while (started < n) {
      started++;
      await once();
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, width) }, lane));
}

async function measure(o: BenchOptions, nranks: number, once: RunOnce, maxInFlight = Infinity): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const elem = DTYPES[o.dtype].bytes;
  for (const bytes of sizes(o)) {
    const count = bytes / elem;
    const latencies: number[] = [];
    const timed = async () => {
      const t = performance.now();
      await once(count);
      latencies.push(performance.now() - t);
    };
    await pool(o.warmup, o.serial ? 1 : maxInFlight, timed);
    latencies.length = 0;
    const t0 = performance.now();
    await pool(o.iters, o.serial ? 1 : maxInFlight, timed);
    const seconds = (performance.now() - t0) / 1000 / o.iters;
    const algBw = bytes / seconds / 1e9;
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] * 1000;
    rows.push({ bytes, count, us: seconds * 1e6, p50us: pct(0.5), p99us: pct(0.99), algBwGBps: algBw, busBwGBps: nranks > 1 ? (algBw * 2 * (nranks - 1)) / nranks : algBw });
  }
  return rows;
}

/** Through the daemon, with buffers of the kind its backend takes. */
export async function benchDaemon(client: Client, o: BenchOptions): Promise<BenchRow[]> {
  const buffers = await allocRankBuffers(client, o.maxBytes);
  try {
    return await measure(o, buffers.length, (count) => client.allReduce({ buffers, dtype: o.dtype, op: o.op, count }), client.server.maxInFlight);
  } finally {
    await freeRankBuffers(client, buffers);
  }
}

/**
 * In this process, no daemon: one NCCL communicator per GPU (non-blocking init lets one thread
 * build them all; each comm has its own worker thread), or the host kernel on N threads.
 */
export async function benchDirect(devices: (number | null)[], o: BenchOptions): Promise<BenchRow[]> {
  const dtype = DTYPES[o.dtype].nccl;
  const op = REDUCE_OPS[o.op];
  if (devices.every((d) => d === null)) {
    const segs: ShmSegment[] = devices.map((_, r) => native.ShmSegment.create(`nccld-bench-${process.pid}-${r}`, o.maxBytes, 0o600));
    try {
      return await measure({ ...o, serial: true }, devices.length, (count) =>
        Promise.all(segs.map((_, r) => native.reduceSlice(segs, segs.map(() => 0), count, dtype, op, r, segs.length))),
      );
    } finally {
      for (const s of segs) {
        s.close();
        native.shmUnlink(s.name);
      }
    }
  }
  const gpu = native.gpu!;
  const devs = devices.map((d) => new gpu.Device(d!));
  const id = gpu.getUniqueId();
  const comms: GpuComm[] = devs.map((dev, r) => gpu.Comm.initRank(dev, id, devs.length, r));
  while (comms.some((c) => c.poll() === 'pending')) await new Promise((r) => setTimeout(r, 2));
  const bufs: GpuDeviceBuffer[] = devices.map((d) => gpu.DeviceBuffer.alloc(d!, o.maxBytes));
  try {
    return await measure(o, devices.length, (count) => Promise.all(comms.map((c, r) => c.allReduce(bufs[r].ptr, count, dtype, op))));
  } finally {
    for (const b of bufs) b.free();
    for (const c of comms) c.destroy();
    for (const d of devs) d.close();
  }
}

export function formatRows(rows: BenchRow[], title: string): string[] {
  const fmt = (n: number, w: number, d: number) => n.toFixed(d).padStart(w);
  return [
    `# ${title}`,
    '#       bytes        count     time(us)      p50(us)      p99(us)   ops/s  algbw(GB/s)  busbw(GB/s)',
    ...rows.map(
      (r) =>
        `${String(r.bytes).padStart(13)} ${String(r.count).padStart(12)} ${fmt(r.us, 12, 2)} ${fmt(r.p50us, 12, 2)} ${fmt(r.p99us, 12, 2)} ${fmt(1e6 / r.us, 7, 0)} ${fmt(r.algBwGBps, 12, 2)} ${fmt(r.busBwGBps, 12, 2)}`,
    ),
  ];
}

/** "8", "64K", "256M", "1G" → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMG]?)B?$/i.exec(text.trim());
  if (!m) return NaN;
  const mult = { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}
