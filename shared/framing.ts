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

/** What the decoder yields for each frame: the message, or why the frame's body was unusable. */
export type DecodedFrame = { message: Message } | { error: NccldError };

/**
 * Splits a byte stream into frames. A bad body is reported and skipped (the length prefix still
 * tells where the next frame starts); a length over the maximum cannot be skipped safely, so it
 * throws and the caller closes the connection.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {}

  /** Bytes received that do not yet make a whole frame (e.g. a truncated frame at close). */
  get pendingBytes(): number {
    return this.buffered;
  }

  *push(chunk: Buffer): Generator<DecodedFrame> {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (this.buffered >= FRAME_HEADER_BYTES) {
      const head = this.peek(FRAME_HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes) {
        throw new NccldError(
          ErrorCodes.FRAME_TOO_LARGE,
          `frame of ${length} bytes is over the maximum of ${this.maxFrameBytes}`,
        );
      }
      if (this.buffered < FRAME_HEADER_BYTES + length) return;
      const body = this.take(FRAME_HEADER_BYTES + length).subarray(FRAME_HEADER_BYTES);
      yield decodeBody(body);
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0];
  }

  private take(n: number): Buffer {
    const first = this.peek(n);
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
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
