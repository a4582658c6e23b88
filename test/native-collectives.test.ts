// The host backend's collective kernels (native/host_collectives.h) through the addon's
// hostCollective test hook: every rank's share runs on a thread of its own over JS memory, and
// every receive buffer is checked against a float64 reference (exact where it must be).
import t from 'tap';
import { native } from '../dist/shared/native.js';
import { ErrorCodes } from '../dist/shared/errors.js';
import { DTYPES, DTYPE_NAMES, REDUCE_OPS, REDUCE_OP_NAMES, type DType, type ReduceOp } from '../dist/shared/dtypes.js';
import { typedView } from '../dist/shared/typed-arrays.js';
import { collectiveElements } from '../dist/shared/protocol.js';
import { compare, fromNumbers, randomInputs, reference, rng, toNumbers, type Reference } from '../dist/client/verify.js';

const KINDS = { allreduce: 0, broadcast: 1, reduce: 2, allgather: 3, reducescatter: 4, alltoall: 5, barrier: 6 } as const;
type Kind = keyof typeof KINDS;
const DATA_KINDS = ['allreduce', 'broadcast', 'reduce', 'allgather', 'reducescatter', 'alltoall'] as const;
const REDUCING = new Set<Kind>(['allreduce', 'reduce', 'reducescatter']);
const NRANKS = [1, 2, 3, 4];
// Not multiples of the rank counts, nor of a cache line's worth of any dtype.
const COUNTS = [1, 7, 1000, 4099];
const SENTINEL = 0xa5;

/** Elements of each rank's send and receive buffer, by NCCL's conventions. */
const sizes = (kind: Kind, count: number, n: number) => collectiveElements(kind, count, n);

const view = (bytes: Uint8Array, dtype: DType) =>
  typedView(dtype, bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / DTYPES[dtype].bytes);

interface Buffers {
  sends: Uint8Array[];
  recvs: Uint8Array[];
}

/**
 * One send and one receive buffer per rank, the sends holding `inputs`. In place, each rank's
 * pair is NCCL's: the same memory, or the rank's chunk of the larger one.
 */
function allocate(kind: Kind, dtype: DType, count: number, inputs: Float64Array[], inPlace: boolean): Buffers {
  const n = inputs.length;
  const elem = DTYPES[dtype].bytes;
  const { send, recv } = sizes(kind, count, n);
  const chunk = (big: Uint8Array, i: number) => big.subarray(i * count * elem, (i + 1) * count * elem);
  const sends: Uint8Array[] = [];
  const recvs: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    let s: Uint8Array;
    let r: Uint8Array;
    if (!inPlace) {
      s = new Uint8Array(send * elem);
      r = new Uint8Array(recv * elem).fill(SENTINEL);
    } else if (kind === 'allgather') {
      r = new Uint8Array(recv * elem).fill(SENTINEL);
      s = chunk(r, i);
    } else if (kind === 'reducescatter') {
      s = new Uint8Array(send * elem);
      r = chunk(s, i);
    } else {
      s = r = new Uint8Array(send * elem);
    }
    fromNumbers(view(s, dtype), dtype, inputs[i]);
    sends.push(s);
    recvs.push(r);
  }
  return { sends, recvs };
}

const exact = (expected: Float64Array): Reference => ({ expected, allowed: new Float64Array(expected.length) });

/** What each rank's receive buffer must hold; null: left as it was. */
function expectations(kind: Kind, dtype: DType, op: ReduceOp, count: number, root: number, inputs: Float64Array[]) {
  const n = inputs.length;
  const chunk = (v: Float64Array, j: number) => v.subarray(j * count, (j + 1) * count);
  switch (kind) {
    case 'allreduce': {
      const r = reference(inputs, dtype, op);
      return inputs.map(() => r);
    }
    case 'broadcast':
      return inputs.map(() => exact(inputs[root]));
    case 'reduce': {
      const r = reference(inputs, dtype, op);
      return inputs.map((_, j) => (j === root ? r : null));
    }
    case 'allgather': {
      const all = new Float64Array(count * n);
      inputs.forEach((v, i) => all.set(v, i * count));
      return inputs.map(() => exact(all));
    }
    case 'reducescatter':
      return inputs.map((_, j) =>
        reference(
          inputs.map((v) => chunk(v, j)),
          dtype,
          op,
        ),
      );
    default: {
      // alltoall
      return inputs.map((_, j) => {
        const out = new Float64Array(count * n);
        inputs.forEach((v, i) => out.set(chunk(v, j), i * count));
        return exact(out);
      });
    }
  }
}

function run(kind: Kind, dtype: DType, op: ReduceOp, count: number, root: number, b: Buffers, ranks?: number[]) {
  native.hostCollective(KINDS[kind], DTYPES[dtype].nccl, REDUCE_OPS[op], count, root, b.sends, b.recvs, ranks);
}

