// Loads the C++ addon (built by cmake-js into build/Release) and gives its surface a type.
// The addon is thin on purpose: callers validate, it does the system calls and the loops.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface ShmSegment {
  readonly name: string;
  readonly size: number;
  readonly closed: boolean;
  buffer(): ArrayBuffer;
  currentSize(): number;
  close(): void;
}

export interface ShmSegmentClass {
  create(name: string, bytes: number, mode: number): ShmSegment;
  open(name: string): ShmSegment;
}

export interface GpuDeviceInfo {
  ordinal: number;
  name: string;
  pciBusId: string;
  totalBytes: number;
}

export interface GpuProbe {
  available: boolean;
  reason?: string;
  driverVersion?: number;
  ncclVersion?: number;
  devices: GpuDeviceInfo[];
}

export interface IpcMapping {
  ptr: bigint;
  base: bigint;
  size: number;
  device: number;
}

export interface GpuDevice {
  readonly ordinal: number;
  readonly name: string;
  readonly pciBusId: string;
  openIpcHandle(handle: Uint8Array): IpcMapping;
  closeIpcHandle(ptr: bigint): void;
  stats(): { ipcOpens: number; ipcCloses: number };
  close(): void;
}

export interface GpuComm {
  readonly rank: number;
  readonly nranks: number;
  poll(): 'ready' | 'pending';
  allReduce(ptr: bigint, count: number, dtype: number, op: number): Promise<void>;
  asyncError(): string | null;
  abort(): void;
  destroy(): void;
}

export interface GpuDeviceBuffer {
  readonly ordinal: number;
  readonly bytes: number;
  readonly ptr: bigint;
  write(src: ArrayBufferView, byteOffset?: number): void;
  read(dst: ArrayBufferView, byteOffset?: number): void;
  ipcHandle(): Buffer;
  free(): void;
}

export interface GpuModule {
  probe(): GpuProbe;
  probeCuda(): GpuProbe;
  getUniqueId(): Buffer;
  version(): { cuda: number | null; nccl: number | null };
  Device: new (ordinal: number) => GpuDevice;
  Comm: { initRank(device: GpuDevice, uniqueId: Uint8Array, nranks: number, rank: number): GpuComm };
  DeviceBuffer: { alloc(ordinal: number, bytes: number): GpuDeviceBuffer };
}

export interface NativeAddon {
  ShmSegment: ShmSegmentClass;
  shmUnlink(name: string): void;
  reduceSlice(
    segments: ShmSegment[],
    byteOffsets: number[],
    count: number,
    dtype: number,
    op: number,
    rank: number,
    nranks: number,
  ): Promise<void>;
  sliceBounds(count: number, elemSize: number, rank: number, nranks: number): [number, number];
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  /** prctl(PR_SET_PDEATHSIG, SIGKILL); false if the parent is already gone. */
  setParentDeathSignal(expectedParentPid: number): boolean;
  /** One datagram to $NOTIFY_SOCKET; false when it is unset. */
  sdNotify(state: string): boolean;
  gpu?: GpuModule;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// From dist/shared/ (compiled) or shared/ (sources run by a TypeScript loader).
const candidates = [
  path.resolve(here, '../../build/Release/nccld.node'),
  path.resolve(here, '../build/Release/nccld.node'),
];

function load(): NativeAddon {
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    throw new Error(`nccld's native addon is not built (looked for ${candidates.join(', ')}): run npm install`);
  }
  return createRequire(import.meta.url)(file) as NativeAddon;
}

export const native: NativeAddon = load();
