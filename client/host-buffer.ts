// A buffer for the host backend: a memfd sealed against shrinking and growing, mapped here. The
// daemon gets the descriptor itself when the buffer is registered, so it holds the memory as long
// as it needs it: this process can neither shrink it under a collective nor swap it for another.
import { randomBytes } from 'node:crypto';
import { native, type ShmSegment } from '../shared/native.js';
import { DTYPES, type DType } from '../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { Message } from '../shared/framing.js';
import type { BufferLike } from './client.js';
import { typedView, type ViewOf } from '../shared/typed-arrays.js';

export type { ViewOf };

let counter = 0;

export class HostBuffer implements BufferLike {
  private fd: number;

  private constructor(
    fd: number,
    private readonly segment: ShmSegment,
  ) {
    this.fd = fd;
  }

  /** Creates a zero-filled sealed memfd of `bytes` bytes (its pages reserved now, not at first touch). */
  static alloc(bytes: number): HostBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new NccldError(ErrorCodes.BAD_COUNT, `HostBuffer.alloc needs a positive byte count, not ${bytes}`);
    }
    const name = `nccld-${process.pid}-${++counter}-${randomBytes(4).toString('hex')}`;
    const fd = native.memfdCreate(name, bytes);
    try {
      return new HostBuffer(fd, native.ShmSegment.fromFd(fd, name));
    } catch (err) {
      native.closeFd(fd);
      throw err;
    }
  }

  /** A name for messages and logs. */
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

  registerRequest(): { fields: Message; fd: number } {
    if (this.freed) throw new NccldError(ErrorCodes.BAD_REQUEST, `buffer ${this.name} has been freed`);
    return { fields: {}, fd: this.fd };
  }

  /**
   * Unmaps the buffer here. A daemon that registered it keeps its own hold on the memory until the
   * client releases it or disconnects. Views taken earlier become empty.
   */
  free(): void {
    if (this.freed) return;
    this.segment.close();
    native.closeFd(this.fd);
    this.fd = -1;
  }
}
