// Every collective through a real daemon on the host backend (real device processes, real shared
// memory), checked element by element against client/verify.ts's float64 references, with
// guards after every buffer and out-of-place send buffers checked unchanged:
//   - one client naming every rank's buffers: every collective × dtype × op, in and out of place,
//     every root, a count that is no multiple of the world size (1001 on 3 ranks), counts 0 to 2,
//     a count past the host kernels' slice and block boundaries, slots at offsets inside one
//     registration, NCCL's in-place layouts named explicitly and other sharing refused, and the
//     edge values the protocol pins down (NaN in max/min, wrap-around, integer avg, 64 bits);
//   - groups of 1 to 4 member processes: ncclctl group-demo, and members of our own
//     (test/helpers/collective-member.ts, the SDK's joinGroup and Group) on permuted devices, on a
//     subset of the world, and two groups live at once on disjoint ranks, each progressing while
//     the other waits for a member.
// Inputs come from a seeded generator: NCCLD_TEST_SEED=<n> replays a run (the seed is printed).
import t, { type Test } from 'tap';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { connect, COLLECTIVES, DTYPE_NAMES, DTYPES, ErrorCodes, HostBuffer, REDUCE_OP_NAMES, type BufferArg, type Client, type CollectiveResult, type DType, type ReduceOp } from '../dist/client/index.js';
import { allocBuffer, freeRankBuffers, readValues, writeValues, type RankPair } from '../dist/client/rank-buffers.js';
import { collectiveInputs, collectiveReference, compare, inPlaceOffsets, randomInputs, type Reference } from '../dist/client/verify.js';
import { collectiveElements, REDUCING, ROOTED, type CollectiveName } from '../dist/shared/protocol.js';
import { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from '../dist/shared/half.js';
import { debugCommand, startDaemon, until, NCCLCTL, ROOT, type RunningDaemon } from './helpers/daemon.js';
import { bytesFor, caseData, check, explicitSlots, label, prepare, type Case, type FromMember, type MemberSpec, type ToMember } from './helpers/collective-member.js';

const SEED = Number(process.env.NCCLD_TEST_SEED ?? 20240917);
t.comment(`seed ${SEED} (NCCLD_TEST_SEED=${SEED} replays this run)`);

const DATA = COLLECTIVES.filter((c) => c !== 'barrier');
const placements = (c: CollectiveName) => (c === 'alltoall' ? [false] : [false, true]);

/** The SDK's call for the case, over every rank's buffers (registered numbers: `numbers`). */
function runOneClient(client: Client, k: Case, pairs: RankPair[], numbers: number[]): Promise<CollectiveResult> {
  const { dtype, op, count, root } = k;
  const explicit = k.explicit ? numbers.map((h, r) => explicitSlots(k, r, h)) : null;
  const send: BufferArg[] = explicit ? explicit.map((x) => x.send) : pairs.map((p) => p.send);
  const recv: BufferArg[] | undefined = explicit ? explicit.map((x) => x.recv) : k.inPlace ? undefined : pairs.map((p) => p.recv!);
  const timeoutMs = DEADLINE_MS;
  switch (k.c) {
    case 'allreduce':
      return client.collective({ collective: 'allreduce', send, recv, dtype, op, count, timeoutMs });
    case 'broadcast':
      return client.broadcast({ send, recv, dtype, count, root, timeoutMs });
    case 'reduce':
      return client.reduce({ send, recv, dtype, op, count, root, timeoutMs });
    case 'allgather':
      return client.allGather({ send, recv, dtype, count, timeoutMs });
    case 'reducescatter':
      return client.reduceScatter({ send, recv, dtype, op, count, timeoutMs });
    case 'alltoall':
      return client.allToAll({ send, recv: recv!, dtype, count, timeoutMs });
    case 'barrier':
      return client.barrier({ timeoutMs });
  }
}

/** A request with no reply long after its own deadline (DEADLINE_MS) should have answered it. */
class Stalled extends Error {}
const DEADLINE_MS = 15_000;

/**
 * `p`, or a Stalled error with what the daemon says of its state if no reply (not even the
 * daemon's TIMEOUT) came within DEADLINE_MS + 10 s.
 */
async function watched<T>(d: RunningDaemon, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stall = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void debugCommand(d.debugSocket, 'status', 'ops 10', 'clients')
        .catch((e: Error) => `(debug socket: ${e.message})`)
        .then((state) => reject(new Stalled(`${what}: no reply ${DEADLINE_MS + 10_000} ms after the request, whose deadline was ${DEADLINE_MS} ms; daemon:\n${state}\nlast log lines: ${JSON.stringify(d.logs.slice(-10))}`)));
    }, DEADLINE_MS + 10_000);
  });
  try {
    return await Promise.race([p, stall]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs cases one after another over one send and one receive buffer per rank; one assertion per (collective, dtype). */
async function runCases(t: Test, d: RunningDaemon, client: Client, n: number, cases: Case[], firstSeed: number, todo?: string): Promise<{ seqs: number[]; untouched: number }> {
  const bytes = bytesFor(cases, n);
  const sends = Array.from({ length: n }, (_, r) => allocBuffer(client, r, bytes));
  const recvs = Array.from({ length: n }, (_, r) => allocBuffer(client, r, bytes));
  const numbers = await Promise.all(sends.map((b) => client.register(b)));
  await Promise.all(recvs.map((b) => client.register(b)));
  const seqs: number[] = [];
  let untouched = 0; // reduce out of place: receive buffers of ranks but the root found as they were
  const failures = new Map<string, unknown[]>();
  const order: string[] = [];
  try {
    for (const [i, k] of cases.entries()) {
      const key = k.c === 'barrier' ? 'barrier' : `${k.c} ${k.dtype}`;
      if (!failures.has(key)) {
        failures.set(key, []);
        order.push(key);
      }
      const pairs: RankPair[] = sends.map((s, r) => (k.inPlace || k.c === 'barrier' ? { send: s } : { send: s, recv: recvs[r] }));
      const seed = firstSeed + i;
      const data = caseData(k, n, seed);
      pairs.forEach((p, r) => prepare(k, n, r, p, data));
      try {
        seqs.push((await watched(d, label(k), runOneClient(client, k, pairs, numbers))).seq);
      } catch (err) {
        failures.get(key)!.push({ case: label(k), seed, error: `${(err as { code?: string }).code} ${(err as Error).message}` });
        if (err instanceof Stalled) break; // the rest would queue behind it
        continue;
      }
      for (const [r, p] of pairs.entries()) {
        const res = check(k, n, r, p, data);
        if (res.mismatches || res.problems.length) failures.get(key)!.push({ case: label(k), seed, rank: r, mismatches: res.mismatches, first: res.first, problems: res.problems });
        else if (k.c === 'reduce' && !k.inPlace && r !== k.root) untouched++;
      }
    }
  } finally {
    await freeRankBuffers(client, [...sends, ...recvs]);
  }
  for (const key of order) {
    const bad = failures.get(key)!;
    const ran = cases.filter((k) => (k.c === 'barrier' ? 'barrier' : `${k.c} ${k.dtype}`) === key).length;
    t.same(bad, [], `${key}: ${ran} case${ran > 1 ? 's' : ''} right on every rank`, todo ? { todo } : {});
  }
  return { seqs, untouched };
}

t.test('one client, 3 ranks: every collective × dtype × op, in and out of place, every root, count 1001', async (t) => {
  const n = 3;
  const count = 1001; // not a multiple of 3
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  t.equal(client.worldSize, n);

  const cases: Case[] = [];
  for (const c of DATA) {
    let turn = 0;
    for (const dtype of DTYPE_NAMES) {
      for (const op of REDUCING.has(c) ? REDUCE_OP_NAMES : (['sum'] as ReduceOp[])) {
        for (const inPlace of placements(c)) {
          // Broadcast takes every root for every dtype; reduce's roots take turns across its ops.
          const roots = c === 'broadcast' ? [0, 1, 2] : [c === 'reduce' ? turn++ % n : 0];
          for (const root of roots) cases.push({ c, dtype, op, count, root, inPlace });
        }
      }
    }
    cases.push({ c: 'barrier', dtype: 'f32', op: 'sum', count: 0, root: 0, inPlace: false });
  }
  // The plan itself covers what it claims.
  const combos = new Set(cases.map((k) => `${k.c}/${k.dtype}/${REDUCING.has(k.c) ? k.op : '-'}/${k.inPlace}`));
  const wanted = DATA.reduce((s, c) => s + DTYPE_NAMES.length * (REDUCING.has(c) ? REDUCE_OP_NAMES.length : 1) * placements(c).length, 0);
  t.equal(combos.size - 1, wanted, `${wanted} collective × dtype × op × placement combinations (and barrier)`);
  for (const c of ROOTED) {
    for (const dtype of DTYPE_NAMES) {
      const roots = new Set(cases.filter((k) => k.c === c && k.dtype === dtype).map((k) => k.root));
      if (roots.size !== n) t.fail(`${c} ${dtype}: roots ${[...roots]}`);
    }
  }

  const started = Date.now();
  const { seqs, untouched } = await runCases(t, d, client, n, cases, SEED);
  t.equal(seqs.length, cases.length, `${cases.length} collectives answered`);
  t.ok(
    seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
    'seq grows with every collective of the one client',
  );
  // Reduce leaves a rank but the root alone: out of place its receive buffer (checked against what
  // it held before), in place its input.
  const nonRoot = cases.filter((k) => k.c === 'reduce' && !k.inPlace).length * (n - 1);
  t.equal(untouched, nonRoot, `reduce out of place: all ${nonRoot} receive buffers of ranks but the root found untouched`);
  t.comment(`${cases.length} collectives in ${Date.now() - started} ms`);
});

t.test('one client, 3 ranks: counts 0, 1 and 2 (below the world size) touch nothing beyond them', async (t) => {
  const n = 3;
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const dtypes: DType[] = ['u8', 'bf16', 'i64', 'f32'];
  const cases: Case[] = [];
  let i = 0;
  for (const count of [0, 1, 2]) {
    for (const c of DATA) {
      for (const inPlace of placements(c)) {
        const op = REDUCE_OP_NAMES[i % REDUCE_OP_NAMES.length];
        cases.push({ c, dtype: dtypes[i % dtypes.length], op, count, root: i % n, inPlace });
        i++;
      }
    }
  }
  await runCases(t, d, client, n, cases, SEED + 100_000);
});

// The host kernels cut the work into per-rank slices and into blocks (2048 elements to reduce,
// 32 KiB to copy): a count past several of each, odd, checks every boundary.
t.test('one client, 3 ranks: count 40009, past the kernels\' slice and block boundaries', async (t) => {
  const n = 3;
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const cases: Case[] = [];
  let i = 0;
  for (const c of DATA) {
    for (const dtype of ['u8', 'bf16', 'i32', 'f64'] as DType[]) {
      for (const inPlace of placements(c)) {
        cases.push({ c, dtype, op: REDUCE_OP_NAMES[i % REDUCE_OP_NAMES.length], count: 40009, root: i % n, inPlace });
        i++;
      }
    }
  }
  await runCases(t, d, client, n, cases, SEED + 150_000);
});

// Each rank's send and receive buffers are slots at offsets inside one registration; every
// element of the registration is checked: the result where it belongs, everything else as it was.
t.test('one client, 4 ranks: slots at offsets inside one registration, the rest of it untouched', async (t) => {
  const n = 4;
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const count = 99; // not a multiple of 4
  const regions = 2 * count * n + 64;
  const bufs = Array.from({ length: n }, () => HostBuffer.alloc(regions * 8));
  const numbers = await Promise.all(bufs.map((b) => client.register(b)));
  let seed = SEED + 200_000;
  for (const dtype of ['i32', 'f16', 'f64', 'u64'] as DType[]) {
    const bad: unknown[] = [];
    let ran = 0;
    for (const c of DATA) {
      for (const inPlace of placements(c)) {
        const op = REDUCE_OP_NAMES[ran % REDUCE_OP_NAMES.length];
        const root = ran % n;
        const k: Case = { c, dtype, op, count, root, inPlace };
        ran++;
        const elem = DTYPES[dtype].bytes;
        const e = collectiveElements(c, count, n);
        const total = Math.floor(bufs[0].bytes / elem);
        const inputs = collectiveInputs(c, dtype, op, n, count, ++seed);
        const background = randomInputs(dtype, 'max', n, total, ++seed);
        const sendAt = (r: number) => 3 + r; // elements: not 0, different per rank
        const sendLen = inPlace ? Math.max(e.send, e.recv) : e.send;
        const recvAt = (r: number) => sendAt(r) + sendLen + 5;
        const want: Reference[] = [];
        for (let r = 0; r < n; r++) {
          writeValues(bufs[r], dtype, total, background[r]);
          const inAt = sendAt(r) + (inPlace ? inPlaceOffsets(c, count, r).input : 0);
          writeValues(bufs[r], dtype, inputs[r].length, inputs[r], inAt);
          // What the whole registration must hold afterwards.
          const expected = Float64Array.from(background[r]);
          expected.set(inputs[r], inAt);
          const allowed = new Float64Array(total);
          const ref = collectiveReference(c, inputs, k)[r];
          const resAt = inPlace ? sendAt(r) + inPlaceOffsets(c, count, r).result : recvAt(r);
          if (ref) {
            expected.set(ref.expected, resAt);
            allowed.set(ref.allowed, resAt);
          }
          // In place, what reducescatter leaves in the blocks but the rank's own is not specified.
          if (inPlace && c === 'reducescatter') {
            for (let j = 0; j < n; j++) if (j !== r) allowed.fill(Infinity, sendAt(r) + j * count, sendAt(r) + (j + 1) * count);
          }
          want.push({ expected, allowed });
        }
        const slot = (r: number, at: number) => ({ buffer: numbers[r], offset: at * elem });
        const send = bufs.map((_, r) => slot(r, sendAt(r)));
        const recv = inPlace ? undefined : bufs.map((_, r) => slot(r, recvAt(r)));
        try {
          await watched(d, label(k), client.collective({ collective: c, send, recv, dtype, op, count, root, timeoutMs: DEADLINE_MS }));
        } catch (err) {
          bad.push({ case: label(k), error: `${(err as { code?: string }).code} ${(err as Error).message}` });
          if (err instanceof Stalled) break;
          continue;
        }
        for (let r = 0; r < n; r++) {
          const res = compare(readValues(bufs[r], dtype, total), want[r], r, 3);
          if (res.mismatches) bad.push({ case: label(k), seed, rank: r, mismatches: res.mismatches, first: res.first });
        }
      }
    }
    t.same(bad, [], `${dtype}: ${ran} collectives over offset slots, every element of every registration right`);
  }
  await client.release(bufs);
  bufs.forEach((b) => b.free());
});

// docs/protocol.md (## collective, Checks) refuses, with BUFFER_OVERLAP, slots of one
// registration that share bytes "other than in NCCL's in-place way". NCCL's in-place way, named
// as NCCL names it (both send and recv given: recv == send; allgather's send == recv + rank ×
// count; reducescatter's recv == send + rank × count), is in place and must run.
t.test("one client, 3 ranks: NCCL's in-place layouts named explicitly; any other sharing refused", async (t) => {
  const n = 3;
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const explicit: Case[] = (['allreduce', 'broadcast', 'reduce', 'allgather', 'reducescatter'] as CollectiveName[]).map((c, i) => ({
    c,
    dtype: (['f32', 'i32', 'bf16', 'u8', 'f64'] as DType[])[i],
    op: REDUCE_OP_NAMES[i],
    count: 1001,
    root: (i + 1) % n,
    inPlace: true,
    explicit: true,
  }));
  await runCases(t, d, client, n, explicit, SEED + 170_000);

  // Any other sharing is refused before anything runs; the buffers are left as they were.
  const count = 16;
  const bufs = Array.from({ length: n }, () => HostBuffer.alloc(4096));
  const numbers = await Promise.all(bufs.map((b) => client.register(b)));
  bufs.forEach((b, r) => b.view('u8').forEach((_, i, v) => (v[i] = (i * 7 + r * 13) & 0xff)));
  const before = bufs.map((b) => Array.from(b.view('u8')));
  const slot = (r: number, el: number) => ({ buffer: numbers[r], offset: el * 4 });
  const each = (f: (r: number) => { buffer: number; offset: number }) => bufs.map((_, r) => f(r));
  const base = { dtype: 'f32' as const, count, timeoutMs: DEADLINE_MS };
  const refused: [string, Parameters<Client['collective']>[0]][] = [
    ['alltoall, recv = send', { ...base, collective: 'alltoall', send: each((r) => slot(r, 0)), recv: each((r) => slot(r, 0)) }],
    ['allreduce, recv one element past send', { ...base, collective: 'allreduce', op: 'sum', send: each((r) => slot(r, 0)), recv: each((r) => slot(r, 1)) }],
    ['broadcast, recv inside send', { ...base, collective: 'broadcast', root: 0, send: each((r) => slot(r, 0)), recv: each((r) => slot(r, count / 2)) }],
    ["allgather, send at another rank's block of recv", { ...base, collective: 'allgather', send: each((r) => slot(r, ((r + 1) % n) * count)), recv: each((r) => slot(r, 0)) }],
    ["reducescatter, recv at another rank's block of send", { ...base, collective: 'reducescatter', op: 'max', send: each((r) => slot(r, 0)), recv: each((r) => slot(r, ((r + 1) % n) * count)) }],
    ["in place, two ranks' slots sharing bytes", { ...base, collective: 'allreduce', op: 'sum', send: [slot(0, 0), slot(0, count / 2), slot(2, 0)] }],
    ["reduce, two ranks' recv sharing bytes", { ...base, collective: 'reduce', op: 'sum', root: 1, send: each((r) => slot(r, 0)), recv: [slot(0, count), slot(1, count), slot(0, count + 1)] }],
  ];
  for (const [what, opts] of refused) {
    const err = await client.collective(opts).then(
      () => null,
      (e: { code: string }) => e,
    );
    t.equal(err?.code, ErrorCodes.BUFFER_OVERLAP, `${what}: BUFFER_OVERLAP`);
  }
  t.same(
    bufs.map((b) => Array.from(b.view('u8'))),
    before,
    'the refused requests touched nothing',
  );
  // Disjoint slots of every rank in one registration are fine: each gets the result.
  const one = bufs[0];
  const slots = Array.from({ length: n }, (_, r) => ({ buffer: numbers[0], offset: r * count * 8 }));
  slots.forEach((s, r) => one.view('i64', s.offset, count).fill(BigInt(r + 1) * 2n ** 40n));
  await watched(d, 'allreduce over one registration', client.collective({ collective: 'allreduce', op: 'sum', dtype: 'i64', count, send: slots, timeoutMs: DEADLINE_MS }));
  t.same(
    slots.map((s) => [...new Set(one.view('i64', s.offset, count))]),
    Array(n).fill([6n * 2n ** 40n]),
    "every rank's slot of one registration holds the sum",
  );
  await client.release(bufs);
  bufs.forEach((b) => b.free());
});

// What the protocol pins down beyond random data: NaN in max/min (ignored unless every input is
// NaN), integer wrap-around, integer avg truncating toward zero, 64-bit values past 2^53.
t.test('one client, 3 ranks: NaN in max and min, wrap-around, avg truncation, 64-bit extremes', async (t) => {
  const n = 3;
  const d = await startDaemon(['--backend', 'host', '--ranks', String(n)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const bufs = Array.from({ length: 2 * n }, () => HostBuffer.alloc(256));
  await Promise.all(bufs.map((b) => client.register(b)));
  const sends = bufs.slice(0, n);
  const recvs = bufs.slice(n);

  // Floats: element i of rank r is col[i][r]; expected max and min per element.
  const N = NaN;
  const cols = [
    [N, 1, 2],
    [N, N, N],
    [3, N, -1],
    [-5, 4, N],
  ];
  const wantMax = [2, N, 3, 4];
  const wantMin = [1, N, -1, -5];
  const enc = (dtype: DType, x: number) => (dtype === 'f16' ? numberToF16(x) : dtype === 'bf16' ? numberToBf16(x) : x);
  const dec = (dtype: DType, x: number) => (dtype === 'f16' ? f16ToNumber(x) : dtype === 'bf16' ? bf16ToNumber(x) : x);
  const same = (a: number, b: number) => (Number.isNaN(a) ? Number.isNaN(b) : a === b);
  for (const dtype of ['f16', 'bf16', 'f32', 'f64'] as const) {
    for (const op of ['max', 'min'] as const) {
      const want = op === 'max' ? wantMax : wantMin;
      for (const c of ['allreduce', 'reduce', 'reducescatter'] as const) {
        // reducescatter with count 1: rank r's one element is column... block r of every send,
        // so each rank sends all four columns' worth laid out as blocks of 1 (three ranks: 3 blocks).
        const cnt = c === 'reducescatter' ? 1 : cols.length;
        for (let r = 0; r < n; r++) {
          const v = sends[r].view(dtype, 0, cols.length) as unknown as number[];
          cols.forEach((col, i) => (v[i] = enc(dtype, col[r])));
          (recvs[r].view(dtype, 0, cols.length) as unknown as number[]).fill(enc(dtype, 42));
        }
        await watched(d, `${c} ${dtype} ${op}`, client.collective({ collective: c, send: sends, recv: recvs, dtype, op, count: cnt, root: 1, timeoutMs: DEADLINE_MS }));
        const got = recvs.map((b) => Array.from(b.view(dtype, 0, cnt) as unknown as number[], (x) => dec(dtype, x)));
        const expected = recvs.map((_, r) => (c === 'reducescatter' ? [want[r]] : c === 'reduce' && r !== 1 ? Array(cnt).fill(42) : want));
        const ok = got.every((g, r) => g.every((x, i) => same(x, expected[r][i])));
        t.ok(ok, `${c} ${dtype} ${op}: NaN ignored unless every input is NaN`, ok ? {} : { got, expected });
      }
    }
  }
  // NaN results are quiet NaNs, the same bytes on every rank.
  for (const dtype of ['f16', 'bf16'] as const) {
    sends.forEach((b) => ((b.view(dtype, 0, 1) as unknown as number[])[0] = dtype === 'f16' ? 0x7c01 : 0x7f81)); // signalling NaNs
    await watched(d, `allreduce ${dtype} max`, client.collective({ collective: 'allreduce', send: sends, dtype, op: 'max', count: 1, timeoutMs: DEADLINE_MS }));
    const bits = sends.map((b) => (b.view(dtype, 0, 1) as unknown as number[])[0]);
    t.ok(bits.every((x) => x === bits[0]) && (dtype === 'f16' ? (bits[0] & 0x7fff) === 0x7e00 : (bits[0] & 0x7fc0) === 0x7fc0), `${dtype}: an all-NaN max is a quiet NaN, the same on every rank`, { bits: bits.map((x) => x.toString(16)) });
  }

  // Integers: [values per rank], op, expected, for allreduce in place; exact (BigInt for 64 bits).
  const M64 = 2n ** 64n;
  const ints: [DType, ReduceOp, bigint[], bigint][] = [
    ['i8', 'sum', [127n, 1n, 0n], -128n],
    ['u8', 'sum', [255n, 1n, 0n], 0n],
    ['i8', 'prod', [-128n, -1n, 1n], -128n],
    ['u8', 'prod', [16n, 16n, 3n], 0n],
    ['i32', 'sum', [2147483647n, 1n, 0n], -2147483648n],
    ['u32', 'prod', [65536n, 65536n, 5n], 0n],
    ['i32', 'avg', [-7n, 0n, 0n], -2n],
    ['i32', 'avg', [7n, 0n, 1n], 2n],
    ['i8', 'avg', [-100n, -100n, 0n], 18n], // the sum wraps first: -200 is 56 in i8
    ['u64', 'sum', [M64 - 1n, 2n, 0n], 1n],
    ['i64', 'sum', [2n ** 63n - 1n, 1n, 0n], -(2n ** 63n)],
    ['u64', 'max', [M64 - 1n, 0n, 5n], M64 - 1n],
    ['u64', 'min', [M64 - 1n, M64 - 2n, 2n ** 60n], 2n ** 60n],
    ['i64', 'min', [-(2n ** 63n), 0n, 1n], -(2n ** 63n)],
    ['i64', 'max', [-(2n ** 63n), -1n, -(2n ** 62n)], -1n],
    ['u64', 'prod', [2n ** 32n, 2n ** 32n, 3n], 0n],
    ['i64', 'avg', [-(2n ** 62n), -(2n ** 61n), -1n], -((2n ** 62n + 2n ** 61n + 1n) / 3n)],
    ['i64', 'avg', [-(2n ** 62n), -(2n ** 62n), -1n], (2n ** 63n - 1n) / 3n], // -2^63 - 1 wraps to 2^63 - 1
    ['u64', 'avg', [2n ** 63n, 2n ** 62n, 2n], (2n ** 63n + 2n ** 62n + 2n) / 3n],
  ];
  for (const [dtype, op, vals, want] of ints) {
    const big = dtype === 'i64' || dtype === 'u64';
    sends.forEach((b, r) => ((b.view(dtype, 0, 1) as unknown as (number | bigint)[])[0] = big ? vals[r] : Number(vals[r])));
    await watched(d, `allreduce ${dtype} ${op}`, client.collective({ collective: 'allreduce', send: sends, dtype, op, count: 1, timeoutMs: DEADLINE_MS }));
    const got = sends.map((b) => BigInt((b.view(dtype, 0, 1) as unknown as (number | bigint)[])[0]));
    t.same(got, [want, want, want], `${dtype} ${op} of ${vals.join(', ')} is ${want}`);
  }
  await client.release(bufs);
  bufs.forEach((b) => b.free());
});

// ---- groups: every member a separate client process ----

const MEMBER = path.join(ROOT, 'test/helpers/collective-member.ts');

interface Member {
  proc: ChildProcess;
  spec: MemberSpec;
  messages: FromMember[];
  stderr: string;
  exited: Promise<number | null>;
  send(m: ToMember): void;
}

/** Forks one member process per spec; each is killed at teardown if it is still running. */
function startMembers(t: Test, specs: MemberSpec[]): Member[] {
  return specs.map((spec) => {
    const proc = fork(MEMBER, [JSON.stringify(spec)], {
      cwd: ROOT,
      execArgv: ['--import=@tapjs/typescript/import'],
      env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const m: Member = {
      proc,
      spec,
      messages: [],
      stderr: '',
      exited: new Promise((resolve) => proc.once('exit', (code) => resolve(code))),
      send: (msg) => proc.send(msg),
    };
    proc.on('message', (msg) => m.messages.push(msg as FromMember));
    proc.stdout!.on('data', (c) => (m.stderr += c));
    proc.stderr!.on('data', (c) => (m.stderr += c));
    t.teardown(() => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    });
    return m;
  });
}

/** Each member's exit code, once all have exited; members still running after `ms` are killed (code null) and the daemon's view of its groups is logged. */
async function exits(t: Test, d: RunningDaemon, members: Member[], ms = 45_000): Promise<(number | null)[]> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), ms)));
  const all = Promise.all(members.map((m) => m.exited));
  if ((await Promise.race([all, late])) === 'late') {
    t.comment(`members still running after ${ms} ms; the daemon's groups:\n${await debugCommand(d.debugSocket, 'groups', 'ops 10').catch((e: Error) => e.message)}`);
    for (const m of members) if (m.proc.exitCode === null && m.proc.signalCode === null) m.proc.kill('SIGKILL');
  }
  clearTimeout(timer);
  return all;
}

