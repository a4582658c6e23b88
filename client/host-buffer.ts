// A buffer for the host backend: a POSIX shared-memory segment this process creates and maps, so
// the daemon's device processes can map the same pages and reduce them in place.
import { randomBytes } from 'node:crypto';
import { native, type ShmSegment } from '../shared/native.js';
import { DTYPES, type DType } from '../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { ShmBufferRef } from '../shared/protocol.js';
import type { BufferLike } from './client.js';
import { typedView, type ViewOf } from '../shared/typed-arrays.js';

export type { ViewOf };

let counter = 0;

export interface HostBufferOptions {
  /** Mode of the segment (default 0o600: only this user, who must also be the daemon's user or root). */
  mode?: number;
}

export class HostBuffer implements BufferLike {
  private constructor(private readonly segment: ShmSegment) {}

  /** Creates a zero-filled shared-memory segment of `bytes` bytes. */
  static alloc(bytes: number, opts: HostBufferOptions = {}): HostBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new NccldError(ErrorCodes.BAD_COUNT, `HostBuffer.alloc needs a positive byte count, not ${bytes}`);
    }
    const name = `nccld-${process.pid}-${++counter}-${randomBytes(4).toString('hex')}`;
    return new HostBuffer(native.ShmSegment.create(name, bytes, opts.mode ?? 0o600));
  }

  /** The segment's name, as passed to the daemon. */
  get name(): string {
    return this.segment.name;
  }

  get bytes(): number {
    return this.segment.size;
  }

  get freed(): boolean {
    return this.segment.closed;
  }

  /** A typed view of `count` elements (default: as many as fit) from `byteOffset`. */
  view<T extends DType>(dtype: T, byteOffset = 0, count?: number): ViewOf<T> {
    if (this.freed) throw new NccldError(ErrorCodes.BAD_REQUEST, `buffer ${this.name} has been freed`);
    const elem = DTYPES[dtype].bytes;
    const n = count ?? Math.floor((this.bytes - byteOffset) / elem);
    return typedView(dtype, this.segment.buffer(), byteOffset, n);
  }

  toBufferRef(offset?: number): ShmBufferRef {
    return offset ? { shm: this.name, offset } : { shm: this.name };
  }

  /**
   * Unmaps and removes the segment. Release it from the daemon first (client.release) if a
   * long-lived connection used it, so the daemon's mappings go too; closing the connection does
   * the same for all its buffers. Views taken earlier become empty.
   */
  free(): void {
    if (this.freed) return;
    this.segment.close();
    try {
      native.shmUnlink(this.name);
    } catch {
      // already unlinked elsewhere
    }
  }
}
