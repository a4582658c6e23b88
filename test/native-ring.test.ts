// The shared-memory data plane between the daemon and a device process, native halves only:
// RankRing (daemon side) and RingWorker (device side, a thread), both in this process. One ring
// per rank, each with its worker; the same record goes to every rank's ring, as the daemon does.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import { native, type RankRing, type RingWorker, type ShmSegment } from '../dist/shared/native.js';
import { ErrorCodes } from '../dist/shared/errors.js';
import { DTYPES, REDUCE_OPS, type DType } from '../dist/shared/dtypes.js';
import { bf16ToNumber, numberToBf16 } from '../dist/shared/half.js';

const CODES = native.RANK_RING_CODES;
const code = (name: string) => {
  const i = CODES.indexOf(name);
  if (i < 0) throw new Error(`no ring code ${name}`);
  return i;
};
const OK = 0;
const SUM = REDUCE_OPS.sum;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Rank {
  ring: RankRing;
  worker: RingWorker;
  /** Every completion, in the order delivered. */
  done: { seq: number; code: number }[];
  wakes: number;
  /** Resolves once `n` completions (in all) have arrived. */
  until(n: number): Promise<void>;
  /** Replaces the default handling of each batch (the default records it). */
  hook?: (seqs: Float64Array, codes: Int32Array) => void;
}

function makeRank(t: Test, rank: number, nranks: number, capacity = 64, maxBuffers = 2): Rank {
  const ring = native.RankRing.create(capacity, maxBuffers);
  // attach takes ownership of what it is given; the ring keeps its own.
  const worker = native.RingWorker.attach(ring.fds.map((fd) => native.dupFd(fd)), rank, nranks);
  const waiters: (() => boolean)[] = [];
  const r: Rank = {
    ring,
    worker,
    done: [],
    wakes: 0,
    until: (n) =>
      new Promise((resolve) => {
        const check = () => r.done.length >= n && (resolve(), true);
        if (!check()) waiters.push(check);
      }),
  };
  ring.start((seqs, codes) => {
    r.wakes++;
    if (r.hook) return r.hook(seqs, codes);
    for (let i = 0; i < seqs.length; i++) r.done.push({ seq: seqs[i], code: codes[i] });
    for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]()) waiters.splice(i, 1);
  });
  t.teardown(() => {
    worker.stop();
    ring.close();
  });
  return r;
}

function makeSegment(t: Test, bytes: number, label = 'ring-buf'): ShmSegment {
  const fd = native.memfdCreate(label, bytes);
  const seg = native.ShmSegment.fromFd(fd, label);
  native.closeFd(fd);
  t.teardown(() => seg.close());
  return seg;
}

/** Submits one record to every rank's ring, as the daemon will. */
function submitAll(ranks: Rank[], seq: number, dtype: number, count: number, ids: number[], offsets: number[]) {
  const idArr = Uint32Array.from(ids);
  const offArr = Float64Array.from(offsets);
  for (const r of ranks) {
    if (!r.ring.submit(seq, 0, dtype, SUM, count, idArr, offArr)) throw new Error('ring full');
  }
}

// Element access by dtype, bf16 as u16 words.
function view(seg: ShmSegment, dtype: DType, byteOffset: number, count: number) {
  const buf = seg.buffer();
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf, byteOffset, count);
    case 'f64':
      return new Float64Array(buf, byteOffset, count);
    case 'i32':
      return new Int32Array(buf, byteOffset, count);
    case 'bf16':
      return new Uint16Array(buf, byteOffset, count);
    default:
      throw new Error(dtype);
  }
}
const enc = (dtype: DType, x: number) => (dtype === 'bf16' ? numberToBf16(x) : x);
const dec = (dtype: DType, x: number) => (dtype === 'bf16' ? bf16ToNumber(x) : x);

t.test('RANK_RING_CODES: OK, then known error codes, and the LAUNCHED note last', async (t) => {
  t.equal(CODES[0], 'OK');
  t.equal(CODES[CODES.length - 1], 'LAUNCHED', 'a note, not an end: last');
  const known = new Set<string>(Object.values(ErrorCodes));
  for (const c of CODES.slice(1, -1)) t.ok(known.has(c), `${c} is a known code`);
  for (const c of [ErrorCodes.NO_SUCH_BUFFER, ErrorCodes.BUFFER_TOO_SMALL, ErrorCodes.BAD_ALIGNMENT, ErrorCodes.INTERNAL]) {
    t.ok(CODES.includes(c), `${c} can come back`);
  }
  t.ok(Object.isFrozen(CODES));
});

