// A rank of the host backend: buffers are sealed memfds the daemon hands over once (mapped here
// under their registration number; the descriptor is closed right after, the mapping stays), and
// this rank reduces its own slice of every collective across all ranks' buffers (native code, off
// the event loop). A sealed memfd cannot shrink, so no client can make this process fault.
import { native, type ShmSegment } from '../../shared/native.js';
import { DTYPES, REDUCE_OPS } from '../../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import { FD_CHANNEL, type RunMessage } from './messages.js';
import { wireResourceError } from './wire.js';

export class HostRank {
  private readonly segments = new Map<number, ShmSegment>();

  constructor(
    readonly rank: number,
    readonly nranks: number,
  ) {}

  get mappedCount(): number {
    return this.segments.size;
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
        this.segments.set(id, native.ShmSegment.fromFd(got.fds[0], `buffer ${id}`));
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

  async run(job: RunMessage): Promise<void> {
    const segments = job.buffers.map((b) => {
      const seg = this.segments.get(b.id);
      if (!seg) throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `buffer ${b.id} is not mapped here`);
      return seg;
    });
    const info = DTYPES[job.dtype];
    await native.reduceSlice(
      segments,
      job.buffers.map((b) => b.offset),
      job.count,
      info.nccl,
      REDUCE_OPS[job.op],
      this.rank,
      this.nranks,
    );
  }

  /** Drops these mappings (the daemon sends this after every collective that used them). */
  unmap(ids: number[]): void {
    for (const id of ids) {
      this.segments.get(id)?.close();
      this.segments.delete(id);
    }
  }

  close(): void {
    this.unmap([...this.segments.keys()]);
  }
}
