// The messages of protocol version 2 and their shape checks. docs/protocol.md is the contract;
// this file is its executable form. Checks here need no daemon state: the world-dependent ones
// (how many ranks, which devices, is the buffer registered) are the daemon's.
import { type DType, type ReduceOp, isDType, isReduceOp, DTYPE_NAMES, REDUCE_OP_NAMES } from './dtypes.js';
import { ErrorCodes, NccldError } from './errors.js';
import type { Message } from './framing.js';

/**
 * Version 2: buffers are registered once (a sealed memfd passed with SCM_RIGHTS, or a CUDA IPC
 * handle) and named by the small integer the daemon gave them. Version 1 named shared-memory
 * segments by path, which let a client shrink or replace memory under a running collective.
 */
export const PROTOCOL_VERSION = 2;
/** Oldest protocol version this build still speaks. */
export const MIN_PROTOCOL_VERSION = 2;
export const IPC_HANDLE_BYTES = 64;
/** Request ids are unsigned 32-bit integers. */
export const MAX_REQUEST_ID = 0xffff_ffff;
/** Most buffers one release request may name: keeps every request's cost small. */
export const MAX_RELEASE_BUFFERS = 1024;

export interface HelloMessage {
  type: 'hello';
  protocol: number;
  /** Free text naming the client, for logs and the debug socket. */
  client?: string;
}

/** A registered buffer and a byte offset into it. */
export interface BufferSlot {
  buffer: number;
  /** Bytes from the buffer's start; a multiple of the element size. Default 0. */
  offset?: number;
}

/**
 * Registers memory. Host backend: exactly one file descriptor, a memfd sealed against shrinking
 * and growing, travels with this frame (SCM_RIGHTS). nccl backend: a CUDA IPC handle.
 */
export interface RegisterRequest {
  type: 'register';
  id: number;
  /** GPU memory: the allocation's CUDA IPC handle (cuIpcGetMemHandle), and its device as the daemon numbers them (match by the hello's deviceUuids). */
  ipc?: Uint8Array;
  device?: number;
}

export interface AllReduceRequest {
  type: 'allreduce';
  id: number;
  dtype: DType;
  op: ReduceOp;
  count: number;
  /** One slot per rank, in rank order; reduced in place. */
  buffers: BufferSlot[];
  /** Deadline of the reply in milliseconds, within the daemon's limits. */
  timeoutMs?: number;
}

/** NCCL's collectives, numbered as the rank rings number them (the index is the record's kind). */
export const COLLECTIVES = ['allreduce', 'broadcast', 'reduce', 'allgather', 'reducescatter', 'alltoall', 'barrier'] as const;
export type CollectiveName = (typeof COLLECTIVES)[number];
/** The collectives that reduce, and so take an `op`. */
export const REDUCING: ReadonlySet<CollectiveName> = new Set(['allreduce', 'reduce', 'reducescatter']);
/** The collectives with a root. */
export const ROOTED: ReadonlySet<CollectiveName> = new Set(['broadcast', 'reduce']);

export function isCollective(x: unknown): x is CollectiveName {
  return typeof x === 'string' && (COLLECTIVES as readonly string[]).includes(x);
}

/**
 * Elements a rank's send and receive buffers hold for `count`, NCCL's conventions (count is what
 * NCCL's call takes: per rank for allgather's input, reducescatter's output, alltoall's peers).
 */
/**
 * Whether a share's send and recv slots are NCCL's in-place pair for the collective: the same
 * bytes, except allgather (send is block `share` of recv) and reducescatter (recv is block
 * `share` of send). Offsets in bytes; `block` = count × element size.
 */
export function isInPlacePair(c: CollectiveName, sendOffset: number, recvOffset: number, block: number, share: number): boolean {
  if (c === 'alltoall' || c === 'barrier') return false;
  if (c === 'allgather') return sendOffset === recvOffset + share * block;
  if (c === 'reducescatter') return recvOffset === sendOffset + share * block;
  return sendOffset === recvOffset;
}

export function collectiveElements(c: CollectiveName, count: number, n: number): { send: number; recv: number } {
  switch (c) {
    case 'allgather':
      return { send: count, recv: count * n };
    case 'reducescatter':
      return { send: count * n, recv: count };
    case 'alltoall':
      return { send: count * n, recv: count * n };
    case 'barrier':
      return { send: 0, recv: 0 };
    default:
      return { send: count, recv: count };
  }
}

