// The messages of protocol version 1 and their shape checks. docs/protocol.md is the contract;
// this file is its executable form. Checks here need no daemon state: the world-dependent ones
// (how many ranks, which devices, do the buffers exist) are the daemon's.
import { type DType, type ReduceOp, isDType, isReduceOp, DTYPE_NAMES, REDUCE_OP_NAMES } from './dtypes.js';
import { ErrorCodes, NccldError } from './errors.js';
import type { Message } from './framing.js';

export const PROTOCOL_VERSION = 1;
/** Oldest protocol version this build still speaks. */
export const MIN_PROTOCOL_VERSION = 1;
export const IPC_HANDLE_BYTES = 64;
export const MAX_SHM_NAME_LENGTH = 200;

/** A POSIX shared-memory segment, by the name given to shm_open without its leading '/'. */
export interface ShmBufferRef {
  shm: string;
  /** Bytes from the segment's start; a multiple of the element size. Default 0. */
  offset?: number;
  /** The rank this buffer is meant for; when given it must equal the buffer's position. */
  rank?: number;
}

/** GPU memory, by the CUDA IPC handle of its allocation (cuIpcGetMemHandle / cudaIpcGetMemHandle). */
export interface IpcBufferRef {
  ipc: Uint8Array;
  /** CUDA ordinal of the device the allocation was made on, as the client numbers it. */
  device: number;
  offset?: number;
  rank?: number;
}

export type BufferRef = ShmBufferRef | IpcBufferRef;

export interface HelloMessage {
  type: 'hello';
  protocol: number;
  /** Free text naming the client, for logs and the debug socket. */
  client?: string;
}

export interface AllReduceRequest {
  type: 'allreduce';
  id: number;
  dtype: DType;
  op: ReduceOp;
  count: number;
  /** One buffer per rank, in rank order; reduced in place. */
  buffers: BufferRef[];
  /** Deadline for this collective in milliseconds, within the daemon's limits. */
  timeoutMs?: number;
}

/** Tells the daemon the client is about to free these buffers: drop any mapping of them. */
export interface ReleaseRequest {
  type: 'release';
  id: number;
  buffers: BufferRef[];
}

export type Request = AllReduceRequest | ReleaseRequest;
export const REQUEST_TYPES: readonly Request['type'][] = ['allreduce', 'release'];

export interface HelloReply {
  type: 'hello';
  protocol: number;
  server: 'nccld';
  version: string;
  backend: 'host' | 'nccl';
  worldSize: number;
  /** Device ordinal of each rank (null on the host backend). */
  devices: (number | null)[];
  maxFrameBytes: number;
  maxInFlight: number;
}

export interface ResultReply {
  type: 'result';
  id: number;
  /** The global sequence number the collective ran under. */
  seq: number;
}

export interface ErrorReply {
  type: 'error';
  /** The request's id, or null when the error is about the connection or an unreadable frame. */
  id: number | null;
  code: string;
  message: string;
  [detail: string]: unknown;
}

export type Reply = HelloReply | ResultReply | ErrorReply;

export function isShmRef(ref: BufferRef): ref is ShmBufferRef {
  return 'shm' in ref;
}

/** A CUDA IPC handle as a map key: its 64 bytes in hex. */
export function ipcHandleKey(ipc: Uint8Array): string {
  return Buffer.from(ipc.buffer, ipc.byteOffset, ipc.byteLength).toString('hex');
}

/** The id of a message if it has a usable one, so even a malformed request gets a matched error. */
export function requestId(msg: Message): number | null {
  return isId(msg.id) ? msg.id : null;
}

