// One global order for every collective: requests from all clients enter one FIFO queue, and each
// gets its sequence number when it leaves the queue for the ranks, so every rank sees the same order.
import PQueue from 'p-queue';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { Collective, World } from './world.js';

export interface SchedulerOptions {
  /**
   * Collectives handed to the ranks at once. The host backend needs 1: its ranks write into each
   * other's buffers, so collective k+1 may start on a rank only after every rank finished k.
   * NCCL ranks order work on their streams themselves, so they can take many.
   */
  window: number;
  /** Most collectives waiting or running in the whole daemon; past it, NCCLD_ERR_BUSY. */
  maxQueued: number;
}

export class Scheduler {
  private nextSeq = 1;
  private readonly queue: PQueue;
  served = 0;
  failed = 0;

  constructor(
    private readonly world: World,
    private readonly opts: SchedulerOptions,
  ) {
    this.queue = new PQueue({ concurrency: opts.window });
  }

  get waiting(): number {
    return this.queue.size;
  }

  get running(): number {
    return this.queue.pending;
  }

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /**
   * Queues a collective; resolves with its sequence number once every rank has finished it.
   * `abandoned` is asked just before dispatch: work for a client that has gone is never started.
   */
  submit(c: Omit<Collective, 'seq'>, abandoned: () => boolean): Promise<number> {
    if (this.queue.size + this.queue.pending >= this.opts.maxQueued) {
      return Promise.reject(new NccldError(ErrorCodes.BUSY, `the daemon has ${this.opts.maxQueued} collectives queued; retry later`));
    }
    return this.queue.add(async () => {
        if (abandoned()) throw new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the client went away before its collective started');
        const seq = this.nextSeq++;
        try {
          await this.world.run({ ...c, seq });
          this.served++;
          return seq;
        } catch (err) {
          this.failed++;
          throw err;
        }
    });
  }

  /** Resolves when nothing is queued or running. */
  drain(): Promise<void> {
    return this.queue.onIdle();
  }
}