/**
 * Any collective. Without `group` (one client, every rank's buffer): `send` and `recv` hold one
 * slot per rank. With `group` (one member of a group, its own buffer): one slot each. No `recv`:
 * in place, as NCCL defines it (docs/protocol.md). Barrier takes no buffers, dtype or count.
 */
export interface CollectiveRequest {
  type: 'collective';
  id: number;
  collective: CollectiveName;
  /** A group this connection joined: the request is this member's next collective in it. */
  group?: number;
  dtype: DType;
  /** Reductions only. */
  op?: ReduceOp;
  count: number;
  /** broadcast and reduce: the root's rank (in the group, or in the world). */
  root?: number;
  send: BufferSlot[];
  recv?: BufferSlot[];
  timeoutMs?: number;
  /** Group form, nccl backend: a CUDA IPC event handle the rank's stream waits on before the collective. */
  waitEvent?: Uint8Array;
  /** Group form, nccl backend: a CUDA IPC event handle recorded right after the collective; a `launched` message says when. */
  doneEvent?: Uint8Array;
}

/** Sent before the result of a collective that named a doneEvent: the event is recorded on every rank's stream. */
export interface LaunchedNote {
  type: 'launched';
  id: number;
}

/** Joins (and, with its last member, forms) a named group of client processes. */
export interface JoinRequest {
  type: 'join';
  id: number;
  /** 1 to 128 characters. */
  group: string;
  size: number;
  rank: number;
  /** The world rank whose device this member's buffers live on. */
  device: number;
  timeoutMs?: number;
}

/** Leaves a group: the group is dissolved for every member. */
export interface LeaveRequest {
  type: 'leave';
  id: number;
  group: number;
}

/** Drops registrations; the memory is let go once no collective uses it any more. */
export interface ReleaseRequest {
  type: 'release';
  id: number;
  buffers: number[];
}

export type Request = RegisterRequest | AllReduceRequest | CollectiveRequest | JoinRequest | LeaveRequest | ReleaseRequest;
export const REQUEST_TYPES: readonly Request['type'][] = ['register', 'allreduce', 'collective', 'join', 'leave', 'release'];
/** Longest group name. */
export const MAX_GROUP_NAME = 128;

export interface HelloReply {
  type: 'hello';
  protocol: number;
  server: 'nccld';
  version: string;
  backend: 'host' | 'nccl';
  worldSize: number;
  /** Device ordinal of each rank as the daemon numbers them (null on the host backend). */
  devices: (number | null)[];
  /** Each rank's GPU UUID ("GPU-..."), to match the client's own numbering (null on the host backend). */
  deviceUuids: (string | null)[];
  maxFrameBytes: number;
  /** Requests this client process may have unfinished at once, over all its connections. */
  maxInFlight: number;
  /** Buffers this client process may have registered at once. */
  maxBuffers: number;
  /** Deadline of a collective that names none, and the longest one may name. */
  timeoutMs: number;
  maxTimeoutMs: number;
}

export interface ResultReply {
  type: 'result';
  id: number;
  /** allreduce, collective: the global sequence number the collective ran under. */
  seq?: number;
  /** join: the group's number on this connection, its size, this member's rank, and each rank's device. */
  group?: number;
  size?: number;
  rank?: number;
  devices?: number[];
  /** register: the buffer's number, and its usable size in bytes. */
  buffer?: number;
  bytes?: number;
}

export interface ErrorReply {
  type: 'error';
  /** The request's id, or null when the error is about the connection or a request without a usable id. */
  id: number | null;
  code: string;
  message: string;
  [detail: string]: unknown;
}

export type Reply = HelloReply | ResultReply | ErrorReply | LaunchedNote;