const dones = (m: Member) => m.messages.filter((x): x is Extract<FromMember, { type: 'done' }> => x.type === 'done');
const holding = (m: Member, index: number) => m.messages.some((x) => x.type === 'holding' && x.index === index);

function specs(socket: string, name: string, devices: number[], cases: Case[], seed: number, extra: Partial<MemberSpec>[] = []): MemberSpec[] {
  return devices.map((device, rank) => ({ socket, name, size: devices.length, rank, device, seed, cases, ...extra[rank] }));
}

/** Every collective (in and out of place) × `dtypes`, ops and roots taking turns. */
function groupCases(n: number, dtypes: DType[], count: number): Case[] {
  const cases: Case[] = [];
  let turn = 0;
  for (const c of DATA) {
    for (const dtype of dtypes) {
      for (const inPlace of placements(c)) {
        cases.push({ c, dtype, op: REDUCE_OP_NAMES[turn % REDUCE_OP_NAMES.length], count, root: (turn * 2 + 1) % n, inPlace });
        turn++;
      }
    }
  }
  cases.push({ c: 'barrier', dtype: 'f32', op: 'sum', count: 0, root: 0, inPlace: false });
  return cases;
}

/** Checks what the members reported: every case done on every member without error, the same seq on all, seqs growing. */
function checkGroup(t: Test, what: string, members: Member[], codes: (number | null)[], todo?: string): void {
  const n = members.length;
  const x = (extra: object = {}) => (todo ? { ...extra, todo } : extra);
  const cases = members[0].spec.cases;
  t.same(codes, Array(n).fill(0), `${what}: every member process exited 0`, x({ stderr: members.map((m) => m.stderr.slice(-2000)) }));
  const joined = members.map((m) => m.messages.find((x) => x.type === 'joined'));
  t.same(
    joined.map((j) => (j as { devices: number[] } | undefined)?.devices),
    Array(n).fill(members.map((m) => m.spec.device)),
    `${what}: every member sees the group on devices ${members.map((m) => m.spec.device)}`,
  );
  const bad = members.flatMap((m) => dones(m).filter((x) => x.error || x.mismatches || x.problems.length));
  t.same(bad, [], `${what}: ${cases.length} collectives × ${n} members right`, x());
  const seqs = cases.map((_, i) => members.map((m) => dones(m).find((x) => x.index === i)?.seq));
  t.ok(
    seqs.every((s) => s.every((x) => x !== undefined && x === s[0])),
    `${what}: every member of a collective got its seq`,
    x({ seqs }),
  );
  t.ok(
    seqs.every((s, i) => i === 0 || (s[0] as number) > (seqs[i - 1][0] as number)),
    `${what}: seqs grow in the order the members sent`,
    x(),
  );
}

