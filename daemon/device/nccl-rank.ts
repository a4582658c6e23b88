// A rank of the NCCL backend: one GPU, one NCCL communicator, client buffers opened from CUDA IPC
// handles once and reused. Collectives are handed to the comm's native worker in arrival order
// (that order is the global one) and each reply waits for the GPU to finish.
import { native, type GpuComm, type GpuDevice, type IpcMapping } from '../../shared/native.js';
import { DTYPES, REDUCE_OPS } from '../../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import { ipcHandleKey as handleKey, isShmRef, type BufferRef, type IpcBufferRef } from '../../shared/protocol.js';
import type { RunMessage } from './messages.js';

interface OpenBuffer {
  mapping: IpcMapping;
  /** Collectives in flight on it: it is closed only when this is 0. */
  users: number;
  /** Released while in use: close when the last user finishes. */
  closing: boolean;
}

/** How often a communicator still being built is polled; NCCL does the work on its own threads. */
const COMM_POLL_MS = 5;

export class NcclRank {
  readonly device: GpuDevice;
  private comm: GpuComm | null = null;
  generation = -1;
  private readonly buffers = new Map<number, Map<string, OpenBuffer>>();

  constructor(
    readonly rank: number,
    readonly nranks: number,
    readonly ordinal: number,
  ) {
    this.device = new (gpu().Device)(ordinal);
  }

  /** A fresh NCCL unique id: rank 0 makes it, the daemon hands it to every rank. */
  static uniqueId(): Uint8Array {
    return gpu().getUniqueId();
  }

  /** Joins the communicator of a generation; resolves when NCCL says it is ready. */
  async initComm(uniqueId: Uint8Array, generation: number, timeoutMs: number): Promise<void> {
    this.abortComm();
    const comm = gpu().Comm.initRank(this.device, uniqueId, this.nranks, this.rank);
    this.comm = comm;
    this.generation = generation;
    const deadline = Date.now() + timeoutMs;
    // Non-blocking init: poll, so the event loop (and the daemon's messages) keep flowing.
    while (comm.poll() === 'pending') {
      if (Date.now() > deadline) {
        this.abortComm();
        throw new NccldError(ErrorCodes.TIMEOUT, `NCCL communicator of rank ${this.rank} not ready after ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, COMM_POLL_MS));
    }
  }

  abortComm(): void {
    const comm = this.comm;
    this.comm = null;
    comm?.abort();
  }

  /** Opens (or finds) a client's buffer; what the daemon needs to check requests against it. */
  open(client: number, ref: BufferRef): { size: number; device: number } {
    const b = this.buffer(client, ref);
    return { size: usableBytes(b.mapping), device: b.mapping.device };
  }

  /** Hands the collective to NCCL now (so order is kept) and resolves when the GPU has finished it. */
  submit(job: RunMessage): Promise<void> {
    const comm = this.comm;
    if (!comm) return Promise.reject(new NccldError(ErrorCodes.NOT_READY, `rank ${this.rank} has no communicator`));
    const ref = job.buffers[0];
    let b: OpenBuffer;
    try {
      b = this.buffer(job.client, ref);
    } catch (err) {
      return Promise.reject(err);
    }
    const info = DTYPES[job.dtype];
    const offset = ref.offset ?? 0;
    const end = offset + job.count * info.bytes;
    const size = usableBytes(b.mapping);
    if (end > size) {
      return Promise.reject(new NccldError(ErrorCodes.BUFFER_TOO_SMALL, `rank ${this.rank}: the collective needs ${end} bytes, the allocation holds ${size}`));
    }
    b.users++;
    return comm.allReduce(b.mapping.ptr + BigInt(offset), job.count, info.nccl, REDUCE_OPS[job.op]).finally(() => {
      b.users--;
      if (b.closing && b.users === 0) this.close(b);
    });
  }

  /** Drops a client's buffers (all, or those named) once no collective uses them. */
  forget(client: number, refs?: BufferRef[]): void {
    const mine = this.buffers.get(client);
    if (!mine) return;
    const keys = refs ? refs.filter((r): r is IpcBufferRef => !isShmRef(r)).map((r) => handleKey(r.ipc)) : [...mine.keys()];
    for (const key of keys) {
      const b = mine.get(key);
      if (!b) continue;
      mine.delete(key);
      if (b.users === 0) this.close(b);
      else b.closing = true;
    }
    if (mine.size === 0) this.buffers.delete(client);
  }

  stats(): { ipcOpens: number; ipcCloses: number; mapped: number } {
    let mapped = 0;
    for (const m of this.buffers.values()) mapped += m.size;
    return { ...this.device.stats(), mapped };
  }

  shutdown(): void {
    for (const client of [...this.buffers.keys()]) this.forget(client);
    const comm = this.comm;
    this.comm = null;
    try {
      comm?.destroy();
    } catch {
      // destroy aborts when it cannot finish; nothing else to do on the way out
    }
    this.device.close();
  }

  /**
   * CUDA refuses a second mapping of memory this process has mapped already. That happens when a
   * client freed a buffer without releasing it and the memory came back under a new handle: drop
   * every idle mapping (they reopen on their next use) and try once more.
   */
  private openHandle(ipc: Uint8Array): IpcMapping {
    try {
      return this.device.openIpcHandle(ipc);
    } catch (err) {
      if ((err as { cudaError?: string }).cudaError !== 'CUDA_ERROR_ALREADY_MAPPED') throw err;
      for (const [client, mine] of this.buffers) {
        for (const [key, b] of mine) {
          if (b.users > 0) continue;
          mine.delete(key);
          this.close(b);
        }
        if (mine.size === 0) this.buffers.delete(client);
      }
      return this.device.openIpcHandle(ipc);
    }
  }

  private close(b: OpenBuffer): void {
    this.device.closeIpcHandle(b.mapping.ptr);
  }

  private buffer(client: number, ref: BufferRef): OpenBuffer {
    if (isShmRef(ref)) throw new NccldError(ErrorCodes.WRONG_BACKEND, 'a shared-memory buffer on the nccl backend');
    const key = handleKey(ref.ipc);
    let b = this.buffers.get(client)?.get(key);
    if (b) return b;
    let mapping: IpcMapping;
    try {
      mapping = this.openHandle(ref.ipc);
    } catch (err) {
      const cuda = (err as { cudaError?: string }).cudaError;
      const why =
        cuda === 'CUDA_ERROR_ALREADY_MAPPED'
          ? 'its memory is already mapped here through another handle that is still in use (allocations sharing a 2 MiB unit cannot be shared separately)'
          : 'freed, or not from a live process?';
      throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `rank ${this.rank} cannot open the CUDA IPC handle (${why}): ${(err as Error).message}`);
    }
    if (mapping.device !== this.ordinal) {
      this.device.closeIpcHandle(mapping.ptr);
      throw new NccldError(ErrorCodes.WRONG_DEVICE, `the buffer for rank ${this.rank} lives on device ${mapping.device}, not on device ${this.ordinal}`);
    }
    b = { mapping, users: 0, closing: false };
    let mine = this.buffers.get(client);
    if (!mine) this.buffers.set(client, (mine = new Map()));
    mine.set(key, b);
    return b;
  }
}

/** Bytes from the mapped pointer to the end of its allocation. */
function usableBytes(m: IpcMapping): number {
  return m.size - Number(m.ptr - m.base);
}

function gpu() {
  if (!native.gpu) throw new NccldError(ErrorCodes.GPU_UNAVAILABLE, 'this build of nccld has no GPU support');
  return native.gpu;
}
