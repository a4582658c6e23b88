// `ncclctl bench`: collective time and bandwidth over a range of sizes, the way nccl-tests reports
// them (algbw = bytes / time, busbw = algbw × the collective's factor, e.g. 2(n−1)/n for
// AllReduce), through the daemon: from one client naming every rank's buffer, or from a group of
// member processes with one buffer each; or, for AllReduce with --direct, through the addon in
// this one process with no daemon, for the ratio of the two.
import { performance } from 'node:perf_hooks';
import { native, type GpuComm, type GpuDeviceBuffer, type ShmSegment } from '../shared/native.js';
import { DTYPES, REDUCE_OPS, type DType, type ReduceOp } from '../shared/dtypes.js';
import type { CollectiveName } from '../shared/protocol.js';
import type { Client } from './client.js';
import type { Group } from './group.js';
import { allocBuffer, allocRankBuffers, freeRankBuffers } from './rank-buffers.js';

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
  /** Default allreduce (in place, as the allreduce request is); the others run out of place. */
  collective?: CollectiveName;
}

export interface BenchRow {
  /** The larger of a rank's send and receive buffer, as nccl-tests sizes them. */
  bytes: number;
  /** Elements in those bytes. */
  count: number;
  /** Microseconds per collective: wall time over the count (with many in flight, less than a latency). */
  us: number;
  /** Latency of one collective, from call to resolution, in microseconds: median and 99th percentile. */
  p50us: number;
  p99us: number;
  algBwGBps: number;
  busBwGBps: number;
}

/** One collective with NCCL's `count`. */
type RunOnce = (count: number) => Promise<unknown>;

export function sizes(o: BenchOptions): number[] {
  if (o.collective === 'barrier') return [0];
  const out: number[] = [];
  const elem = DTYPES[o.dtype].bytes;
  for (let b = o.minBytes; b <= o.maxBytes; b = Math.max(b + elem, Math.floor(b * o.factor))) out.push(Math.max(elem, b - (b % elem)));
  return out;
}

/** The collectives whose larger buffer holds one block of `count` elements per rank. */
const PER_PEER: ReadonlySet<CollectiveName> = new Set(['allgather', 'reducescatter', 'alltoall']);

/** NCCL's count for a buffer of about `bytes`, and the bytes that count takes (at least one element per rank). */
function shape(c: CollectiveName, bytes: number, elem: number, n: number): { count: number; bytes: number } {
  if (!PER_PEER.has(c)) return { count: bytes / elem, bytes };
  const count = Math.max(1, Math.floor(bytes / elem / n));
  return { count, bytes: count * n * elem };
}

/** busbw / algbw, nccl-tests' factors: what each rank's links carry relative to its buffer. */
function busFactor(c: CollectiveName, n: number): number {
  if (n === 1) return 1;
  if (c === 'allreduce') return (2 * (n - 1)) / n;
  return PER_PEER.has(c) ? (n - 1) / n : 1;
}

/** Bytes each rank's buffers need for every size of the run. */
function bufferBytes(o: BenchOptions, n: number): number {
  return Math.max(o.maxBytes, n * DTYPES[o.dtype].bytes);
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
  const c = o.collective ?? 'allreduce';
  const elem = DTYPES[o.dtype].bytes;
  for (const size of sizes(o)) {
    const { count, bytes } = shape(c, size, elem, nranks);
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
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] * 1000;
    rows.push(row(c, nranks, bytes, bytes / elem, seconds * 1e6, pct(0.5), pct(0.99)));
  }
  return rows;
}

function row(c: CollectiveName, n: number, bytes: number, count: number, us: number, p50us: number, p99us: number): BenchRow {
  const algBwGBps = bytes / us / 1e3;
  return { bytes, count, us, p50us, p99us, algBwGBps, busBwGBps: algBwGBps * busFactor(c, n) };
}

/** Through the daemon, from this one client, with buffers of the kind its backend takes. */
export async function benchDaemon(client: Client, o: BenchOptions): Promise<BenchRow[]> {
  const c = o.collective ?? 'allreduce';
  const n = client.worldSize;
  const bytes = bufferBytes(o, n);
  const send = c === 'barrier' ? [] : await allocRankBuffers(client, bytes);
  const recv = c === 'barrier' || c === 'allreduce' ? [] : await allocRankBuffers(client, bytes);
  const { dtype, op } = o;
  const once: RunOnce =
    c === 'allreduce'
      ? (count) => client.allReduce({ buffers: send, dtype, op, count })
      : (count) => client.collective({ collective: c, dtype, op, count, root: 0, send, recv });
  try {
    return await measure(o, n, once, client.server.maxInFlight);
  } finally {
    await freeRankBuffers(client, [...send, ...recv]);
  }
}

/**
 * One member of a group, with its own buffers on its device: every member must run it with the
 * same options, so that their k-th collectives agree.
 */
export async function benchGroupMember(client: Client, group: Group, o: BenchOptions): Promise<BenchRow[]> {
  const c = o.collective ?? 'allreduce';
  const bytes = bufferBytes(o, group.size);
  const device = group.devices[group.rank];
  const send = c === 'barrier' ? undefined : allocBuffer(client, device, bytes);
  const recv = c === 'barrier' || c === 'allreduce' ? undefined : allocBuffer(client, device, bytes);
  const { dtype, op } = o;
  try {
    return await measure(o, group.size, (count) => group.collective({ collective: c, dtype, op, count, root: 0, send, recv }), client.server.maxInFlight);
  } finally {
    await freeRankBuffers(client, [send, recv].filter((b) => b !== undefined));
  }
}

/**
 * A group's rows from every member's: each column the slowest member's (a group collective ends
 * when its last member's does), as nccl-tests takes the largest time over MPI ranks.
 */
export function slowestRows(members: BenchRow[][], c: CollectiveName, n: number): BenchRow[] {
  return members[0].map((first, i) => {
    const max = (k: 'us' | 'p50us' | 'p99us') => Math.max(...members.map((rows) => rows[i][k]));
    return row(c, n, first.bytes, first.count, max('us'), max('p50us'), max('p99us'));
  });
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
