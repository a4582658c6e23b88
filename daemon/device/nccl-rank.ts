// A rank of the NCCL backend: one GPU, one NCCL communicator per world generation, client buffers
// opened from CUDA IPC handles once, at registration, and kept under their registration number.
// Collectives never pass through JavaScript here: a native thread (NcclRingWorker) takes them
// from the shared-memory ring the daemon made, in the daemon's order (the global one), launches
// them on the communicator and posts each completion once the GPU has finished it. The daemon
// unmaps a buffer only once no collective uses it, so a mapping closed here is never in flight.
import { native, type GpuComm, type GpuDevice, type IpcMapping, type NcclRingWorker } from '../../shared/native.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import type { InjectMessage } from './messages.js';
import { RING_TAG, takeTagged } from './fd-channel.js';

interface OpenBuffer {
  mapping: IpcMapping;
  /** The handle in hex: two registrations of one handle share the mapping (CUDA maps it once). */
  key: string;
  /** Registrations naming it: closed when none is left. */
  refs: number;
}

/** How often a communicator still being built is polled; NCCL does the work on its own threads. */
const COMM_POLL_MS = 5;

export class NcclRank {
  readonly device: GpuDevice;
  private comm: GpuComm | null = null;
  private worker: NcclRingWorker | null = null;
  generation = -1;
  private readonly byId = new Map<number, OpenBuffer>();
  private readonly byHandle = new Map<string, OpenBuffer>();

  constructor(
    readonly rank: number,
    readonly nranks: number,
    readonly ordinal: number,
    private readonly spinUs: number,
  ) {
    this.device = new (gpu().Device)(ordinal);
  }

  /** A fresh NCCL unique id: rank 0 makes it, the daemon hands it to every rank. */
  static uniqueId(): Uint8Array {
    return gpu().getUniqueId();
  }

  /** Attaches the ring whose descriptors the daemon sent on the fd channel; starts the worker thread. */
  attachRing(): void {
    const fds = takeTagged(RING_TAG, 3, 'the ring');
    this.worker?.stop();
    this.worker = gpu().NcclRingWorker.attach(fds, this.spinUs);
    for (const [id, b] of this.byId) this.worker.setBuffer(id, b.mapping.ptr, usableBytes(b.mapping));
    if (this.comm) this.worker.setComm(this.comm);
  }

  /** Fault injection: what the worker does with its next collective. */
  inject(fault: InjectMessage['fault']): void {
    this.worker?.inject(fault);
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
    // Records submitted before this point belonged to an earlier communicator: the worker fails them.
    this.worker?.setComm(comm);
  }

  /** The world broke: the worker lets go of the comm (what it ran ends ABORTED), then NCCL aborts it. */
  abortComm(): void {
    const comm = this.comm;
    this.comm = null;
    this.worker?.setComm(null);
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
      this.worker?.setBuffer(id, b.mapping.ptr, usableBytes(b.mapping));
    }
    return { size: usableBytes(b.mapping), device: b.mapping.device };
  }

  /** Drops registrations; a mapping is closed once nothing names or uses it. */
  unmap(ids: number[]): void {
    for (const id of ids) {
      const b = this.byId.get(id);
      if (!b) continue;
      this.worker?.dropBuffer(id);
      this.byId.delete(id);
      b.refs--;
      this.closeIfUnused(b);
    }
  }

  stats(): { ipcOpens: number; ipcCloses: number; mapped: number; splitComms: number } {
    return { ...this.device.stats(), mapped: this.byHandle.size, splitComms: this.worker?.splitComms ?? 0 };
  }

  shutdown(): void {
    // The worker goes first: nothing may be launched on the comm or the buffers after this.
    this.worker?.stop();
    this.worker = null;
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
    const b: OpenBuffer = { mapping, key, refs: 0 };
    this.byHandle.set(key, b);
    return b;
  }

  private closeIfUnused(b: OpenBuffer): void {
    if (b.refs > 0 || this.byHandle.get(b.key) !== b) return;
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
