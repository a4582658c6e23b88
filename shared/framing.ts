// Frames: a 4-byte big-endian length, then one MessagePack map of that many bytes.
// Plain MessagePack only (no msgpackr records or structured clone), so any language can speak it.
// This module knows nothing about sockets: callers feed it bytes and send what it encodes.
import { Packr, Unpackr } from 'msgpackr';
import { ErrorCodes, NccldError } from './errors.js';

export const FRAME_HEADER_BYTES = 4;
/**
 * Default largest frame the daemon accepts. Requests name registered buffers by number, so they
 * are small; a partial frame parked per connection stays cheap.
 */
export const DEFAULT_MAX_FRAME_BYTES = 64 << 10;

const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export type Message = Record<string, unknown>;

/** Encodes one message as a complete frame (header included). */
export function encodeFrame(message: Message): Buffer {
  const body = packr.pack(message);
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

const NOTHING = Buffer.alloc(0);

/** What the decoder yields for each frame: the message, or why the frame's body was unusable. */
export type DecodedFrame = { message: Message } | { error: NccldError };

/**
 * Splits a byte stream into frames. A bad body is reported and skipped (the length prefix still
 * tells where the next frame starts); a length over the maximum cannot be skipped safely, so it
 * throws and the caller closes the connection.
 */
export class FrameDecoder {
  /**
   * Bytes received and not yet framed: buf[start, end). They are kept in one buffer that grows by
   * doubling, so a peer that sends a frame a few bytes per write costs about its bytes, not a
   * Buffer object (hundreds of bytes) per write. New bytes only ever go past `end`: a body already
   * yielded (which decoded binaries may share) is never written over.
   */
  private buf: Buffer = NOTHING;
  private start = 0;
  private end = 0;

  constructor(readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {}

  /** Bytes received that do not yet make a whole frame (e.g. a truncated frame at close). */
  get pendingBytes(): number {
    return this.end - this.start;
  }

  *push(chunk: Buffer): Generator<DecodedFrame> {
    this.append(chunk);
    while (this.end - this.start >= FRAME_HEADER_BYTES) {
      const length = this.buf.readUInt32BE(this.start);
      if (length > this.maxFrameBytes) {
        throw new NccldError(
          ErrorCodes.FRAME_TOO_LARGE,
          `frame of ${length} bytes is over the maximum of ${this.maxFrameBytes}`,
        );
      }
      const total = FRAME_HEADER_BYTES + length;
      if (this.end - this.start < total) return;
      const body = this.buf.subarray(this.start + FRAME_HEADER_BYTES, this.start + total);
      this.start += total;
      yield decodeBody(body);
    }
    // All framed: hold no memory for an idle connection.
    if (this.start === this.end) this.buf = NOTHING;
  }

  private append(chunk: Buffer): void {
    const pending = this.end - this.start;
    if (pending === 0) {
      // Nothing held (the common case: whole frames per read): take the chunk as it is.
      this.buf = chunk;
      this.start = 0;
      this.end = chunk.length;
    } else if (this.buf.length - this.end >= chunk.length) {
      chunk.copy(this.buf, this.end);
      this.end += chunk.length;
    } else {
      const next = Buffer.allocUnsafe(Math.max(pending + chunk.length, 2 * pending, 4096));
      this.buf.copy(next, 0, this.start, this.end);
      chunk.copy(next, pending);
      this.buf = next;
      this.start = 0;
      this.end = pending + chunk.length;
    }
  }
}

function decodeBody(body: Buffer): DecodedFrame {
  let value: unknown;
  try {
    value = unpackr.unpack(body);
  } catch (err) {
    return { error: new NccldError(ErrorCodes.BAD_FRAME, `frame is not valid MessagePack: ${(err as Error).message}`) };
  }
  // A plain map only: msgpackr turns extension types (and the reserved byte 0xc1) into class
  // instances, which are not messages.
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) {
    return { error: new NccldError(ErrorCodes.BAD_FRAME, 'frame is valid MessagePack but not a map') };
  }
  return { message: value as Message };
}
