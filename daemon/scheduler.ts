// One global order for every collective, and fair turns between client processes. Each client
// process has its own queue; the ranks take the next collective from each process in turn, and a
// collective gets its sequence number when it leaves for the ranks, so every rank sees the same
// order. Deadlines live in one DeadlineQueue: a collective still queued at its deadline fails then
// and never runs; one already on the ranks gets its TIMEOUT reply then and runs on to its end.
import { performance } from 'node:perf_hooks';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { ClientProcess } from './client-process.js';
import type { Collective, CollectiveOwner } from './collective.js';
import { DeadlineQueue } from './deadlines.js';
import type { FlightRecorder } from './flight-recorder.js';
import type { Stats } from './stats.js';
import type { World } from './world.js';

export interface SchedulerOptions {
  /**
   * Collectives handed to the ranks at once. The host backend needs 1 per rank: its ranks write
   * into each other's buffers, so collective k+1 may start on a rank only after every rank of k
   * finished it (collectives on disjoint ranks, two groups', may run together). NCCL ranks order
   * work on their streams themselves, so they can take many.
   */
  window: number;
  /** Most collectives queued or running in the whole daemon; past it, NCCLD_ERR_BUSY. */
  maxQueued: number;
}

export class Scheduler {
  private nextSeq = 1;
  private queued = 0;
  private active = 0;
  /** Client processes with queued collectives, in turn order. */
  private readonly turns: ClientProcess[] = [];
  private readonly deadlines = new DeadlineQueue<Collective>((c) => this.expire(c));
  private idleWaiters: (() => void)[] = [];
  /** Window 1: collectives running on each world rank. */
  private readonly busy: Uint16Array;

  constructor(
    private readonly world: World,
    private readonly opts: SchedulerOptions,
    private readonly recorder: FlightRecorder,
    private readonly stats: Stats,
  ) {
    this.busy = new Uint16Array(world.size);
    world.on('state', (state: string) => {
      if (state === 'ready') this.pump();
      else if (state === 'failed') this.failQueued(world.failedError());
    });
  }

  get waiting(): number {
    return this.queued;
  }

  get running(): number {
    return this.active;
  }

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** Queues a collective; its owner is answered and told of its end. Throws when it cannot be queued. */
  submit(c: Collective): void {
    if (this.queued + this.active >= this.opts.maxQueued) {
      throw new NccldError(ErrorCodes.BUSY, `the daemon has ${this.opts.maxQueued} collectives queued; retry later`);
    }
    const state = this.world.state;
    if (state === 'failed') throw this.world.failedError();
    if (state === 'stopping' || state === 'stopped') throw new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping');
    const p = c.owner.process;
    p.queue.push(c);
    this.queued++;
    if (!p.hasTurn) {
      p.hasTurn = true;
      this.turns.push(p);
    }
    this.deadlines.add(c);
    this.pump();
  }

  /** Drops the queued collectives of a client that has gone; those on the ranks run to their end. */
  cancel(owner: CollectiveOwner): void {
    const p = owner.process;
    for (const c of p.queue.filter((q) => q.owner === owner)) {
      this.unqueue(c);
      this.end(c, new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the client went away before its collective started'));
    }
  }

  /** Fails every queued collective (the world failed, or the daemon stops). */
  failQueued(err: NccldError): void {
    for (const p of [...this.turns]) {
      for (const c of [...p.queue]) {
        this.unqueue(c);
        this.end(c, err);
      }
    }
  }

  /**
   * For shutdown: lets queued collectives start for up to `graceMs` (none, if the world cannot run
   * them now), then fails what is still queued with SHUTTING_DOWN. What still runs ends when the
   * ranks finish it or are stopped.
   */
  async drain(graceMs: number): Promise<void> {
    if (this.world.state === 'ready') {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.idle(), new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    this.failQueued(new NccldError(ErrorCodes.SHUTTING_DOWN, `the daemon stopped before this collective could start (world ${this.world.state})`));
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.queued + this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private pump(): void {
    while (this.turns.length > 0 && this.world.state === 'ready' && this.canStart(this.turns[0].queue[0])) {
      const p = this.turns.shift()!;
      const c = p.queue.shift()!;
      this.queued--;
      if (p.queue.length > 0) this.turns.push(p);
      else p.hasTurn = false;
      this.start(c);
    }
  }

  /** Whether the next collective in turn may go to the ranks now (the queue head waits otherwise). */
  private canStart(c: Collective): boolean {
    if (this.opts.window > 1) return this.active < this.opts.window;
    for (const r of c.parts.ranks) if (this.busy[r] > 0) return false;
    return true;
  }

  private start(c: Collective): void {
    c.seq = this.nextSeq++;
    c.state = 'running';
    this.active++;
    if (this.opts.window === 1) for (const r of c.parts.ranks) this.busy[r]++;
    this.recorder.started(c.rec, c.seq, this.world.generation, this.world.size);
    c.startedAt = performance.now();
    this.world.run(c, (err) => {
      this.active--;
      if (this.opts.window === 1) for (const r of c.parts.ranks) this.busy[r]--;
      if (!err) this.stats.completed(c.bytes, performance.now() - c.startedAt);
      this.end(c, err);
      this.pump();
    });
  }

  private expire(c: Collective): void {
    if (c.state === 'queued') {
      this.unqueue(c);
      const w = this.world;
      const why = w.state === 'ready' ? `${this.queued} queued, ${this.active} running` : `the world is ${w.state}: ${w.lastBreak}`;
      this.end(c, new NccldError(ErrorCodes.TIMEOUT, `the deadline passed while the collective waited for the ranks (${why}); it never ran`));
    } else if (c.state === 'running' && !c.replied) {
      // The client's deadline is the client's: answer now, let the ranks finish on their own.
      c.replied = true;
      c.owner.answer(c, new NccldError(ErrorCodes.TIMEOUT, `the deadline passed while collective seq ${c.seq} ran; it still runs to its end, and its buffers stay in use until then`, { seq: c.seq }));
    }
  }

  private unqueue(c: Collective): void {
    const p = c.owner.process;
    const i = p.queue.indexOf(c);
    if (i < 0) return;
    p.queue.splice(i, 1);
    this.queued--;
    if (p.queue.length === 0 && p.hasTurn) {
      p.hasTurn = false;
      this.turns.splice(this.turns.indexOf(p), 1);
    }
  }

  private end(c: Collective, err: NccldError | null): void {
    this.deadlines.remove(c);
    c.state = err ? 'failed' : 'done';
    this.recorder.finish(c.rec, err);
    if (err) this.stats.collectiveFailed();
    if (!c.replied) {
      c.replied = true;
      c.owner.answer(c, err);
    }
    c.owner.ended(c);
    if (this.queued + this.active === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}
