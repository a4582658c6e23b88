// Random inputs for a collective and the check of its result against a float64 reference, within
// the error the dtype and op justify. Shared by `ncclctl --verify` and the tests.
import { DTYPES, type DType, type ReduceOp } from '../shared/dtypes.js';
import { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from '../shared/half.js';
import { REDUCING, collectiveElements, type CollectiveName } from '../shared/protocol.js';

type AnyView = ArrayLike<number | bigint> & { [i: number]: number | bigint; length: number };

/** Values as float64, from any typed view of `dtype`. */
export function toNumbers(view: AnyView, dtype: DType): Float64Array {
  const out = new Float64Array(view.length);
  for (let i = 0; i < view.length; i++) {
    const v = view[i];
    out[i] = dtype === 'f16' ? f16ToNumber(v as number) : dtype === 'bf16' ? bf16ToNumber(v as number) : Number(v);
  }
  return out;
}

/** Writes float64 values (already representable in `dtype`) into a typed view of it. */
export function fromNumbers(view: AnyView, dtype: DType, values: Float64Array): void {
  const big = dtype === 'i64' || dtype === 'u64';
  for (let i = 0; i < values.length; i++) {
    const x = values[i];
    view[i] = big ? BigInt(x) : dtype === 'f16' ? numberToF16(x) : dtype === 'bf16' ? numberToBf16(x) : x;
  }
}

/** Rounds x to the nearest value of dtype, so the reference starts from the inputs the ranks see. */
function representable(x: number, dtype: DType): number {
  switch (dtype) {
    case 'f16':
      return f16ToNumber(numberToF16(x));
    case 'bf16':
      return bf16ToNumber(numberToBf16(x));
    case 'f32':
      return Math.fround(x);
    default:
      return x;
  }
}

/** A seedable generator of floats in [0, 1) (mulberry32): fast and repeatable for test data. */
export function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function intRange(dtype: DType, op: ReduceOp, n: number): [number, number] {
  const info = DTYPES[dtype];
  // 64-bit integers are checked through float64, which is exact only below 2^53.
  const maxPos = info.bytes === 8 ? 2 ** 53 - 1 : info.kind === 'int' ? 2 ** (info.bytes * 8 - 1) - 1 : 2 ** (info.bytes * 8) - 1;
  const signed = info.kind === 'int';
  let bound: number;
  if (op === 'sum' || op === 'avg') bound = Math.floor(maxPos / n);
  else if (op === 'prod') bound = Math.max(1, Math.floor(maxPos ** (1 / n) + 1e-9));
  else bound = maxPos;
  return signed ? [-bound, bound] : [0, bound];
}

/** Random inputs, one Float64Array per rank, each value exactly representable in dtype. */
export function randomInputs(dtype: DType, op: ReduceOp, nranks: number, count: number, seed = 1): Float64Array[] {
  const next = rng(seed);
  const info = DTYPES[dtype];
  const out: Float64Array[] = [];
  for (let r = 0; r < nranks; r++) {
    const v = new Float64Array(count);
    if (info.kind === 'float') {
      for (let i = 0; i < count; i++) {
        const u = next();
        const x = op === 'prod' ? (0.5 + 1.5 * next()) * (u < 0.5 ? -1 : 1) : op === 'max' || op === 'min' ? (u * 2 - 1) * 100 : u * 2 - 1;
        v[i] = representable(x, dtype);
      }
    } else {
      const [lo, hi] = intRange(dtype, op, nranks);
      const span = hi - lo + 1;
      for (let i = 0; i < count; i++) v[i] = lo + Math.floor(next() * span);
    }
    out.push(v);
  }
  return out;
}

export interface Reference {
  expected: Float64Array;
  /** Largest error allowed per element (0 where the result must be exact). */
  allowed: Float64Array;
}

/** The float64 reference of an AllReduce and the error each element may carry. */
export function reference(inputs: Float64Array[], dtype: DType, op: ReduceOp): Reference {
  const n = inputs.length;
  const count = inputs[0]?.length ?? 0;
  const info = DTYPES[dtype];
  const expected = new Float64Array(count);
  const allowed = new Float64Array(count);
  const float = info.kind === 'float';
  // Unit roundoff of the dtype, and its smallest subnormal as an absolute floor.
  const u = float ? 2 ** -info.precision : 0;
  const tiny = dtype === 'f16' ? 2 ** -24 : dtype === 'bf16' ? 2 ** -133 : dtype === 'f32' ? 2 ** -149 : 0;
  for (let i = 0; i < count; i++) {
    let acc = inputs[0][i];
    let mag = Math.abs(acc);
    for (let r = 1; r < n; r++) {
      const x = inputs[r][i];
      mag += Math.abs(x);
      if (op === 'sum' || op === 'avg') acc += x;
      else if (op === 'prod') acc *= x;
      else if (op === 'max') acc = Math.max(acc, x);
      else acc = Math.min(acc, x);
    }
    if (op === 'avg') acc = float ? acc / n : Math.trunc(acc / n);
    expected[i] = acc;
    if (!float || op === 'max' || op === 'min') continue;
    // Each of the n-1 combining steps (and the final rounding, and avg's scaling) may add one
    // rounding error of the running value; bound each by u times the sum of magnitudes.
    if (op === 'prod') allowed[i] = 2 * (n + 1) * u * Math.abs(acc) + tiny;
    else if (op === 'sum') allowed[i] = 2 * (n + 1) * u * mag + tiny;
    else allowed[i] = (2 * (n + 2) * u * mag) / n + tiny;
  }
  return { expected, allowed };
}

/** Random inputs for `c`: one send buffer's worth per rank (full-range values where nothing is reduced). */
export function collectiveInputs(c: CollectiveName, dtype: DType, op: ReduceOp, nranks: number, count: number, seed = 1): Float64Array[] {
  return randomInputs(dtype, REDUCING.has(c) ? op : 'max', nranks, collectiveElements(c, count, nranks).send, seed);
}

export interface CollectiveCase {
  dtype: DType;
  /** Reductions only. */
  op?: ReduceOp;
  count: number;
  /** broadcast and reduce. */
  root?: number;
  inPlace?: boolean;
}

const exact = (expected: Float64Array): Reference => ({ expected, allowed: new Float64Array(expected.length) });

/**
 * What each rank's receive buffer holds after `c` (docs/protocol.md's table), given each rank's
 * send buffer: exact where elements are only moved, reference()'s tolerance where reduced. In
 * place, it is the result region of the rank's one buffer (see inPlaceOffsets). null: the buffer
 * is left as it was (reduce, out of place, every rank but the root; and barrier).
 */
export function collectiveReference(c: CollectiveName, inputs: Float64Array[], k: CollectiveCase): (Reference | null)[] {
  const { dtype, op = 'sum', count, root = 0 } = k;
  const n = inputs.length;
  const block = (v: Float64Array, j: number) => v.subarray(j * count, (j + 1) * count);
  switch (c) {
    case 'allreduce': {
      const ref = reference(inputs, dtype, op);
      return inputs.map(() => ref);
    }
    case 'broadcast':
      return inputs.map(() => exact(inputs[root]));
    case 'reduce': {
      const ref = reference(inputs, dtype, op);
      // In place, a rank other than the root still holds its own input.
      return inputs.map((v, r) => (r === root ? ref : k.inPlace ? exact(v) : null));
    }
    case 'allgather': {
      const all = new Float64Array(count * n);
      inputs.forEach((v, r) => all.set(v, r * count));
      return inputs.map(() => exact(all));
    }
    case 'reducescatter':
      return inputs.map((_, r) =>
        reference(
          inputs.map((v) => block(v, r)),
          dtype,
          op,
        ),
      );
    case 'alltoall':
      return inputs.map((_, r) => {
        const out = new Float64Array(count * n);
        inputs.forEach((v, j) => out.set(block(v, r), j * count));
        return exact(out);
      });
    case 'barrier':
      return inputs.map(() => null);
  }
}

/**
 * Where rank `rank`'s input and result start, in elements, in its one buffer when `c` runs in
 * place: NCCL puts allgather's input, and reducescatter's result, in the rank's own block.
 */
export function inPlaceOffsets(c: CollectiveName, count: number, rank: number): { input: number; result: number } {
  return { input: c === 'allgather' ? rank * count : 0, result: c === 'reducescatter' ? rank * count : 0 };
}

export interface Mismatch {
  rank: number;
  index: number;
  got: number;
  expected: number;
  allowed: number;
}

/** Compares one rank's result with the reference; returns the first few mismatches. */
export function compare(got: Float64Array, ref: Reference, rank: number, limit = 5): { mismatches: number; first: Mismatch[]; maxError: number } {
  let mismatches = 0;
  let maxError = 0;
  const first: Mismatch[] = [];
  for (let i = 0; i < got.length; i++) {
    const e = ref.expected[i];
    const g = got[i];
    const err = Math.abs(g - e);
    if (err > maxError) maxError = err;
    if (!(err <= ref.allowed[i])) {
      mismatches++;
      if (first.length < limit) first.push({ rank, index: i, got: g, expected: e, allowed: ref.allowed[i] });
    }
  }
  return { mismatches, first, maxError };
}
