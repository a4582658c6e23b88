// One collective as the daemon runs it, from admission to its end: its state, its deadline, its
// buffers, per-rank progress and its flight-recorder entry, all in one object (as PyTorch's
// WorkNCCL holds one NCCL call). The client's deadline ends the client's wait only: a collective
// that has reached the ranks runs to its end, and its buffers stay mapped until then.
import type { DType, ReduceOp } from '../shared/dtypes.js';
import { DTYPES } from '../shared/dtypes.js';
import type { NccldError } from '../shared/errors.js';
import type { ClientProcess } from './client-process.js';
import type { Expiring } from './deadlines.js';
import type { OpRecord } from './flight-recorder.js';
import type { Registration } from './registry.js';
import type { CollectiveName } from '../shared/protocol.js';

export type CollectiveState = 'queued' | 'running' | 'done' | 'failed';

/** One rank's buffer in a collective: a registration and a byte offset into it. */
export interface Slot {
  reg: Registration;
  offset: number;
}

/** Who asked: answered once (at the deadline or the end), and told of the end in any case. */
export interface CollectiveOwner {
  readonly process: ClientProcess;
  /** Sends the client its reply; called once per collective. */
  answer(c: Collective, err: NccldError | null): void;
  /** The collective has ended on every rank: its buffers and its place in the limits are free. */
  ended(c: Collective): void;
  /** Every rank has it on its stream with the done events recorded (only asked for with doneEvents). */
  launched?(c: Collective): void;
}

/** What a collective record asks the ranks to do: a collective, or (NCCL) communicator control. */
export type CollectiveKind = CollectiveName | 'split' | 'free';

/** Ring record kinds, in native/ring_layout.h's numbering. */
export const RECORD_KINDS: Readonly<Record<CollectiveKind, number>> = {
  allreduce: 0,
  broadcast: 1,
  reduce: 2,
  allgather: 3,
  reducescatter: 4,
  alltoall: 5,
  barrier: 6,
  split: 7,
  free: 8,
};

/** Who takes part and where: the world ranks, one per share, and their buffers in the same order. */
export interface Participants {
  /** World ranks in share order (a group's rank order); the world's own order for a single client. */
  readonly ranks: readonly number[];
  /** Each share's send buffer (empty for barrier and communicator control). */
  send: Slot[];
  /** Each share's receive buffer; null: in place. */
  recv: Slot[] | null;
  /** NCCL: the communicator (0 the world's, else a group's split one). */
  comm: number;
  /** A group's collective (shares are the group's ranks) rather than the world's. */
  grouped: boolean;
  /** split: each world rank's key in the new communicator, -1 for a rank outside it. */
  splitKeys?: number[];
  /** NCCL, per share: the client's event its rank's stream waits on first, and the one recorded after. */
  waitEvents?: (Uint8Array | null)[];
  doneEvents?: (Uint8Array | null)[];
}

export class Collective implements Expiring {
  heapIndex = -1;
  seq = 0;
  state: CollectiveState = 'queued';
  /** The client has been answered already (its deadline passed while the ranks still worked). */
  replied = false;
  /** Ranks that have not reported yet, and what each one reported (by world rank). */
  ranksLeft = 0;
  /** Ranks yet to say they launched it (with done events only). */
  launchesLeft = 0;
  rankErrors: (NccldError | null | undefined)[] = [];
  /** Ranks the hang watchdog found stuck on this collective. */
  hung: number[] | null = null;
  /** performance.now() when it was handed to the ranks. */
  startedAt = 0;

  constructor(
    readonly owner: CollectiveOwner,
    readonly requestId: number,
    readonly kind: CollectiveKind,
    readonly dtype: DType,
    readonly op: ReduceOp,
    readonly count: number,
    readonly root: number,
    readonly parts: Participants,
    public deadline: number,
    readonly rec: OpRecord,
  ) {}

  /** Bytes per rank's send buffer. */
  get bytes(): number {
    return this.count * DTYPES[this.dtype].bytes;
  }

}

/** Whether two slots of one registration, of these byte lengths, share bytes. */
export function slotsOverlap(a: Slot, aBytes: number, b: Slot, bBytes: number): boolean {
  return a.reg === b.reg && aBytes > 0 && bBytes > 0 && a.offset < b.offset + bBytes && b.offset < a.offset + aBytes;
}