t.test('two ranks, one ring each: both buffers hold the sum', async (t) => {
  const ranks = [makeRank(t, 0, 2), makeRank(t, 1, 2)];
  const bytes = 1 << 16;
  const segs = [makeSegment(t, bytes), makeSegment(t, bytes)];
  for (const r of ranks) segs.forEach((s, id) => r.worker.setBuffer(id, s));
  t.equal(ranks[0].ring.capacity, 64);
  t.equal(ranks[0].ring.fds.length, 3);

  let seq = 0;
  for (const dtype of ['f32', 'f64', 'i32', 'bf16'] as DType[]) {
    const elem = DTYPES[dtype].bytes;
    for (const count of [0, 1, 7, 17, 33, 1000, 4099]) {
      // Different offsets per buffer, multiples of the element size but not of 64.
      const offsets = [elem * 3, elem * 5];
      const a = view(segs[0], dtype, offsets[0], count);
      const b = view(segs[1], dtype, offsets[1], count);
      for (let i = 0; i < count; i++) {
        a[i] = enc(dtype, (i % 50) - 7);
        b[i] = enc(dtype, ((i * 3) % 41) + 1);
      }
      // Sentinels just past the end: must stay untouched.
      const after = [view(segs[0], dtype, offsets[0] + count * elem, 1), view(segs[1], dtype, offsets[1] + count * elem, 1)];
      after[0][0] = enc(dtype, 99);
      after[1][0] = enc(dtype, 99);
      const s = ++seq;
      const before = ranks.map((r) => r.done.length);
      submitAll(ranks, s, DTYPES[dtype].nccl, count, [0, 1], offsets);
      await Promise.all(ranks.map((r, i) => r.until(before[i] + 1)));
      for (const r of ranks) t.same(r.done.at(-1), { seq: s, code: OK }, `${dtype} × ${count}: completed ok`);
      let bad = 0;
      for (let i = 0; i < count; i++) {
        const want = (i % 50) - 7 + ((i * 3) % 41) + 1;
        if (dec(dtype, a[i]) !== want || dec(dtype, b[i]) !== want) bad++;
      }
      t.equal(bad, 0, `${dtype} × ${count}: every element is the sum, in both buffers`);
      t.equal(dec(dtype, after[0][0]), 99, `${dtype} × ${count}: nothing past the end touched`);
      t.equal(dec(dtype, after[1][0]), 99);
    }
  }
});

t.test('10,000 pipelined 8-byte records: all complete, in order', async (t) => {
  const ranks = [makeRank(t, 0, 2, 256), makeRank(t, 1, 2, 256)];
  const segs = [makeSegment(t, 4096), makeSegment(t, 4096)];
  for (const r of ranks) segs.forEach((s, id) => r.worker.setBuffer(id, s));
  new Float64Array(segs[0].buffer())[0] = 0;
  new Float64Array(segs[1].buffer())[0] = 1;
  const total = 10_000;
  const ids = Uint32Array.from([0, 1]);
  const offs = Float64Array.from([0, 0]);
  const f64 = DTYPES.f64.nccl;
  let next = 1;
  let full = 0;
  const pump = () => {
    // The daemon's rule: never more in flight than the ring holds (the slowest rank decides).
    const completed = Math.min(...ranks.map((r) => r.done.length));
    while (next <= total && next - 1 - completed < ranks[0].ring.capacity) {
      for (const r of ranks) {
        if (!r.ring.submit(next, 0, f64, SUM, 1, ids, offs)) {
          full++;
          return;
        }
      }
      next++;
    }
  };
  for (const r of ranks) {
    r.hook = (seqs, codes) => {
      for (let i = 0; i < seqs.length; i++) r.done.push({ seq: seqs[i], code: codes[i] });
      pump();
    };
  }
  const started = process.hrtime.bigint();
  pump();
  while (Math.min(...ranks.map((r) => r.done.length)) < total) await sleep(1);
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  for (const [k, r] of ranks.entries()) {
    t.equal(r.done.length, total, `rank ${k}: every record completed once`);
    t.ok(
      r.done.every((d, i) => d.seq === i + 1 && d.code === OK),
      `rank ${k}: seqs in submission order, all ok`,
    );
  }
  t.equal(full, 0, 'never more in flight than capacity, so submit never found the ring full');
  // Each record doubles the value, 1 → 2^total overflows to Infinity long before the end: check
  // the two buffers agree instead.
  t.equal(new Float64Array(segs[0].buffer())[0], new Float64Array(segs[1].buffer())[0], 'both buffers agree');
  const wakes = ranks.map((r) => r.wakes);
  t.comment(
    `pipelined, 2 ranks × ${total} 8-byte allreduces: ${(total / secs).toFixed(0)} records/s per rank ` +
      `(${((secs / total) * 1e6).toFixed(2)} µs each), completion wakes ${wakes.join('/')}`,
  );
});

