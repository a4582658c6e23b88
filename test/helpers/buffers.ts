// Runs one AllReduce on fresh HostBuffers with random data and checks every rank's result.
import { HostBuffer, type Client, type DType, type ReduceOp } from '../../dist/client/index.js';
import { compare, fromNumbers, randomInputs, reference, toNumbers } from '../../dist/client/verify.js';
import { DTYPES } from '../../dist/shared/dtypes.js';

export interface CheckedRun {
  mismatches: number;
  first: unknown[];
  seq: number;
}

export function allocFilled(n: number, dtype: DType, op: ReduceOp, count: number, seed: number) {
  const inputs = randomInputs(dtype, op, n, count, seed);
  const buffers = inputs.map((vals) => {
    const b = HostBuffer.alloc(Math.max(1, count * DTYPES[dtype].bytes));
    fromNumbers(b.view(dtype, 0, count), dtype, vals);
    return b;
  });
  return { inputs, buffers };
}

export function check(buffers: HostBuffer[], inputs: Float64Array[], dtype: DType, op: ReduceOp, count: number) {
  const ref = reference(inputs, dtype, op);
  let mismatches = 0;
  const first: unknown[] = [];
  buffers.forEach((b, r) => {
    const res = compare(toNumbers(b.view(dtype, 0, count), dtype), ref, r, 3);
    mismatches += res.mismatches;
    first.push(...res.first);
  });
  return { mismatches, first };
}

export async function checkedAllReduce(
  client: Client,
  dtype: DType,
  op: ReduceOp,
  count: number,
  seed: number,
  opts: { timeoutMs?: number } = {},
): Promise<CheckedRun> {
  const { inputs, buffers } = allocFilled(client.worldSize, dtype, op, count, seed);
  try {
    const { seq } = await client.allReduce({ buffers, dtype, op, count, ...opts });
    return { ...check(buffers, inputs, dtype, op, count), seq };
  } finally {
    await client.release(buffers).catch(() => {});
    for (const b of buffers) b.free();
  }
}
