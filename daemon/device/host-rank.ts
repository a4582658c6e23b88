// A rank of the host backend: buffers are sealed memfds the daemon hands over once (mapped here
// under their registration number; the descriptor is closed right after, the mapping stays), and
// this rank reduces its own slice of every collective across all ranks' buffers. Collectives never
// pass through JavaScript here: a native worker thread takes them from the shared-memory ring the
// daemon made (RingWorker) and posts completions back. A sealed memfd cannot shrink, so no client
// can make this process fault.
import { native, type RingWorker, type ShmSegment } from '../../shared/native.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import { FD_CHANNEL, RING_TAG, type InjectMessage } from './messages.js';
import { wireResourceError } from './wire.js';

export class HostRank {
  private readonly segments = new Map<number, ShmSegment>();
  private worker: RingWorker | null = null;

  constructor(
    readonly rank: number,
    readonly nranks: number,
  ) {}

  get mappedCount(): number {
    return this.segments.size;
  }

  /** Attaches the ring whose descriptors the daemon sent on the fd channel; starts the worker thread. */
  attachRing(): void {
    const got = native.recvFds(FD_CHANNEL, 16);
    if (!got || got.data.length !== 4 || got.data.readUInt32LE(0) !== RING_TAG || got.fds.length !== 3) {
      for (const fd of got?.fds ?? []) native.closeFd(fd);
      throw new NccldError(ErrorCodes.INTERNAL, 'descriptor channel out of step: no ring descriptors waiting');
    }
    this.worker?.stop();
    this.worker = native.RingWorker.attach(got.fds, this.rank, this.nranks);
    for (const [id, seg] of this.segments) this.worker.setBuffer(id, seg);
  }

  /** Fault injection: what the worker does with its next collective. */
  inject(fault: InjectMessage['fault']): void {
    this.worker?.inject(fault);
  }

  /** Maps the memfd that the daemon sent on the fd channel, tagged `id`. */
  map(id: number): void {
    const got = native.recvFds(FD_CHANNEL, 16);
    if (!got) throw new NccldError(ErrorCodes.INTERNAL, `no descriptor waiting for buffer ${id}`);
    const tag = got.data.length === 4 ? got.data.readUInt32LE(0) : -1;
    try {
      if (tag !== id || got.fds.length !== 1) {
        throw new NccldError(ErrorCodes.INTERNAL, `descriptor channel out of step (wanted buffer ${id}, got ${tag} with ${got.fds.length} fds)`);
      }
      if (this.segments.has(id)) return; // mapped already (a retried registration)
      try {
        const seg = native.ShmSegment.fromFd(got.fds[0], `buffer ${id}`);
        this.segments.set(id, seg);
        this.worker?.setBuffer(id, seg);
      } catch (err) {
        const code = (err as { code?: string }).code;
        // Not mappable for reading and writing: the client's memory, not our fault.
        if (code === 'EACCES' || code === 'EPERM') throw new NccldError(ErrorCodes.BAD_BUFFER, `buffer ${id} cannot be mapped for reading and writing: ${(err as Error).message}`);
        throw wireResourceError(err, `cannot map buffer ${id}`);
      }
    } finally {
      for (const fd of got.fds) native.closeFd(fd);
    }
  }

  /** Drops these mappings (the daemon sends this after every collective that used them). */
  unmap(ids: number[]): void {
    for (const id of ids) {
      this.worker?.dropBuffer(id);
      this.segments.get(id)?.close();
      this.segments.delete(id);
    }
  }

  close(): void {
    this.worker?.stop();
    this.worker = null;
    this.unmap([...this.segments.keys()]);
  }
}