t.test('groups of 2, 3 and 4 processes (ncclctl group-demo): every collective, in and out of place', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const demos: { size: number; dtype: DType; op: ReduceOp; root: number; count: number }[] = [
    { size: 2, dtype: 'i8', op: 'prod', root: 1, count: 1001 },
    { size: 2, dtype: 'f64', op: 'avg', root: 0, count: 3 },
    { size: 3, dtype: 'bf16', op: 'avg', root: 2, count: 1001 },
    { size: 3, dtype: 'u32', op: 'sum', root: 1, count: 7 },
    { size: 4, dtype: 'u64', op: 'max', root: 3, count: 1001 },
    { size: 4, dtype: 'f16', op: 'min', root: 2, count: 4099 },
  ];
  let seed = SEED + 300_000;
  for (const x of demos) {
    const args = [NCCLCTL, '--socket', d.socket, 'group-demo', '--size', String(x.size), '--count', String(x.count), '--dtype', x.dtype, '--op', x.op, '--root', String(x.root), '--seed', String(++seed)];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (out += c));
    const kill = setTimeout(() => proc.kill('SIGKILL'), 45_000);
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    clearTimeout(kill);
    const what = `group of ${x.size}, ${x.dtype} ${x.op}, root ${x.root}, count ${x.count}`;
    // 12 per member: six data collectives in and out of place (alltoall out of place only), barrier.
    const ok = out.split('\n').filter((l) => /^rank \d+\/\d+: .* ok /.test(l)).length;
    t.equal(code, 0, `${what}: exits 0`, code === 0 ? {} : { out: out.slice(-3000) });
    t.equal(ok, 12 * x.size, `${what}: ${12 * x.size} collectives ok over the members`);
    t.match(out, new RegExp(`: ${12 * x.size} collectives ok over ${x.size} members, no failures`), `${what}: the summary says so`);
  }
});

