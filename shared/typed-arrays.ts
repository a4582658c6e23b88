// The JavaScript typed array for each dtype. Node 20 has no Float16Array: f16 and bf16 are raw
// 16-bit words (shared/half.ts converts them).
import type { DType } from './dtypes.js';

export const TYPED_ARRAYS = {
  i8: Int8Array,
  u8: Uint8Array,
  i32: Int32Array,
  u32: Uint32Array,
  i64: BigInt64Array,
  u64: BigUint64Array,
  f16: Uint16Array,
  bf16: Uint16Array,
  f32: Float32Array,
  f64: Float64Array,
} as const;

export type ViewOf<T extends DType> = InstanceType<(typeof TYPED_ARRAYS)[T]>;

/** A typed array of `count` elements of `dtype` in ordinary memory (e.g. to stage GPU copies). */
export function typedArray<T extends DType>(dtype: T, count: number): ViewOf<T> {
  const Ctor = TYPED_ARRAYS[dtype] as unknown as new (n: number) => ViewOf<T>;
  return new Ctor(count);
}

/** A typed view of `count` elements of `dtype` over `buffer` from `byteOffset`. */
export function typedView<T extends DType>(dtype: T, buffer: ArrayBuffer, byteOffset: number, count: number): ViewOf<T> {
  const Ctor = TYPED_ARRAYS[dtype] as unknown as new (b: ArrayBuffer, o: number, n: number) => ViewOf<T>;
  return new Ctor(buffer, byteOffset, count);
}