/** Runs one case and returns what is wrong with it (empty when nothing is). */
function check(kind: Kind, dtype: DType, op: ReduceOp, n: number, count: number, inPlace: boolean, seed: number) {
  const root = count % n;
  const inputs = randomInputs(dtype, REDUCING.has(kind) ? op : 'max', n, sizes(kind, count, n).send, seed);
  const want = expectations(kind, dtype, op, count, root, inputs);
  const b = allocate(kind, dtype, count, inputs, inPlace);
  const before = b.recvs.map((r) => r.slice());
  run(kind, dtype, op, count, root, b);
  const problems: string[] = [];
  const where = `${kind} ${dtype} ${op} n=${n} count=${count}${inPlace ? ' in place' : ''}`;
  b.recvs.forEach((recv, j) => {
    const ref = want[j];
    if (ref === null) {
      if (Buffer.compare(recv, before[j]) !== 0) problems.push(`${where}: rank ${j}'s receive buffer was touched`);
      return;
    }
    const res = compare(toNumbers(view(recv, dtype), dtype), ref, j, 2);
    if (res.mismatches) problems.push(`${where}: rank ${j}: ${res.mismatches} wrong: ${JSON.stringify(res.first)}`);
  });
  return { problems, recvs: b.recvs, written: want.map((w) => w !== null) };
}

for (const kind of DATA_KINDS) {
  const ops: ReduceOp[] = REDUCING.has(kind) ? REDUCE_OP_NAMES : ['sum'];
  // AllToAll has no in-place form.
  const placements = kind === 'alltoall' ? [false] : [false, true];
  const what = `every dtype${ops.length > 1 ? ' and op' : ''}, 1-4 ranks, ${placements.length > 1 ? 'in and ' : ''}out of place`;
  t.test(`${kind}: ${what}`, async (t) => {
    let seed = 1;
    let cases = 0;
    for (const dtype of DTYPE_NAMES) {
      const problems: string[] = [];
      for (const op of ops) {
        for (const n of NRANKS) {
          for (const count of COUNTS) {
            seed++;
            const results = placements.map((inPlace) => check(kind, dtype, op, n, count, inPlace, seed));
            for (const r of results) problems.push(...r.problems);
            cases += results.length;
            // Same inputs (same seed): in place must give the very bits out of place does.
            const [out, inPlace] = results;
            if (inPlace && out.recvs.some((r, j) => out.written[j] && Buffer.compare(r, inPlace.recvs[j]) !== 0)) {
              problems.push(`${kind} ${dtype} ${op} n=${n} count=${count}: in place differs from out of place`);
            }
          }
        }
      }
      t.same(problems.slice(0, 5), [], `${dtype}: every receive buffer as NCCL defines it`);
    }
    t.comment(`${cases} collectives checked`);
  });
}

t.test('reduce and reducescatter compute the very bits allreduce does', async (t) => {
  const problems: string[] = [];
  for (const dtype of DTYPE_NAMES) {
    for (const op of REDUCE_OP_NAMES) {
      const n = 3;
      const count = 1000;
      const inputs = randomInputs(dtype, op, n, count * n, 7);
      // reducescatter's chunk j is an allreduce (and a reduce) of count elements.
      const rs = allocate('reducescatter', dtype, count, inputs, false);
      run('reducescatter', dtype, op, count, 0, rs);
      for (let j = 0; j < n; j++) {
        const chunkInputs = inputs.map((v) => v.subarray(j * count, (j + 1) * count));
        const ar = allocate('allreduce', dtype, count, chunkInputs, true);
        run('allreduce', dtype, op, count, 0, ar);
        const red = allocate('reduce', dtype, count, chunkInputs, false);
        run('reduce', dtype, op, count, j, red);
        if (Buffer.compare(ar.recvs[0], rs.recvs[j]) !== 0) problems.push(`${dtype} ${op}: reducescatter chunk ${j}`);
        if (Buffer.compare(ar.recvs[0], red.recvs[j]) !== 0) problems.push(`${dtype} ${op}: reduce to root ${j}`);
      }
    }
  }
  t.same(problems, []);
});

