// A rank of the NCCL backend: one GPU, one NCCL communicator, client buffers opened from CUDA IPC
// handles once, at registration, and kept under their registration number. Collectives are handed
// to the comm's native worker in arrival order (that order is the global one) and each reply waits
// for the GPU to finish. A mapping is closed only once no collective uses it.
import { native, type GpuComm, type GpuDevice, type IpcMapping } from '../../shared/native.js';
import { DTYPES, REDUCE_OPS } from '../../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import type { RunMessage } from './messages.js';

interface OpenBuffer {
  mapping: IpcMapping;
  /** The handle in hex: two registrations of one handle share the mapping (CUDA maps it once). */
  key: string;
  /** Registrations naming it. */
  refs: number;
  /** Collectives in flight on it: it is closed only when refs and users are both 0. */
  users: number;
}

/** How often a communicator still being built is polled; NCCL does the work on its own threads. */
const COMM_POLL_MS = 5;

export class NcclRank {
  readonly device: GpuDevice;
  private comm: GpuComm | null = null;
  generation = -1;
  private readonly byId = new Map<number, OpenBuffer>();
  private readonly byHandle = new Map<string, OpenBuffer>();

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

  /** Opens a registered buffer's handle under `id`; what the daemon checks requests against. */
  open(id: number, ipc: Uint8Array): { size: number; device: number } {
    let b = this.byId.get(id);
    if (!b) {
      const key = Buffer.from(ipc.buffer, ipc.byteOffset, ipc.byteLength).toString('hex');
      b = this.byHandle.get(key) ?? this.openHandle(key, ipc);
      b.refs++;
      this.byId.set(id, b);
    }
    return { size: usableBytes(b.mapping), device: b.mapping.device };
  }

  /** Hands the collective to NCCL now (so order is kept) and resolves when the GPU has finished it. */
  submit(job: RunMessage): Promise<void> {
    const comm = this.comm;
    if (!comm) return Promise.reject(new NccldError(ErrorCodes.NOT_READY, `rank ${this.rank} has no communicator`));
    const slot = job.buffers[0];
    const b = this.byId.get(slot.id);
    if (!b) return Promise.reject(new NccldError(ErrorCodes.NO_SUCH_BUFFER, `rank ${this.rank}: buffer ${slot.id} is not open here`));
    const info = DTYPES[job.dtype];
    const end = slot.offset + job.count * info.bytes;
    const size = usableBytes(b.mapping);
    if (end > size) {
      return Promise.reject(new NccldError(ErrorCodes.BUFFER_TOO_SMALL, `rank ${this.rank}: the collective needs ${end} bytes, the allocation holds ${size}`));
    }
    b.users++;
    return comm.allReduce(b.mapping.ptr + BigInt(slot.offset), job.count, info.nccl, REDUCE_OPS[job.op]).finally(() => {
      b.users--;
      this.closeIfUnused(b);
    });
  }

  /** Drops registrations; a mapping is closed once nothing names or uses it. */
  unmap(ids: number[]): void {
    for (const id of ids) {
      const b = this.byId.get(id);
      if (!b) continue;
      this.byId.delete(id);
      b.refs--;
      this.closeIfUnused(b);
    }
  }

  stats(): { ipcOpens: number; ipcCloses: number; mapped: number } {
    return { ...this.device.stats(), mapped: this.byHandle.size };
  }

  shutdown(): void {
    this.unmap([...this.byId.keys()]);
    const comm = this.comm;
    this.comm = null;
    try {
      comm?.destroy();
    } catch {
      // destroy aborts when it cannot finish; nothing else to do on the way out
    }
    this.device.close();
  }

  private openHandle(key: string, ipc: Uint8Array): OpenBuffer {
    let mapping: IpcMapping;
    try {
      mapping = this.device.openIpcHandle(ipc);
    } catch (err) {
      const cuda = (err as { cudaError?: string }).cudaError;
      const why =
        cuda === 'CUDA_ERROR_ALREADY_MAPPED'
          ? 'its memory is already mapped here through another handle: release the old registration first (allocations sharing a 2 MiB unit cannot be shared separately)'
          : 'freed, or not from a live process?';
      throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `rank ${this.rank} cannot open the CUDA IPC handle (${why}): ${(err as Error).message}`);
    }
    if (mapping.device !== this.ordinal) {
      this.device.closeIpcHandle(mapping.ptr);
      throw new NccldError(ErrorCodes.WRONG_DEVICE, `the buffer lives on device ${mapping.device}, not on rank ${this.rank}'s device ${this.ordinal}`);
    }
    const b: OpenBuffer = { mapping, key, refs: 0, users: 0 };
    this.byHandle.set(key, b);
    return b;
  }

  private closeIfUnused(b: OpenBuffer): void {
    if (b.refs > 0 || b.users > 0 || this.byHandle.get(b.key) !== b) return;
    this.byHandle.delete(b.key);
    this.device.closeIpcHandle(b.mapping.ptr);
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
