// A rank of the host backend: buffers are sealed memfds the daemon hands over once (mapped here
// under their registration number; the descriptor is closed right after, the mapping stays), and
// this rank reduces its own slice of every collective across all ranks' buffers. Collectives never
// pass through JavaScript here: a native worker thread takes them from the shared-memory ring the
// daemon made (RingWorker) and posts completions back. A sealed memfd cannot shrink, so no client
// can make this process fault.
import { native, type RingWorker, type ShmSegment } from '../../shared/native.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import type { InjectMessage } from './messages.js';
import { RING_TAG, takeTagged } from './fd-channel.js';
import { wireResourceError } from './wire.js';

export class HostRank {
  private readonly segments = new Map<number, ShmSegment>();
  private worker: RingWorker | null = null;

  constructor(
    readonly rank: number,
    readonly nranks: number,
    private readonly spinUs: number,
  ) {}

  get mappedCount(): number {
    return this.segments.size;
  }

  /** Attaches the ring whose descriptors the daemon sent on the fd channel; starts the worker thread. */
  attachRing(): void {
    const fds = takeTagged(RING_TAG, 3, 'the ring');
    this.worker?.stop();
    this.worker = native.RingWorker.attach(fds, this.rank, this.nranks, this.spinUs);
    for (const [id, seg] of this.segments) this.worker.setBuffer(id, seg);
  }

  /** Fault injection: what the worker does with its next collective. */
  inject(fault: InjectMessage['fault']): void {
    this.worker?.inject(fault);
  }

  /** Maps the memfd that the daemon sent on the fd channel, tagged `id`. */
  map(id: number): void {
    const [fd] = takeTagged(id, 1, `buffer ${id}`);
    try {
      if (this.segments.has(id)) return; // mapped already (a retried registration)
      try {
        const seg = native.ShmSegment.fromFd(fd, `buffer ${id}`);
        this.segments.set(id, seg);
        this.worker?.setBuffer(id, seg);
      } catch (err) {
        const code = (err as { code?: string }).code;
        // Not mappable for reading and writing: the client's memory, not our fault.
        if (code === 'EACCES' || code === 'EPERM') throw new NccldError(ErrorCodes.BAD_BUFFER, `buffer ${id} cannot be mapped for reading and writing: ${(err as Error).message}`);
        throw wireResourceError(err, `cannot map buffer ${id}`);
      }
    } finally {
      native.closeFd(fd); // the mapping stays
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
