// Data types and reduction ops, numbered exactly as NCCL numbers ncclDataType_t and ncclRedOp_t,
// so the GPU backend passes them through and the host backend's kernels share one table.

export type DType = 'i8' | 'u8' | 'i32' | 'u32' | 'i64' | 'u64' | 'f16' | 'f32' | 'f64' | 'bf16';
export type ReduceOp = 'sum' | 'prod' | 'max' | 'min' | 'avg';

export interface DTypeInfo {
  readonly name: DType;
  /** ncclDataType_t */
  readonly nccl: number;
  readonly bytes: number;
  readonly kind: 'int' | 'uint' | 'float';
  /** Significand bits including the implicit one, for floats; value bits for integers. */
  readonly precision: number;
}

export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  i8: { name: 'i8', nccl: 0, bytes: 1, kind: 'int', precision: 7 },
  u8: { name: 'u8', nccl: 1, bytes: 1, kind: 'uint', precision: 8 },
  i32: { name: 'i32', nccl: 2, bytes: 4, kind: 'int', precision: 31 },
  u32: { name: 'u32', nccl: 3, bytes: 4, kind: 'uint', precision: 32 },
  i64: { name: 'i64', nccl: 4, bytes: 8, kind: 'int', precision: 63 },
  u64: { name: 'u64', nccl: 5, bytes: 8, kind: 'uint', precision: 64 },
  f16: { name: 'f16', nccl: 6, bytes: 2, kind: 'float', precision: 11 },
  f32: { name: 'f32', nccl: 7, bytes: 4, kind: 'float', precision: 24 },
  f64: { name: 'f64', nccl: 8, bytes: 8, kind: 'float', precision: 53 },
  bf16: { name: 'bf16', nccl: 9, bytes: 2, kind: 'float', precision: 8 },
};

/** ncclRedOp_t */
export const REDUCE_OPS: Readonly<Record<ReduceOp, number>> = {
  sum: 0,
  prod: 1,
  max: 2,
  min: 3,
  avg: 4,
};

export const DTYPE_NAMES = Object.keys(DTYPES) as DType[];
export const REDUCE_OP_NAMES = Object.keys(REDUCE_OPS) as ReduceOp[];

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && Object.hasOwn(DTYPES, x);
}

export function isReduceOp(x: unknown): x is ReduceOp {
  return typeof x === 'string' && Object.hasOwn(REDUCE_OPS, x);
}
