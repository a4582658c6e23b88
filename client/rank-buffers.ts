// One buffer per rank, of the kind the daemon's backend takes (shared memory on the host backend,
// GPU memory on rank i's device on the nccl backend), with values in and out as float64.
import type { DType } from '../shared/dtypes.js';
import { typedArray } from '../shared/typed-arrays.js';
import type { Client } from './client.js';
import { DeviceBuffer } from './device-buffer.js';
import { HostBuffer } from './host-buffer.js';
import { fromNumbers, toNumbers } from './verify.js';

export type RankBuffer = HostBuffer | DeviceBuffer;

/**
 * Allocates and registers one buffer per rank. The daemon's GPU numbering is taken to be ours:
 * run with the same CUDA_VISIBLE_DEVICES (the hello's deviceUuids tell when it is not).
 */
export async function allocRankBuffers(client: Client, bytes: number): Promise<RankBuffer[]> {
  const buffers = client.server.devices.map((device) => (device === null ? HostBuffer.alloc(bytes) : DeviceBuffer.alloc(device, bytes)));
  await Promise.all(buffers.map((b) => client.register(b)));
  return buffers;
}

/** Releases every buffer from the daemon, then frees it (DeviceBuffer.free releases by itself). */
export async function freeRankBuffers(client: Client, buffers: RankBuffer[]): Promise<void> {
  const host = buffers.filter((b): b is HostBuffer => b instanceof HostBuffer);
  if (host.length > 0) await client.release(host).catch(() => {});
  for (const b of buffers) await b.free();
}

export function writeValues(b: RankBuffer, dtype: DType, count: number, values: Float64Array): void {
  if (b instanceof HostBuffer) return fromNumbers(b.view(dtype, 0, count), dtype, values);
  const staging = typedArray(dtype, count);
  fromNumbers(staging, dtype, values);
  b.write(staging);
}

export function readValues(b: RankBuffer, dtype: DType, count: number): Float64Array {
  return toNumbers(b instanceof HostBuffer ? b.view(dtype, 0, count) : b.read(typedArray(dtype, count)), dtype);
}
