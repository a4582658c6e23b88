// Every error nccld reports, on the wire and in the SDK, carries one of these stable codes.
// Codes never change meaning; new ones may be added.
export const ErrorCodes = {
  /** A frame that is not valid MessagePack, or not a map. */
  BAD_FRAME: 'NCCLD_ERR_BAD_FRAME',
  /** A frame whose length prefix is over the maximum; the connection is closed after it. */
  FRAME_TOO_LARGE: 'NCCLD_ERR_FRAME_TOO_LARGE',
  /** A message of a type the daemon does not know. */
  UNKNOWN_TYPE: 'NCCLD_ERR_UNKNOWN_TYPE',
  /** A request sent before the hello exchange. */
  HELLO_REQUIRED: 'NCCLD_ERR_HELLO_REQUIRED',
  /** No protocol version both sides speak. */
  VERSION: 'NCCLD_ERR_VERSION',
  /** A well-formed message whose fields are missing or of the wrong kind. */
  BAD_REQUEST: 'NCCLD_ERR_BAD_REQUEST',
  /** The request id is already in flight on this connection. */
  DUPLICATE_ID: 'NCCLD_ERR_DUPLICATE_ID',
  BAD_DTYPE: 'NCCLD_ERR_BAD_DTYPE',
  BAD_OP: 'NCCLD_ERR_BAD_OP',
  BAD_COUNT: 'NCCLD_ERR_BAD_COUNT',
  /** The request does not name exactly one buffer per rank. */
  BUFFER_COUNT: 'NCCLD_ERR_BUFFER_COUNT',
  /** Buffer i says it belongs to a rank other than i. */
  WRONG_RANK: 'NCCLD_ERR_WRONG_RANK',
  /** Buffer i lives on a device other than rank i's. */
  WRONG_DEVICE: 'NCCLD_ERR_WRONG_DEVICE',
  /** A buffer of a kind this daemon's backend cannot use (GPU buffers on the host backend...). */
  WRONG_BACKEND: 'NCCLD_ERR_WRONG_BACKEND',
  /** The named buffer does not exist. */
  NO_SUCH_BUFFER: 'NCCLD_ERR_NO_SUCH_BUFFER',
  /** offset + count × element size runs past the end of a buffer. */
  BUFFER_TOO_SMALL: 'NCCLD_ERR_BUFFER_TOO_SMALL',
  /** Two buffers of one request share bytes; an in-place collective would race on them. */
  BUFFER_OVERLAP: 'NCCLD_ERR_BUFFER_OVERLAP',
  /** An offset that is not a multiple of the element size. */
  BAD_ALIGNMENT: 'NCCLD_ERR_BAD_ALIGNMENT',
  /** The buffer belongs to another user. */
  PERMISSION: 'NCCLD_ERR_PERMISSION',
  /** Too many requests in flight for this client process (or in the daemon): retry later. */
  BUSY: 'NCCLD_ERR_BUSY',
  /** The daemon, or this user, has as many connections as it allows; the connection is closed. */
  TOO_MANY_CONNECTIONS: 'NCCLD_ERR_TOO_MANY_CONNECTIONS',
  /** No hello within the daemon's hello deadline; the connection is closed. */
  HELLO_TIMEOUT: 'NCCLD_ERR_HELLO_TIMEOUT',
  /** The client left too many reply bytes unread for too long; the connection is closed. */
  SLOW_READER: 'NCCLD_ERR_SLOW_READER',
  /** This client process has registered as many buffers as it may; release some first. */
  TOO_MANY_BUFFERS: 'NCCLD_ERR_TOO_MANY_BUFFERS',
  /** Memory handed over that cannot be used safely: not a sealed memfd, or of no size. */
  BAD_BUFFER: 'NCCLD_ERR_BAD_BUFFER',
  /** The daemon ran out of a system resource (file descriptors, memory maps, processes): retry later. */
  RESOURCE_EXHAUSTED: 'NCCLD_ERR_RESOURCE_EXHAUSTED',
  /** The daemon is stopping and takes no new work. */
  SHUTTING_DOWN: 'NCCLD_ERR_SHUTTING_DOWN',
  /** The world is not (yet, or any more) able to run collectives. */
  NOT_READY: 'NCCLD_ERR_NOT_READY',
  /** The collective missed its deadline. */
  TIMEOUT: 'NCCLD_ERR_TIMEOUT',
  /** Cut short because the world broke under it (another rank failed); safe to retry. */
  ABORTED: 'NCCLD_ERR_ABORTED',
  /** A device process died while the collective was in flight. */
  DEVICE_LOST: 'NCCLD_ERR_DEVICE_LOST',
  /** The world failed past its restart budget. */
  WORLD_FAILED: 'NCCLD_ERR_WORLD_FAILED',
  /** NCCL reported an error. */
  NCCL: 'NCCLD_ERR_NCCL',
  /** The CUDA driver reported an error. */
  CUDA: 'NCCLD_ERR_CUDA',
  /** The GPU backend cannot run here (no driver, no NCCL, no device). */
  GPU_UNAVAILABLE: 'NCCLD_ERR_GPU_UNAVAILABLE',
  /** The connection to the daemon closed before the reply came (SDK side). */
  CONNECTION_CLOSED: 'NCCLD_ERR_CONNECTION_CLOSED',
  /** Could not reach the daemon at all (SDK side). */
  CONNECT: 'NCCLD_ERR_CONNECT',
  /** A native function was called with bad arguments: a bug in nccld. */
  INVALID_ARG: 'NCCLD_ERR_INVALID_ARG',
  /** A shared-memory buffer used after it was closed. */
  BUFFER_CLOSED: 'NCCLD_ERR_BUFFER_CLOSED',
  /** A native object (connection, GPU device or communicator) used after it was closed. */
  CLOSED: 'NCCLD_ERR_CLOSED',
  /** The members of a group submitted collectives that disagree (collective, dtype, op, count, root, in place). */
  MISMATCH: 'NCCLD_ERR_MISMATCH',
  /** A member of the group left or disconnected: the group is dissolved. */
  PEER_LOST: 'NCCLD_ERR_PEER_LOST',
  /** join: another member already holds this rank of the group. */
  GROUP_RANK_TAKEN: 'NCCLD_ERR_GROUP_RANK_TAKEN',
  /** join: the size differs from the group's, or exceeds the world. */
  GROUP_SIZE: 'NCCLD_ERR_GROUP_SIZE',
  /** join: another member of the group sits on this device. */
  GROUP_DEVICE_TAKEN: 'NCCLD_ERR_GROUP_DEVICE_TAKEN',
  /** A group number this connection does not hold. */
  NO_SUCH_GROUP: 'NCCLD_ERR_NO_SUCH_GROUP',
  /** A bug in nccld: please report it with the daemon's log. */
  INTERNAL: 'NCCLD_ERR_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

const knownCodes = new Set<string>(Object.values(ErrorCodes));

/** The one error class of nccld: a message for people and a stable `code` for programs. */
export class NccldError extends Error {
  readonly code: ErrorCode;
  /** Extra facts some codes carry, e.g. the ranks that had not finished for a timeout. */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'NccldError';
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && knownCodes.has(code);
}

/** Turns anything thrown into an NccldError; native errors already carry one of our codes. */
export function toNccldError(err: unknown, fallback: ErrorCode = ErrorCodes.INTERNAL): NccldError {
  if (err instanceof NccldError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new NccldError(isErrorCode(code) ? code : fallback, message);
}
