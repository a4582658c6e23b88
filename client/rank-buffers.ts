// One buffer per rank, of the kind the daemon's backend takes (shared memory on the host backend,
// GPU memory on rank i's device on the nccl backend), with values in and out as float64, laid
// out for a collective and checked against verify.ts's references.
import { DTYPES, type DType } from '../shared/dtypes.js';
import { typedArray } from '../shared/typed-arrays.js';
import type { Client } from './client.js';
import { DeviceBuffer } from './device-buffer.js';
import { HostBuffer } from './host-buffer.js';
import type { CollectiveName } from '../shared/protocol.js';
import { compare, fromNumbers, inPlaceOffsets, toNumbers, type CollectiveCase, type Reference } from './verify.js';

export type RankBuffer = HostBuffer | DeviceBuffer;

/**
 * Allocates and registers one buffer per rank. The daemon's GPU numbering is taken to be ours:
 * run with the same CUDA_VISIBLE_DEVICES (the hello's deviceUuids tell when it is not).
 */
export async function allocRankBuffers(client: Client, bytes: number): Promise<RankBuffer[]> {
  const buffers = client.server.devices.map((_, rank) => allocBuffer(client, rank, bytes));
  await Promise.all(buffers.map((b) => client.register(b)));
  return buffers;
}

/** One buffer for world rank `rank`: shared memory, or GPU memory on that rank's device. */
export function allocBuffer(client: Client, rank: number, bytes: number): RankBuffer {
  const device = client.server.devices[rank];
  return device === null ? HostBuffer.alloc(bytes) : DeviceBuffer.alloc(device, bytes);
}

/** Releases every buffer from the daemon, then frees it (DeviceBuffer.free releases by itself). */
export async function freeRankBuffers(client: Client, buffers: RankBuffer[]): Promise<void> {
  const host = buffers.filter((b): b is HostBuffer => b instanceof HostBuffer);
  if (host.length > 0) await client.release(host).catch(() => {});
  for (const b of buffers) await b.free();
}

/** Writes `count` values from element `at` on. */
export function writeValues(b: RankBuffer, dtype: DType, count: number, values: Float64Array, at = 0): void {
  const byteOffset = at * DTYPES[dtype].bytes;
  if (b instanceof HostBuffer) return fromNumbers(b.view(dtype, byteOffset, count), dtype, values);
  const staging = typedArray(dtype, count);
  fromNumbers(staging, dtype, values);
  b.write(staging, byteOffset);
}

/** Reads `count` values from element `at` on. */
export function readValues(b: RankBuffer, dtype: DType, count: number, at = 0): Float64Array {
  const byteOffset = at * DTYPES[dtype].bytes;
  return toNumbers(b instanceof HostBuffer ? b.view(dtype, byteOffset, count) : b.read(typedArray(dtype, count), byteOffset), dtype);
}

/** A rank's buffers for a collective: its send buffer, and its receive buffer unless in place. */
export interface RankPair {
  send: RankBuffer;
  recv?: RankBuffer;
}

/**
 * Writes rank `rank`'s input where `c` reads it, and `prior` (recv elements) into its receive
 * buffer, so a check can tell a buffer left untouched.
 */
export function fillRank(c: CollectiveName, k: CollectiveCase, rank: number, pair: RankPair, input: Float64Array, prior?: Float64Array): void {
  const at = pair.recv ? 0 : inPlaceOffsets(c, k.count, rank).input;
  writeValues(pair.send, k.dtype, input.length, input, at);
  if (pair.recv && prior) writeValues(pair.recv, k.dtype, prior.length, prior);
}

/** Checks rank `rank`'s result of `c` against its entry of collectiveReference (null: `prior` is left). */
export function checkRank(c: CollectiveName, k: CollectiveCase, rank: number, pair: RankPair, ref: Reference | null, prior?: Float64Array): ReturnType<typeof compare> {
  const want = ref ?? { expected: prior ?? new Float64Array(0), allowed: new Float64Array(prior?.length ?? 0) };
  const at = pair.recv ? 0 : inPlaceOffsets(c, k.count, rank).result;
  return compare(readValues(pair.recv ?? pair.send, k.dtype, want.expected.length, at), want, rank);
}
