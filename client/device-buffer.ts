// GPU memory for the nccl backend: a plain cuMemAlloc allocation, so its IPC handle is an ordinary
// CUDA IPC handle (PyTorch's tensors give the same kind). The daemon opens it by that handle.
import { native, type GpuDeviceBuffer } from '../shared/native.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { Message } from '../shared/framing.js';
import type { BufferLike, Client } from './client.js';

/**
 * CUDA maps IPC memory into an importer in 2 MiB units, once per unit: two small allocations in
 * one unit could not both be opened by the daemon (CUDA_ERROR_ALREADY_MAPPED). So every buffer
 * gets units of its own, as PyTorch's caching allocator does.
 */
export const IPC_GRANULARITY = 2 << 20;

export class DeviceBuffer implements BufferLike {
  private handle: Buffer | null = null;
  /** Clients that registered this buffer: free() releases it from each first. */
  private readonly users = new Set<Client>();

  private constructor(
    private readonly mem: GpuDeviceBuffer,
    /** What the caller asked for; the allocation is rounded up to IPC_GRANULARITY. */
    readonly bytes: number,
  ) {}

  /** Allocates `bytes` bytes on CUDA device `device` (as this process numbers its GPUs). */
  static alloc(device: number, bytes: number): DeviceBuffer {
    if (!native.gpu) throw new NccldError(ErrorCodes.GPU_UNAVAILABLE, 'this build of nccld has no GPU support');
    const probe = native.gpu.probeCuda();
    if (!probe.available) throw new NccldError(ErrorCodes.GPU_UNAVAILABLE, `no GPU here: ${probe.reason}`);
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new NccldError(ErrorCodes.BAD_COUNT, `DeviceBuffer.alloc needs a positive byte count, not ${bytes}`);
    }
    const rounded = Math.ceil(bytes / IPC_GRANULARITY) * IPC_GRANULARITY;
    return new DeviceBuffer(native.gpu.DeviceBuffer.alloc(device, rounded), bytes);
  }

  get device(): number {
    return this.mem.ordinal;
  }

  /** Copies host data into the buffer at `byteOffset`; done when this returns. */
  write(src: ArrayBufferView, byteOffset = 0): void {
    this.mem.write(src, byteOffset);
  }

  /** Copies from the buffer at `byteOffset` into `dst` (as many bytes as dst holds). */
  read<T extends ArrayBufferView>(dst: T, byteOffset = 0): T {
    this.mem.read(dst, byteOffset);
    return dst;
  }

  /** The allocation's 64-byte CUDA IPC handle. */
  ipcHandle(): Buffer {
    this.handle ??= this.mem.ipcHandle();
    return this.handle;
  }

  registerRequest(): { fields: Message } {
    return { fields: { ipc: this.ipcHandle(), device: this.device } };
  }

  registeredWith(client: Client): void {
    this.users.add(client);
  }

  /** Releases the buffer from every client that used it, then frees the GPU memory. */
  async free(): Promise<void> {
    for (const c of this.users) await c.release([this]).catch(() => {}); // a closed client holds nothing
    this.users.clear();
    this.mem.free();
  }
}