function isId(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function bad(message: string): NccldError {
  return new NccldError(ErrorCodes.BAD_REQUEST, message);
}

export function parseHello(msg: Message): HelloMessage {
  if (msg.type !== 'hello') {
    throw new NccldError(ErrorCodes.HELLO_REQUIRED, `the first message must be a hello, not ${describeType(msg.type)}`);
  }
  if (!isId(msg.protocol)) throw bad('hello.protocol must be a non-negative integer');
  if (msg.client !== undefined && typeof msg.client !== 'string') throw bad('hello.client must be a string');
  return { type: 'hello', protocol: msg.protocol, client: msg.client?.slice(0, 200) };
}

export function parseRequest(msg: Message): Request {
  if (!isId(msg.id)) throw bad('a request needs an id: a non-negative integer');
  switch (msg.type) {
    case 'allreduce':
      return parseAllReduce(msg);
    case 'release':
      return { type: 'release', id: msg.id, buffers: parseBuffers(msg.buffers) };
    default:
      throw new NccldError(
        ErrorCodes.UNKNOWN_TYPE,
        `unknown message type ${describeType(msg.type)}; this daemon knows ${REQUEST_TYPES.join(', ')}`,
      );
  }
}

function parseAllReduce(msg: Message): AllReduceRequest {
  if (!isDType(msg.dtype)) {
    throw new NccldError(ErrorCodes.BAD_DTYPE, `dtype ${describeType(msg.dtype)} is not one of ${DTYPE_NAMES.join(', ')}`);
  }
  if (!isReduceOp(msg.op)) {
    throw new NccldError(ErrorCodes.BAD_OP, `op ${describeType(msg.op)} is not one of ${REDUCE_OP_NAMES.join(', ')}`);
  }
  if (!isCount(msg.count)) {
    throw new NccldError(ErrorCodes.BAD_COUNT, `count must be a non-negative integer, not ${describeType(msg.count)}`);
  }
  if (msg.timeoutMs !== undefined && !(isId(msg.timeoutMs) && msg.timeoutMs > 0)) {
    throw bad('timeoutMs must be a positive integer');
  }
  return {
    type: 'allreduce',
    id: msg.id as number,
    dtype: msg.dtype,
    op: msg.op,
    count: msg.count,
    buffers: parseBuffers(msg.buffers),
    ...(msg.timeoutMs !== undefined ? { timeoutMs: msg.timeoutMs as number } : {}),
  };
}

const SHM_NAME = /^[A-Za-z0-9._-]+$/;

function parseBuffers(x: unknown): BufferRef[] {
  if (!Array.isArray(x) || x.length === 0) throw bad('buffers must be a non-empty array');
  return x.map((b, i) => parseBuffer(b, i));
}

function parseBuffer(b: unknown, i: number): BufferRef {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw bad(`buffers[${i}] must be a map`);
  const ref = b as Record<string, unknown>;
  if (ref.offset !== undefined && !isCount(ref.offset)) throw bad(`buffers[${i}].offset must be a non-negative integer`);
  if (ref.rank !== undefined && !isId(ref.rank)) throw bad(`buffers[${i}].rank must be a non-negative integer`);
  const common = {
    ...(ref.offset !== undefined ? { offset: ref.offset as number } : {}),
    ...(ref.rank !== undefined ? { rank: ref.rank as number } : {}),
  };
  if (typeof ref.shm === 'string') {
    const name = ref.shm.startsWith('/') ? ref.shm.slice(1) : ref.shm;
    if (name.length === 0 || name.length > MAX_SHM_NAME_LENGTH || !SHM_NAME.test(name) || name === '.' || name === '..') {
      throw bad(`buffers[${i}].shm must be a shared-memory name of 1 to ${MAX_SHM_NAME_LENGTH} letters, digits, '.', '_' or '-'`);
    }
    return { shm: name, ...common };
  }
  if (ref.ipc !== undefined) {
    if (!(ref.ipc instanceof Uint8Array) || ref.ipc.length !== IPC_HANDLE_BYTES) {
      throw bad(`buffers[${i}].ipc must be a binary of ${IPC_HANDLE_BYTES} bytes (a CUDA IPC memory handle)`);
    }
    if (!isId(ref.device)) throw bad(`buffers[${i}].device must be the CUDA ordinal the memory was allocated on`);
    return { ipc: ref.ipc, device: ref.device, ...common };
  }
  throw bad(`buffers[${i}] must name a shared-memory segment (shm) or a CUDA IPC handle (ipc)`);
}

function describeType(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.slice(0, 64));
  return x === null ? 'null' : typeof x;
}
