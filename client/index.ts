// nccld's client SDK: connect to the daemon, hand it buffers, await collectives.
export { Client, connect } from './client.js';
export type {
  AllReduceOptions,
  AllReduceResult,
  AllToAllOptions,
  BarrierOptions,
  BufferArg,
  BufferLike,
  CollectiveOptions,
  CollectiveResult,
  ConnectOptions,
  DataOptions,
  JoinOptions,
  ReduceOptions,
  RootedOptions,
  RootedReduceOptions,
} from './client.js';
export { Group } from './group.js';
export { HostBuffer } from './host-buffer.js';
export { DeviceBuffer } from './device-buffer.js';
export { typedArray } from '../shared/typed-arrays.js';
export type { ViewOf } from '../shared/typed-arrays.js';
export { NccldError, ErrorCodes } from '../shared/errors.js';
export type { ErrorCode } from '../shared/errors.js';
export { DTYPES, DTYPE_NAMES, REDUCE_OPS, REDUCE_OP_NAMES } from '../shared/dtypes.js';
export type { DType, ReduceOp, DTypeInfo } from '../shared/dtypes.js';
export type { BufferSlot, CollectiveName, HelloReply } from '../shared/protocol.js';
export { COLLECTIVES, PROTOCOL_VERSION } from '../shared/protocol.js';