t.test('pipelined throughput, one rank of one', async (t) => {
  const r = makeRank(t, 0, 1, 256, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(7, seg);
  const total = 20_000;
  const ids = Uint32Array.from([7]);
  const offs = Float64Array.from([0]);
  let next = 1;
  const pump = () => {
    while (next <= total && r.ring.submit(next, 0, DTYPES.f64.nccl, SUM, 1, ids, offs)) next++;
  };
  r.hook = (seqs, codes) => {
    for (let i = 0; i < seqs.length; i++) r.done.push({ seq: seqs[i], code: codes[i] });
    pump();
  };
  const started = process.hrtime.bigint();
  pump();
  while (r.done.length < total) await sleep(1);
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  t.ok(r.done.every((d, i) => d.seq === i + 1 && d.code === OK), 'all in order, all ok');
  t.comment(
    `pipelined, 1 rank × ${total} 8-byte records (submit until full): ${(total / secs).toFixed(0)} records/s, ` +
      `${r.wakes} completion wakes (${(total / r.wakes).toFixed(1)} records per wake)`,
  );
});

function percentile(sorted: number[], p: number) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function measureLatency(t: Test, nranks: number) {
  const ranks = Array.from({ length: nranks }, (_, k) => makeRank(t, k, nranks, 64, nranks));
  const segs = Array.from({ length: nranks }, () => makeSegment(t, 4096));
  for (const r of ranks) segs.forEach((s, id) => r.worker.setBuffer(id, s));
  const ids = Uint32Array.from(segs.map((_, i) => i));
  const offs = new Float64Array(nranks);
  const warmup = 200;
  const n = 2000;
  const times: number[] = [];
  let seq = 0;
  let started = 0n;
  let pending = 0;
  let resolveAll!: () => void;
  const finished = new Promise<void>((r) => (resolveAll = r));
  const go = () => {
    seq++;
    pending = nranks;
    started = process.hrtime.bigint();
    for (const r of ranks) r.ring.submit(seq, 0, DTYPES.f64.nccl, SUM, 1, ids, offs);
  };
  for (const r of ranks) {
    r.hook = (seqs, codes) => {
      for (let i = 0; i < seqs.length; i++) r.done.push({ seq: seqs[i], code: codes[i] });
      pending -= seqs.length;
      if (pending > 0) return;
      const us = Number(process.hrtime.bigint() - started) / 1e3;
      if (seq > warmup) times.push(us);
      if (seq < warmup + n) go();
      else resolveAll();
    };
  }
  go();
  await finished;
  t.ok(ranks.every((r) => r.done.length === warmup + n && r.done.every((d) => d.code === OK)), 'all completed ok');
  times.sort((a, b) => a - b);
  t.comment(
    `serial round trip submit → onComplete, ${nranks} rank(s), 8 bytes, ${n} iterations: ` +
      `p50 ${percentile(times, 50).toFixed(1)} µs, p99 ${percentile(times, 99).toFixed(1)} µs, ` +
      `min ${times[0].toFixed(1)} µs`,
  );
}

t.test('latency: serial 8-byte round trips, one rank', (t) => measureLatency(t, 1));
t.test('latency: serial 8-byte round trips, two ranks (a ring each)', (t) => measureLatency(t, 2));

t.test('bad records complete with a code and touch nothing', async (t) => {
  const r = makeRank(t, 0, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(1, seg);
  const bytes = new Uint8Array(seg.buffer());
  for (let i = 0; i < bytes.length; i++) bytes[i] = i & 0xff;
  const snapshot = Uint8Array.from(bytes);
  const f32 = DTYPES.f32.nccl;
  const cases: [string, number[], number[], number, string][] = [
    ['an unknown id', [1, 42], [0, 0], 16, ErrorCodes.NO_SUCH_BUFFER],
    ['an offset past the end', [1], [4096 + 64], 1, ErrorCodes.BUFFER_TOO_SMALL],
    ['a count running past the end', [1], [4000], 25, ErrorCodes.BUFFER_TOO_SMALL],
    ['a misaligned offset', [1], [2], 4, ErrorCodes.BAD_ALIGNMENT],
  ];
  let seq = 100;
  for (const [what, ids, offs, count, want] of cases) {
    // Two buffers of one segment: the reduction would write (2x) if it ran.
    const ok = r.ring.submit(++seq, 0, f32, SUM, count, Uint32Array.from(ids), Float64Array.from(offs));
    t.ok(ok, 'submitted');
    await r.until(r.done.length + 1);
    t.same(r.done.at(-1), { seq, code: code(want) }, `${what}: ${want}`);
    t.same(bytes, snapshot, `${what}: nothing touched`);
  }
  // Exactly fitting at the end is fine; count 0 at offset == size too.
  r.ring.submit(++seq, 0, f32, SUM, 16, Uint32Array.from([1]), Float64Array.from([4096 - 64]));
  r.ring.submit(++seq, 0, f32, SUM, 0, Uint32Array.from([1]), Float64Array.from([4096]));
  await r.until(r.done.length + 2);
  t.same(r.done.slice(-2).map((d) => d.code), [OK, OK], 'records that just fit complete ok');

  // dropBuffer: taken records no longer find it.
  r.worker.dropBuffer(1);
  r.ring.submit(++seq, 0, f32, SUM, 1, Uint32Array.from([1]), Float64Array.from([0]));
  await r.until(r.done.length + 1);
  t.equal(r.done.at(-1)!.code, code(ErrorCodes.NO_SUCH_BUFFER), 'a dropped buffer is no longer found');
});

t.test('the worker keeps a buffer mapped after its segment is closed', async (t) => {
  const r = makeRank(t, 0, 1);
  const fd = native.memfdCreate('ring-keep', 4096);
  const seg = native.ShmSegment.fromFd(fd, 'a');
  const other = native.ShmSegment.fromFd(fd, 'b'); // same pages, to look at afterwards
  native.closeFd(fd);
  t.teardown(() => other.close());
  new Int32Array(other.buffer()).fill(5, 0, 4);
  r.worker.setBuffer(3, seg);
  seg.close();
  t.throws(() => r.worker.setBuffer(4, seg), { code: ErrorCodes.BUFFER_CLOSED });
  // Out of place in a world of 1: the first 4 ints, reduced, land in the next 4.
  r.ring.submit(1, 0, DTYPES.i32.nccl, SUM, 4, Uint32Array.from([3, 3]), Float64Array.from([0, 16]));
  await r.until(1);
  t.same(r.done[0], { seq: 1, code: OK });
  t.same(Array.from(new Int32Array(other.buffer(), 0, 9)), [5, 5, 5, 5, 5, 5, 5, 5, 0], 'reduced through its own mapping');
});

t.test("inject('fail') fails exactly the next record", async (t) => {
  const r = makeRank(t, 0, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(0, seg);
  r.worker.inject('fail');
  const ids = Uint32Array.from([0]);
  const offs = Float64Array.from([0]);
  for (let s = 1; s <= 3; s++) t.ok(r.ring.submit(s, 0, DTYPES.u8.nccl, SUM, 8, ids, offs));
  await r.until(3);
  t.same(
    r.done.map((d) => [d.seq, CODES[d.code]]),
    [
      [1, ErrorCodes.INTERNAL],
      [2, 'OK'],
      [3, 'OK'],
    ],
  );
});

t.test("inject('hang') holds records until inject(null); submit returns false when full", async (t) => {
  const r = makeRank(t, 0, 1, 4, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(0, seg);
  t.equal(r.ring.capacity, 4);
  const ids = Uint32Array.from([0]);
  const offs = Float64Array.from([0]);
  // Capacity is rounded up to a power of two.
  const odd = native.RankRing.create(5, 1);
  t.equal(odd.capacity, 8);
  odd.close();

  r.worker.inject('hang');
  await sleep(5);
  for (let s = 1; s <= 4; s++) t.ok(r.ring.submit(s, 0, DTYPES.u8.nccl, SUM, 8, ids, offs), `record ${s} fits`);
  t.notOk(r.ring.submit(5, 0, DTYPES.u8.nccl, SUM, 8, ids, offs), 'the fifth finds the ring full');
  await sleep(150);
  t.equal(r.done.length, 0, 'a hung worker completes nothing');
  r.worker.inject(null);
  await r.until(4);
  t.same(r.done.map((d) => d.seq), [1, 2, 3, 4], 'released: all four, in order');
  t.ok(r.ring.submit(5, 0, DTYPES.u8.nccl, SUM, 8, ids, offs), 'room again');
  await r.until(5);
  t.equal(r.done[4].seq, 5);
});

t.test('stop() joins a hung worker promptly, and is idempotent', async (t) => {
  const r = makeRank(t, 0, 1, 4, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(0, seg);
  r.worker.inject('hang');
  r.ring.submit(1, 0, DTYPES.u8.nccl, SUM, 8, Uint32Array.from([0]), Float64Array.from([0]));
  await sleep(20);
  const t0 = process.hrtime.bigint();
  r.worker.stop();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.ok(ms < 250, `stop took ${ms.toFixed(2)} ms`);
  r.worker.stop();
  r.worker.dropBuffer(0);
  r.worker.inject(null);
  t.throws(() => r.worker.setBuffer(0, seg), { code: ErrorCodes.CLOSED });
  // An idle (sleeping) worker stops promptly too.
  const idle = makeRank(t, 0, 1);
  await sleep(20);
  const t1 = process.hrtime.bigint();
  idle.worker.stop();
  const ms1 = Number(process.hrtime.bigint() - t1) / 1e6;
  t.ok(ms1 < 250, `idle stop took ${ms1.toFixed(2)} ms`);
});

t.test('close() from inside onComplete is safe', async (t) => {
  const r = makeRank(t, 0, 1);
  const seg = makeSegment(t, 4096);
  r.worker.setBuffer(0, seg);
  let calls = 0;
  r.hook = (seqs) => {
    calls++;
    t.ok(seqs.length >= 1);
    r.ring.close();
    r.ring.close();
  };
  const ids = Uint32Array.from([0]);
  const offs = Float64Array.from([0]);
  r.ring.submit(1, 0, DTYPES.u8.nccl, SUM, 8, ids, offs);
  while (calls === 0) await sleep(1);
  await sleep(50);
  t.equal(calls, 1, 'no callback after close');
  t.same(r.ring.fds, [-1, -1, -1]);
  t.throws(() => r.ring.submit(2, 0, DTYPES.u8.nccl, SUM, 8, ids, offs), { code: ErrorCodes.CLOSED });
  t.throws(() => r.ring.start(() => {}), { code: ErrorCodes.CLOSED });
});

t.test('argument checks', async (t) => {
  t.throws(() => native.RankRing.create(0, 1), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.RankRing.create(8, 0), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.RankRing.create(65536, 1024), { code: ErrorCodes.INVALID_ARG }, 'too large a region');
  const r = makeRank(t, 0, 1, 8, 2);
  const ids = Uint32Array.from([0]);
  const offs = Float64Array.from([0]);
  const bad: [string, () => unknown][] = [
    ['kind 9', () => r.ring.submit(1, 9, 0, 0, 1, ids, offs)],
    ['dtype 10', () => r.ring.submit(1, 0, 10, 0, 1, ids, offs)],
    ['op 5', () => r.ring.submit(1, 0, 0, 5, 1, ids, offs)],
    ['negative count', () => r.ring.submit(1, 0, 0, 0, -1, ids, offs)],
    ['extra of 5 ints', () => r.ring.submit(1, 0, 0, 0, 1, ids, offs, new Int32Array(5))],
    ['extra with a negative share', () => r.ring.submit(1, 0, 0, 0, 1, ids, offs, Int32Array.from([0, 0, -1, 2, 0, 0]))],
    ['more than maxBuffers', () => r.ring.submit(1, 0, 0, 0, 1, new Uint32Array(3), new Float64Array(3))],
    ['lengths differ', () => r.ring.submit(1, 0, 0, 0, 1, new Uint32Array(2), new Float64Array(1))],
    ['ids not a Uint32Array', () => r.ring.submit(1, 0, 0, 0, 1, new Int32Array(1) as unknown as Uint32Array, offs)],
    ['fractional offset', () => r.ring.submit(1, 0, 0, 0, 1, ids, Float64Array.from([0.5]))],
    ['negative offset', () => r.ring.submit(1, 0, 0, 0, 1, ids, Float64Array.from([-8]))],
  ];
  for (const [what, f] of bad) t.throws(f, { code: ErrorCodes.INVALID_ARG }, what);
  t.throws(() => r.ring.start(() => {}), { code: ErrorCodes.INVALID_ARG }, 'started twice');
  t.throws(() => r.worker.inject('explode' as 'hang'), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => r.worker.setBuffer(0, {} as ShmSegment), { code: ErrorCodes.INVALID_ARG });
  const submit = r.ring.submit;
  t.throws(() => submit.call({}, 1, 0, 0, 0, 1, ids, offs), TypeError, 'foreign this');
});

t.test('attach validates the ring and owns the fds, also when it throws', async (t) => {
  const notRing = native.memfdCreate('not-a-ring', 4096);
  const e1 = native.dupFd(notRing);
  const e2 = native.dupFd(notRing);
  t.throws(() => native.RingWorker.attach([notRing, e1, e2], 0, 1), { code: ErrorCodes.BAD_BUFFER });
  for (const fd of [notRing, e1, e2]) t.throws(() => native.fdInfo(fd), { code: 'EBADF' }, `fd ${fd} was closed`);

  const ring = native.RankRing.create(8, 1);
  t.teardown(() => ring.close());
  const fds = ring.fds.map((fd) => native.dupFd(fd));
  t.throws(() => native.RingWorker.attach(fds, 2, 2), { code: ErrorCodes.INVALID_ARG }, 'rank out of range');
  for (const fd of fds) t.throws(() => native.fdInfo(fd), { code: 'EBADF' }, `fd ${fd} was closed`);
  const info = native.fdInfo(ring.fds[0]);
  t.equal(info.seals & native.SEALS.SHRINK, native.SEALS.SHRINK, 'the ring is sealed against shrinking');
});

t.test('a device process that dies: no completions, and submit never blocks', async (t) => {
  const ring = native.RankRing.create(4, 1);
  t.teardown(() => ring.close());
  let completions = 0;
  ring.start((seqs) => (completions += seqs.length));
  const bufFd = native.memfdCreate('ring-child', 4096);
  t.teardown(() => native.closeFd(bufFd));
  const nativeUrl = pathToFileURL(path.resolve('dist/shared/native.js')).href;
  // The child gets the ring's fds as 3, 4, 5 and the buffer as 6, arms a crash, and says so.
  const code = `
    import { native } from ${JSON.stringify(nativeUrl)};
    const w = native.RingWorker.attach([3, 4, 5], 0, 1);
    w.setBuffer(0, native.ShmSegment.fromFd(6, 'buf'));
    w.inject('crash');
    process.stdout.write('armed\\n');
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
    stdio: ['ignore', 'pipe', 'inherit', ...ring.fds, bufFd],
  });
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on('exit', (c, s) => r([c, s])));
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  const ids = Uint32Array.from([0]);
  const offs = Float64Array.from([0]);
  t.ok(ring.submit(1, 0, DTYPES.u8.nccl, SUM, 8, ids, offs));
  const [exitCode, signal] = await exited;
  t.equal(signal, 'SIGKILL', `the child was killed by its worker (exit code ${exitCode})`);
  const t0 = process.hrtime.bigint();
  let accepted = 0;
  for (let s = 2; s < 20; s++) if (ring.submit(s, 0, DTYPES.u8.nccl, SUM, 8, ids, offs)) accepted++;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.equal(accepted, 3, 'the ring filled up (the crashed record took its slot), then submit returned false');
  t.ok(ms < 250, `without blocking (${ms.toFixed(2)} ms for 18 submits)`);
  await sleep(20);
  t.equal(completions, 0, 'nothing completed');
});