t.test('groups through the SDK: members on permuted devices and on a subset of a 4-rank world', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const small = (n: number) => groupCases(n, ['f32'], 1).concat(groupCases(n, ['i32'], 0)).map((k, i) => ({ ...k, dtype: (['f32', 'u8', 'i64'] as DType[])[i % 3] }));
  const runs: { what: string; devices: number[]; cases: Case[]; todo?: string }[] = [
    { what: '2 members on devices 1 and 3', devices: [1, 3], cases: groupCases(2, ['i64', 'u32', 'f32', 'bf16'], 1001) },
    { what: '3 members on devices 3, 0, 2', devices: [3, 0, 2], cases: groupCases(3, ['u8', 'f16', 'i32', 'f64'], 1001).concat(small(3)) },
    { what: '4 members on devices 2, 3, 0, 1', devices: [2, 3, 0, 1], cases: groupCases(4, ['i8', 'bf16', 'u64', 'f32'], 1001).concat(small(4)) },
    { what: '1 member on device 2', devices: [2], cases: groupCases(1, ['f16', 'u64'], 1001) },
    {
      what: "2 members on devices 0 and 2, NCCL's in-place layouts named explicitly",
      devices: [0, 2],
      cases: groupCases(2, ['f32', 'i32'], 1001).filter((k) => k.inPlace && k.c !== 'alltoall').map((k) => ({ ...k, explicit: true })),
    },
  ];
  let seed = SEED + 400_000;
  for (const [i, run] of runs.entries()) {
    const members = startMembers(t, specs(d.socket, `sdk-${i}`, run.devices, run.cases, (seed += 1000)));
    checkGroup(t, run.what, members, await exits(t, d, members), run.todo);
  }
  t.equal(JSON.parse((await debugCommand(d.debugSocket, 'format json', 'groups')).trim().split('\n')[1]).result.length, 0, 'every group left: none remains');
});