export function isId(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= MAX_REQUEST_ID;
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function bad(message: string): NccldError {
  return new NccldError(ErrorCodes.BAD_REQUEST, message);
}

export function parseHello(msg: Message): HelloMessage {
  if (msg.type !== 'hello') {
    throw new NccldError(ErrorCodes.HELLO_REQUIRED, `the first message must be a hello, not ${describe(msg.type)}`);
  }
  if (!isCount(msg.protocol)) throw bad('hello.protocol must be a non-negative integer');
  if (msg.client !== undefined && typeof msg.client !== 'string') throw bad('hello.client must be a string');
  return { type: 'hello', protocol: msg.protocol, client: msg.client?.slice(0, 200) };
}

/**
 * Checks a request's shape. A request without a usable id is refused with `invalidId` (what was
 * sent, if it is a plain value), since its reply cannot carry an id the client could match.
 */
export function parseRequest(msg: Message, worldSize: number): Request {
  if (!isId(msg.id)) {
    const shown = typeof msg.id === 'number' || typeof msg.id === 'string' ? msg.id : null;
    throw new NccldError(ErrorCodes.BAD_REQUEST, `a request needs an id: an integer from 0 to ${MAX_REQUEST_ID}`, { invalidId: shown });
  }
  switch (msg.type) {
    case 'allreduce':
      return parseAllReduce(msg, worldSize);
    case 'collective':
      return parseCollective(msg, worldSize);
    case 'join':
      return parseJoin(msg, worldSize);
    case 'leave':
      if (!isId(msg.group)) throw bad('leave.group must be a group number from a join');
      return { type: 'leave', id: msg.id, group: msg.group };
    case 'register':
      return parseRegister(msg);
    case 'release':
      return { type: 'release', id: msg.id, buffers: parseHandles(msg.buffers) };
    default:
      throw new NccldError(
        ErrorCodes.UNKNOWN_TYPE,
        `unknown message type ${describe(msg.type)}; this daemon knows ${REQUEST_TYPES.join(', ')}`,
      );
  }
}

function parseRegister(msg: Message): RegisterRequest {
  if (msg.ipc === undefined) return { type: 'register', id: msg.id as number };
  if (!(msg.ipc instanceof Uint8Array) || msg.ipc.length !== IPC_HANDLE_BYTES) {
    throw bad(`register.ipc must be a binary of ${IPC_HANDLE_BYTES} bytes (a CUDA IPC memory handle)`);
  }
  if (!isCount(msg.device)) throw bad('register.device must be the CUDA ordinal the memory was allocated on');
  // A copy: the decoded bytes may share the connection's read buffer, and this handle is kept.
  return { type: 'register', id: msg.id as number, ipc: Uint8Array.from(msg.ipc), device: msg.device };
}

function parseAllReduce(msg: Message, worldSize: number): AllReduceRequest {
  if (!isDType(msg.dtype)) {
    throw new NccldError(ErrorCodes.BAD_DTYPE, `dtype ${describe(msg.dtype)} is not one of ${DTYPE_NAMES.join(', ')}`);
  }
  if (!isReduceOp(msg.op)) {
    throw new NccldError(ErrorCodes.BAD_OP, `op ${describe(msg.op)} is not one of ${REDUCE_OP_NAMES.join(', ')}`);
  }
  if (!isCount(msg.count)) {
    throw new NccldError(ErrorCodes.BAD_COUNT, `count must be a non-negative integer, not ${describe(msg.count)}`);
  }
  if (msg.timeoutMs !== undefined && !(isCount(msg.timeoutMs) && msg.timeoutMs > 0)) {
    throw bad('timeoutMs must be a positive integer');
  }
  const list = msg.buffers;
  if (!Array.isArray(list)) throw bad('buffers must be an array: one registered buffer per rank');
  if (list.length !== worldSize) {
    throw new NccldError(ErrorCodes.BUFFER_COUNT, `allreduce needs one buffer per rank: ${worldSize}, in rank order; got ${list.length}`);
  }
  const buffers = list.map((b, i) => parseSlot(b, i));
  const req: AllReduceRequest = { type: 'allreduce', id: msg.id as number, dtype: msg.dtype, op: msg.op, count: msg.count, buffers };
  if (msg.timeoutMs !== undefined) req.timeoutMs = msg.timeoutMs as number;
  return req;
}

function parseTimeout(msg: Message): number | undefined {
  if (msg.timeoutMs !== undefined && !(isCount(msg.timeoutMs) && msg.timeoutMs > 0)) {
    throw bad('timeoutMs must be a positive integer');
  }
  return msg.timeoutMs as number | undefined;
}

function parseCollective(msg: Message, worldSize: number): CollectiveRequest {
  const c = msg.collective;
  if (!isCollective(c)) throw bad(`collective ${describe(c)} is not one of ${COLLECTIVES.join(', ')}`);
  const grouped = msg.group !== undefined;
  if (grouped && !isId(msg.group)) throw bad('group must be a group number from a join');
  const timeoutMs = parseTimeout(msg);
  const req: CollectiveRequest = { type: 'collective', id: msg.id as number, collective: c, dtype: 'u8', count: 0, send: [] };
  if (grouped) req.group = msg.group as number;
  if (timeoutMs !== undefined) req.timeoutMs = timeoutMs;
  if (c === 'barrier') return req;
  if (!isDType(msg.dtype)) {
    throw new NccldError(ErrorCodes.BAD_DTYPE, `dtype ${describe(msg.dtype)} is not one of ${DTYPE_NAMES.join(', ')}`);
  }
  req.dtype = msg.dtype;
  if (REDUCING.has(c)) {
    if (!isReduceOp(msg.op)) throw new NccldError(ErrorCodes.BAD_OP, `op ${describe(msg.op)} is not one of ${REDUCE_OP_NAMES.join(', ')}`);
    req.op = msg.op;
  }
  if (!isCount(msg.count)) throw new NccldError(ErrorCodes.BAD_COUNT, `count must be a non-negative integer, not ${describe(msg.count)}`);
  req.count = msg.count;
  if (ROOTED.has(c)) {
    if (!isCount(msg.root)) throw bad(`${c} needs a root: the rank whose buffer is ${c === 'broadcast' ? 'sent' : 'written'}`);
    req.root = msg.root;
  }
  // A group member names its own buffer; a single client names every rank's.
  const want = grouped ? 1 : worldSize;
  const slots = (field: 'send' | 'recv'): BufferSlot[] => {
    const x = msg[field];
    if (grouped) return [parseSlot(x, 0, field)];
    if (!Array.isArray(x)) throw bad(`${field} must be an array: one registered buffer per rank`);
    if (x.length !== want) throw new NccldError(ErrorCodes.BUFFER_COUNT, `${c} needs one ${field} buffer per rank: ${want}, in rank order; got ${x.length}`);
    return x.map((b, i) => parseSlot(b, i, field));
  };
  for (const field of ['waitEvent', 'doneEvent'] as const) {
    const h = msg[field];
    if (h === undefined || h === null) continue;
    if (!grouped) throw bad(`${field} needs the group form (one member, one GPU)`);
    if (!(h instanceof Uint8Array) || h.length !== IPC_HANDLE_BYTES) throw bad(`${field} must be a binary of ${IPC_HANDLE_BYTES} bytes (a CUDA IPC event handle)`);
    req[field] = Uint8Array.from(h);
  }
  req.send = slots('send');
  if (msg.recv !== undefined && msg.recv !== null) req.recv = slots('recv');
  else if (c === 'alltoall') throw bad('alltoall cannot run in place: give recv buffers');
  return req;
}

function parseJoin(msg: Message, worldSize: number): JoinRequest {
  const name = msg.group;
  if (typeof name !== 'string' || name.length < 1 || name.length > MAX_GROUP_NAME) {
    throw bad(`join.group must be a name of 1 to ${MAX_GROUP_NAME} characters`);
  }
  if (!isCount(msg.size) || msg.size < 1) throw bad('join.size must be a positive integer');
  if (!isCount(msg.rank) || msg.rank >= msg.size) throw bad(`join.rank must be an integer from 0 to size - 1 (${msg.size - 1})`);
  if (!isCount(msg.device)) throw bad('join.device must be the world rank whose device the buffers live on: a non-negative integer');
  if (msg.device >= worldSize) {
    throw new NccldError(ErrorCodes.WRONG_DEVICE, `join.device must be the world rank whose device the buffers live on: 0 to ${worldSize - 1}`);
  }
  const req: JoinRequest = { type: 'join', id: msg.id as number, group: name, size: msg.size, rank: msg.rank, device: msg.device };
  const timeoutMs = parseTimeout(msg);
  if (timeoutMs !== undefined) req.timeoutMs = timeoutMs;
  return req;
}

/** A slot is a buffer number, or a map {buffer, offset}. */
function parseSlot(b: unknown, i: number, field = 'buffers'): BufferSlot {
  if (isId(b)) return { buffer: b };
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw bad(`${field}[${i}] must be a registered buffer's number or a map {buffer, offset}`);
  const slot = b as Record<string, unknown>;
  if (!isId(slot.buffer)) throw bad(`${field}[${i}].buffer must be a registered buffer's number`);
  if (slot.offset !== undefined && !isCount(slot.offset)) throw bad(`${field}[${i}].offset must be a non-negative integer`);
  return slot.offset ? { buffer: slot.buffer, offset: slot.offset as number } : { buffer: slot.buffer };
}

function parseHandles(x: unknown): number[] {
  if (!Array.isArray(x) || x.length === 0) throw bad('buffers must be a non-empty array of registered buffer numbers');
  if (x.length > MAX_RELEASE_BUFFERS) throw bad(`release names at most ${MAX_RELEASE_BUFFERS} buffers at once, not ${x.length}`);
  for (let i = 0; i < x.length; i++) {
    if (!isId(x[i])) throw bad(`buffers[${i}] must be a registered buffer's number`);
  }
  return x as number[];
}

function describe(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.slice(0, 64));
  return x === null ? 'null' : typeof x;
}
