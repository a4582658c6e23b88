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
}

export class Collective implements Expiring {
  heapIndex = -1;
  seq = 0;
  state: CollectiveState = 'queued';
  /** The client has been answered already (its deadline passed while the ranks still worked). */
  replied = false;
  /** Ranks that have not reported yet, and what each one reported. */
  ranksLeft = 0;
  rankErrors: (NccldError | null | undefined)[] = [];
  /** Ranks the hang watchdog found stuck on this collective. */
  hung: number[] | null = null;
  /** performance.now() when it was handed to the ranks. */
  startedAt = 0;

  constructor(
    readonly owner: CollectiveOwner,
    readonly requestId: number,
    readonly kind: 'allreduce',
    readonly dtype: DType,
    readonly op: ReduceOp,
    readonly count: number,
    readonly slots: Slot[],
    public deadline: number,
    readonly rec: OpRecord,
  ) {}

  /** Bytes per rank's buffer. */
  get bytes(): number {
    return this.count * DTYPES[this.dtype].bytes;
  }
}
