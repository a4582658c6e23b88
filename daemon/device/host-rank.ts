// A rank of the host backend: buffers are POSIX shared-memory segments, and this rank reduces its
// own slice of every collective across all ranks' buffers (native code, off the event loop).
import { native, type ShmSegment } from '../../shared/native.js';
import { DTYPES, REDUCE_OPS } from '../../shared/dtypes.js';
import { isShmRef, type BufferRef, type ShmBufferRef } from '../../shared/protocol.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';
import type { RunMessage } from './messages.js';

export class HostRank {
  /** Open mappings, per client, by segment name: a buffer is opened once and reused. */
  private readonly mappings = new Map<number, Map<string, ShmSegment>>();

  constructor(
    readonly rank: number,
    readonly nranks: number,
  ) {}

  get mappedCount(): number {
    let n = 0;
    for (const m of this.mappings.values()) n += m.size;
    return n;
  }

  async run(job: RunMessage): Promise<void> {
    const refs = job.buffers.map((b, i) => {
      if (!isShmRef(b)) throw new NccldError(ErrorCodes.WRONG_BACKEND, `buffers[${i}] is not a shared-memory buffer`);
      return b;
    });
    const segments = refs.map((ref) => this.segment(job.client, ref));
    const info = DTYPES[job.dtype];
    await native.reduceSlice(
      segments,
      refs.map((r) => r.offset ?? 0),
      job.count,
      info.nccl,
      REDUCE_OPS[job.op],
      this.rank,
      this.nranks,
    );
  }

  /** Drops the client's mappings: all of them, or those of the buffers named. */
  forget(client: number, buffers?: BufferRef[]): void {
    const mine = this.mappings.get(client);
    if (!mine) return;
    const names = buffers ? buffers.filter(isShmRef).map((b) => b.shm) : [...mine.keys()];
    for (const name of names) {
      mine.get(name)?.close();
      mine.delete(name);
    }
    if (mine.size === 0) this.mappings.delete(client);
  }

  close(): void {
    for (const client of [...this.mappings.keys()]) this.forget(client);
  }

  private segment(client: number, ref: ShmBufferRef): ShmSegment {
    let mine = this.mappings.get(client);
    if (!mine) this.mappings.set(client, (mine = new Map()));
    let seg = mine.get(ref.shm);
    // A client may have unlinked and recreated a name; a mapping whose file shrank is stale.
    if (seg && seg.currentSize() !== seg.size) {
      seg.close();
      seg = undefined;
    }
    if (!seg) {
      try {
        seg = native.ShmSegment.open(ref.shm);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'ENOENT') throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `shared-memory segment "${ref.shm}" does not exist`);
        if (code === 'EACCES') throw new NccldError(ErrorCodes.PERMISSION, `no access to shared-memory segment "${ref.shm}"`);
        throw err;
      }
      mine.set(ref.shm, seg);
    }
    return seg;
  }
}