// Integer sums and products wrap modulo 2^bits; avg divides the wrapped sum, truncating toward
// zero. Full-range inputs (random bytes) against a BigInt reference.
t.test('integers wrap around: full-range sum, prod and avg against BigInt', async (t) => {
  const ints = DTYPE_NAMES.filter((d) => DTYPES[d].kind !== 'float');
  const next = rng(99);
  const problems: string[] = [];
  for (const dtype of ints) {
    const bits = DTYPES[dtype].bytes * 8;
    const signed = DTYPES[dtype].kind === 'int';
    const norm = (x: bigint) => (signed ? BigInt.asIntN(bits, x) : BigInt.asUintN(bits, x));
    const read = (bytes: Uint8Array) => Array.from(view(bytes, dtype) as ArrayLike<number | bigint>, (v) => BigInt(v));
    for (const op of ['sum', 'prod', 'avg'] as ReduceOp[]) {
      const fold = (xs: bigint[]) => {
        let acc = op === 'prod' ? 1n : 0n;
        for (const x of xs) acc = norm(op === 'prod' ? acc * x : acc + x);
        return op === 'avg' ? norm(acc / BigInt(xs.length)) : acc; // BigInt division truncates toward zero
      };
      for (const n of [2, 3, 4]) {
        for (const kind of ['allreduce', 'reduce', 'reducescatter'] as Kind[]) {
          for (const inPlace of [false, true]) {
            const count = 1000;
            const root = n - 1;
            const { send } = sizes(kind, count, n);
            const b = allocate(kind, dtype, count, Array.from({ length: n }, () => new Float64Array(send)), inPlace);
            for (const s of b.sends) for (let i = 0; i < s.length; i++) s[i] = Math.floor(next() * 256);
            const inputs = b.sends.map(read);
            run(kind, dtype, op, count, root, b);
            b.recvs.forEach((recv, j) => {
              if (kind === 'reduce' && j !== root) return;
              const offset = kind === 'reducescatter' ? j * count : 0;
              const got = read(recv);
              let bad = 0;
              for (let k = 0; k < count; k++) if (got[k] !== fold(inputs.map((v) => v[offset + k]))) bad++;
              if (bad) problems.push(`${kind} ${dtype} ${op} n=${n}${inPlace ? ' in place' : ''}: rank ${j}: ${bad} wrong`);
            });
          }
        }
      }
    }
  }
  t.same(problems, []);
});

// If one share read what another writes, running them one after another would give a result
// that depends on their order.
t.test('in place, shares run one at a time in any order give the threaded result', async (t) => {
  const problems: string[] = [];
  for (const kind of DATA_KINDS.filter((k) => k !== 'alltoall')) {
    for (const dtype of ['i8', 'f16', 'f32', 'f64'] as DType[]) {
      for (const n of [2, 3, 4]) {
        for (const count of COUNTS) {
          const inputs = randomInputs(dtype, 'sum', n, sizes(kind, count, n).send, count + n);
          const all = Array.from({ length: n }, (_, i) => i);
          const results = [undefined, all, all.slice().reverse(), [1, 0, ...all.slice(2)]].map((order) => {
            const b = allocate(kind, dtype, count, inputs, true);
            run(kind, dtype, 'sum', count, count % n, b, order);
            return b.recvs;
          });
          for (const [o, recvs] of results.entries()) {
            if (recvs.some((r, j) => Buffer.compare(r, results[0][j]) !== 0)) {
              problems.push(`${kind} ${dtype} n=${n} count=${count}: order ${o} differs`);
            }
          }
        }
      }
    }
  }
  t.same(problems, []);
});

// A byte a share writes holds the same value whatever the receive buffer held before; one it
// leaves alone does not. Two runs over different fills tell them apart.
t.test('shares write 64-byte lines of their own, and together every receive byte', async (t) => {
  const problems: string[] = [];
  for (const kind of DATA_KINDS) {
    for (const dtype of ['i8', 'f16', 'f32', 'f64'] as DType[]) {
      for (const n of [2, 3, 4]) {
        for (const count of [7, 100, 1000, 4099]) {
          const root = count % n;
          const inputs = randomInputs(dtype, 'sum', n, sizes(kind, count, n).send, count);
          const owner = new Map<string, number>(); // "buffer:line" → rank
          const written = Array.from({ length: n }, () => 0);
          for (let rank = 0; rank < n; rank++) {
            const fills = [0x00, 0xff].map((fill) => {
              const b = allocate(kind, dtype, count, inputs, false);
              for (const r of b.recvs) r.fill(fill);
              run(kind, dtype, 'sum', count, root, b, [rank]);
              return b.recvs;
            });
            fills[0].forEach((r, j) => {
              for (let i = 0; i < r.length; i++) {
                if (r[i] !== fills[1][j][i]) continue;
                written[j]++;
                const key = `${j}:${Math.floor(i / 64)}`;
                const other = owner.get(key);
                if (other !== undefined && other !== rank) {
                  problems.push(`${kind} ${dtype} n=${n} count=${count}: ranks ${other} and ${rank} write line ${key}`);
                }
                owner.set(key, rank);
              }
            });
          }
          const elem = DTYPES[dtype].bytes;
          const want = (j: number) => (kind === 'reduce' && j !== root ? 0 : sizes(kind, count, n).recv * elem);
          written.forEach((w, j) => {
            if (w !== want(j)) {
              problems.push(`${kind} ${dtype} n=${n} count=${count}: rank ${j}: ${w} bytes written, want ${want(j)}`);
            }
          });
        }
      }
    }
  }
  t.same(problems.slice(0, 10), []);
});

