// One global order for every collective: requests from all clients enter one FIFO queue, and each
// gets its sequence number when it leaves the queue for the ranks, so every rank sees the same
// order. Every collective carries a deadline; one that cannot start or finish by it fails then.
import { performance } from 'node:perf_hooks';
import PQueue from 'p-queue';
import { DTYPES } from '../shared/dtypes.js';
import { ErrorCodes, NccldError, toNccldError } from '../shared/errors.js';
import type { FlightRecorder } from './flight-recorder.js';
import type { Stats } from './stats.js';
import type { Collective, World } from './world.js';

/** Who asked, for the flight recorder. */
export interface RequestMeta {
  requestId: number;
  clientName: string | null;
}

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

  constructor(
    private readonly world: World,
    private readonly opts: SchedulerOptions,
    private readonly recorder: FlightRecorder,
    private readonly stats: Stats,
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
   * A collective still queued at its deadline fails then and is never started.
   */
  submit(c: Omit<Collective, 'seq'>, deadline: number, abandoned: () => boolean, meta: RequestMeta): Promise<number> {
    if (this.queue.size + this.queue.pending >= this.opts.maxQueued) {
      return Promise.reject(new NccldError(ErrorCodes.BUSY, `the daemon has ${this.opts.maxQueued} collectives queued; retry later`));
    }
    const bytes = c.count * DTYPES[c.dtype].bytes;
    const rec = this.recorder.queued({ client: c.client, ...meta, kind: c.kind, dtype: c.dtype, op: c.op, count: c.count, bytes });
    let started = false;
    let expired = false;
    const ran = this.queue.add(async () => {
      started = true;
      if (expired) return 0; // already answered with TIMEOUT
      if (abandoned()) throw new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the client went away before its collective started');
      // Waits out a rebuild (up to the deadline), so the sequence number goes to a runnable world.
      await this.world.whenReady(deadline);
      const seq = this.nextSeq++;
      this.recorder.started(rec, seq, this.world.generation, this.world.size);
      const t0 = performance.now();
      await this.world.run({ ...c, seq }, deadline, (rank, failed) => this.recorder.rankDone(seq, rank, failed));
      this.stats.completed(bytes, performance.now() - t0);
      return seq;
    });
    let timer: NodeJS.Timeout | undefined;
    const queuedTooLong = new Promise<number>((_, reject) => {
      timer = setTimeout(() => {
        if (started) return; // the world enforces the deadline from here on
        expired = true;
        reject(new NccldError(ErrorCodes.TIMEOUT, `the deadline passed while the collective waited in the queue (${this.queue.size} waiting, ${this.queue.pending} running)`));
      }, Math.max(0, deadline - Date.now()));
    });
    return Promise.race([ran, queuedTooLong]).then(
      (seq) => {
        clearTimeout(timer);
        this.recorder.finish(rec, null);
        return seq;
      },
      (err) => {
        clearTimeout(timer);
        this.recorder.finish(rec, toNccldError(err));
        this.stats.collectiveFailed();
        throw err;
      },
    );
  }

  /** Resolves when nothing is queued or running. */
  drain(): Promise<void> {
    return this.queue.onIdle();
  }
}