// Group "left" on devices 0 and 2, group "right" on 3 and 1. Each member stops before chosen
// collectives until told to go on, so that each group is seen to progress while the other has a
// collective waiting in the daemon for a member:
//   1. left runs 0-4; its rank 1 holds before 5 (rank 0 sent 5); right's rank 0 holds before 0.
//   2. right runs 0-19 (left still waits on 5); then right's rank 1 holds before 20.
//   3. left runs 5-24 (right still waits on 20); its rank 1 holds before 25.
//   4. both run to the end at once.
t.test('two groups live at once on disjoint ranks, each progressing while the other waits', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const total = 40;
  const mixed = (dtypes: DType[], count: number): Case[] => {
    const all = groupCases(2, dtypes, count);
    return Array.from({ length: total }, (_, i) => all[(i * 7) % all.length]);
  };
  const left = startMembers(t, specs(d.socket, 'left', [0, 2], mixed(['f32', 'i32', 'bf16'], 1001), SEED + 500_000, [{ waitForGo: true }, { waitForGo: true, holds: [5, 25] }]));
  const right = startMembers(t, specs(d.socket, 'right', [3, 1], mixed(['u8', 'f64', 'u64'], 999), SEED + 600_000, [{ waitForGo: true, holds: [0] }, { waitForGo: true, holds: [20] }]));
  const all = [...left, ...right];
  const failed = () => all.find((m) => m.proc.exitCode !== null && m.proc.exitCode !== 0);
  const wait = (what: string, cond: () => boolean) =>
    until(what, () => {
      const f = failed();
      if (f) throw new Error(`member ${f.spec.name}/${f.spec.rank} exited ${f.proc.exitCode}: ${f.stderr.slice(-2000)}`);
      return cond();
    }, 30_000);
  const groups = async () => {
    const reply = (await debugCommand(d.debugSocket, 'format json', 'groups')).trim().split('\n');
    return JSON.parse(reply[1]).result as { name: string; state: string; collectivesDone: number; waiting: { collective: number; sent: number[]; missing: number[] }[] }[];
  };
  const waitingOn = async (name: string, k: number, sent: number[]) => {
    const g = (await groups()).find((x) => x.name === name);
    return g?.waiting.some((w) => w.collective === k && w.sent.join() === sent.join()) ?? false;
  };
  const doneUpTo = (ms: Member[], last: number) => ms.every((m) => dones(m).some((x) => x.index === last));

  await wait('every member to join', () => all.every((m) => m.messages.some((x) => x.type === 'joined')));
  const live = await groups();
  t.same(live.map((g) => [g.name, g.state]).sort(), [['left', 'live'], ['right', 'live']], 'both groups are formed and live at once');
  all.forEach((m) => m.send({ type: 'go' }));

  // 1.
  await wait('left to wait on collective 5', () => doneUpTo(left, 4) && holding(left[1], 5) && holding(right[0], 0));
  await until('left collective 5 sent by rank 0, right collective 0 by rank 1', async () => (await waitingOn('left', 5, [0])) && (await waitingOn('right', 0, [1])));
  t.equal(dones(left[0]).length, 5, 'left ran 5 collectives, then waits for its rank 1');
  t.equal(dones(right[0]).length, 0, 'right has run none: it waits for its rank 0');

  // 2.
  right[0].send({ type: 'release', index: 0 });
  await wait('right to run 0-19', () => doneUpTo(right, 19) && holding(right[1], 20));
  await until('right collective 20 sent by rank 0', () => waitingOn('right', 20, [0]));
  t.ok(await waitingOn('left', 5, [0]), 'left still waits on collective 5 for its rank 1');
  t.equal(dones(left[0]).length, 5, 'right ran 20 collectives while left waited');

  // 3.
  left[1].send({ type: 'release', index: 5 });
  await wait('left to run 5-24', () => doneUpTo(left, 24) && holding(left[1], 25));
  t.ok(await waitingOn('right', 20, [0]), 'right still waits on collective 20 for its rank 1');
  t.equal(dones(right[0]).length, 20, 'left ran 20 more collectives while right waited');

  // 4.
  left[1].send({ type: 'release', index: 25 });
  right[1].send({ type: 'release', index: 20 });
  const codes = await exits(t, d, all);
  checkGroup(t, 'left (devices 0, 2)', left, codes.slice(0, 2));
  checkGroup(t, 'right (devices 3, 1)', right, codes.slice(2));

  // The seqs show the phases: one global order, in which each group's run sits between the other's.
  const seqOf = (ms: Member[], i: number) => dones(ms[0]).find((x) => x.index === i)!.seq!;
  t.ok(seqOf(left, 4) < seqOf(right, 0), "left's first 5 ran before any of right's");
  t.ok(seqOf(right, 19) < seqOf(left, 5), "right's first 20 ran while left's collective 5 waited");
  t.ok(seqOf(left, 24) < seqOf(right, 20), "left's 5-24 ran while right's collective 20 waited");
  const tail = [...Array.from({ length: 15 }, (_, i) => ({ g: 'l', s: seqOf(left, 25 + i) })), ...Array.from({ length: 20 }, (_, i) => ({ g: 'r', s: seqOf(right, 20 + i) }))].sort((a, b) => a.s - b.s);
  const switches = tail.filter((x, i) => i > 0 && x.g !== tail[i - 1].g).length;
  t.comment(`phase 4, both free: the two groups' collectives alternated ${switches} times in seq order`);
});