t.test('barrier: no data, nothing to do', async (t) => {
  const empty = () => [new ArrayBuffer(0), new ArrayBuffer(0)];
  t.doesNotThrow(() => native.hostCollective(KINDS.barrier, 0, 0, 0, 0, empty(), empty()));
  const b = [new Uint8Array(8).fill(7)];
  native.hostCollective(KINDS.barrier, DTYPES.f64.nccl, 0, 1, 0, b, b);
  t.same([...b[0]], Array(8).fill(7), 'buffers untouched');
});

t.test('ArrayBuffers work as buffers too', async (t) => {
  const sends = [Float32Array.of(1, 2, 3).buffer, Float32Array.of(10, 20, 30).buffer];
  const recvs = [new ArrayBuffer(24), new ArrayBuffer(24)];
  native.hostCollective(KINDS.allgather, DTYPES.f32.nccl, 0, 3, 0, sends, recvs);
  for (const r of recvs) t.same([...new Float32Array(r)], [1, 2, 3, 10, 20, 30]);
});

t.test('bad arguments throw coded errors and touch nothing', async (t) => {
  const f32 = DTYPES.f32.nccl;
  const two = () => [new Uint8Array(64), new Uint8Array(64)];
  const recvs = two();
  const call =
    (...args: Parameters<typeof native.hostCollective>) =>
    () =>
      native.hostCollective(...args);
  const notBytes = new Float32Array(16) as unknown as Uint8Array;
  const invalid: [string, () => void][] = [
    ['kind 7', call(7, f32, 0, 4, 0, two(), recvs)],
    ['kind -1', call(-1, f32, 0, 4, 0, two(), recvs)],
    ['dtype 10', call(0, 10, 0, 4, 0, two(), recvs)],
    ['op 5', call(0, f32, 5, 4, 0, two(), recvs)],
    ['count 1.5', call(0, f32, 0, 1.5, 0, two(), recvs)],
    ['count -1', call(0, f32, 0, -1, 0, two(), recvs)],
    ['root 2 of 2', call(KINDS.broadcast, f32, 0, 4, 2, two(), recvs)],
    ['no buffers', call(0, f32, 0, 4, 0, [], [])],
    ['one send for two recvs', call(0, f32, 0, 4, 0, [new Uint8Array(64)], recvs)],
    ['a Float32Array as buffer', call(0, f32, 0, 4, 0, [notBytes, new Uint8Array(64)], recvs)],
    ['ranks with a duplicate', call(0, f32, 0, 4, 0, two(), recvs, [0, 0])],
    ['ranks out of range', call(0, f32, 0, 4, 0, two(), recvs, [2])],
  ];
  for (const [what, f] of invalid) t.throws(f, { code: ErrorCodes.INVALID_ARG }, what);
  t.throws(call(0, f32, 0, 17, 0, two(), recvs), { code: ErrorCodes.BUFFER_TOO_SMALL }, 'count × 4 > 64 bytes');
  t.throws(call(KINDS.allgather, f32, 0, 9, 0, two(), recvs), { code: ErrorCodes.BUFFER_TOO_SMALL }, 'allgather: count × nranks');
  const big = new Uint8Array(68);
  const misaligned = [big.subarray(1, 17), big.subarray(33, 49)];
  t.throws(call(0, f32, 0, 4, 0, misaligned, recvs), { code: ErrorCodes.BAD_ALIGNMENT }, 'f32 at byte offset 1');
  const OVERLAP = { code: ErrorCodes.BUFFER_OVERLAP };
  // AllToAll has no in-place form: its shares would overwrite what others still read.
  const same = two();
  t.throws(call(KINDS.alltoall, f32, 0, 8, 0, same, same), OVERLAP, 'alltoall in place');
  t.throws(call(0, f32, 0, 4, 0, two(), [big.subarray(0, 16), big.subarray(8, 24)]), OVERLAP, 'receive buffers overlap');
  // Rank 1's in-place address handed to rank 0.
  const r = new Uint8Array(32);
  const gather = call(KINDS.allgather, f32, 0, 4, 0, [r.subarray(16, 32), new Uint8Array(16)], [r, new Uint8Array(32)]);
  t.throws(gather, OVERLAP, 'allgather send inside recv, not at its in-place offset');
  t.same([...recvs[0], ...recvs[1]], Array(128).fill(0), 'no receive buffer written');
});
