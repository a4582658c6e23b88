// Messages between the daemon and its device processes, over the fork IPC channel
// (advanced serialization, so Buffers and bigints pass as they are). Daemon-internal: clients never see these.

export type Backend = 'host' | 'nccl';


/** Daemon → device: sent once, right after the fork. */
export interface InitMessage {
  t: 'init';
  rank: number;
  nranks: number;
  backend: Backend;
  /** CUDA ordinal (nccl backend only). */
  device: number | null;
  logLevel: string;
  /** How long the ring worker spins for the next collective before it sleeps. */
  ringSpinUs: number;
  /** The daemon's pid: the device process asks the kernel to kill it if that process dies. */
  parentPid: number;
  /** Fault injection: crash right after start (a crash loop, for the restart budget). */
  fault?: 'crash';
}

/** Daemon → device: the world broke; abort the communicator so nothing waits on a dead peer. */
export interface AbortMessage {
  t: 'abort';
}

/** Daemon → device (fault injection only): what the next collective on this rank does. */
export interface InjectMessage {
  t: 'inject';
  call: number;
  fault: 'crash' | 'hang' | 'fail';
}

/** Daemon → device: build the communicator of this generation from rank 0's unique id (nccl only). */
export interface CommMessage {
  t: 'comm';
  generation: number;
  uniqueId: Uint8Array;
}

/** Daemon → device: give me a fresh NCCL unique id (sent to rank 0 only). */
export interface UniqueIdRequest {
  t: 'uniqueId';
}

/** Daemon → device: drop these registered buffers, once no collective sent uses them. */
export interface UnmapMessage {
  t: 'unmap';
  call: number;
  ids: number[];
}

/** Daemon → device (host): map the memfd waiting on the fd channel, tagged `id`, under that id. */
export interface MapMessage {
  t: 'map';
  call: number;
  id: number;
}

/** Daemon → device (nccl): open a CUDA IPC handle under `id`; answers its usable size and device. */
export interface OpenMessage {
  t: 'open';
  call: number;
  id: number;
  ipc: Uint8Array;
}

/** Daemon → device: counters for status and tests. */
export interface StatsRequest {
  t: 'stats';
  call: number;
}

/** Daemon → device: attach the ring whose descriptors wait on the fd channel, tagged RING_TAG. */
export interface RingMessage {
  t: 'ring';
  call: number;
}

/** Daemon → device: are you alive? (checked before a rebuilt world says it is ready). */
export interface PingMessage {
  t: 'ping';
  call: number;
}

/** The messages answered with a reply, without their call number (RankProcess adds it). */
export type CallMessage = Omit<InjectMessage, 'call'> | Omit<RingMessage, 'call'> | Omit<UnmapMessage, 'call'> | Omit<MapMessage, 'call'> | Omit<OpenMessage, 'call'> | Omit<StatsRequest, 'call'> | Omit<PingMessage, 'call'>;

export interface LogLevelMessage {
  t: 'logLevel';
  level: string;
}

export interface StopMessage {
  t: 'stop';
}

export type ToDevice =
  | InitMessage
  | CommMessage
  | UniqueIdRequest
  | UnmapMessage
  | MapMessage
  | OpenMessage
  | StatsRequest
  | PingMessage
  | RingMessage
  | AbortMessage
  | InjectMessage
  | LogLevelMessage
  | StopMessage;

export interface ReadyMessage {
  t: 'ready';
  pid: number;
  deviceName: string | null;
  deviceUuid?: string | null;
  error?: WireError;
}

export interface UniqueIdMessage {
  t: 'uniqueId';
  uniqueId?: Uint8Array;
  error?: WireError;
}

export interface CommReadyMessage {
  t: 'commReady';
  generation: number;
  error?: WireError;
}

/** Device → daemon: the answer to a call (map, open, ping, stats). */
export interface CallReply {
  t: 'reply';
  call: number;
  value?: unknown;
  error?: WireError;
}

export interface WireError {
  code: string;
  message: string;
}

export interface FatalMessage {
  t: 'fatal';
  error: WireError;
}

export type FromDevice = ReadyMessage | UniqueIdMessage | CommReadyMessage | CallReply | FatalMessage;
