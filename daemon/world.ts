// The world: one device process per rank, started together, fed every collective in one order,
// and healed together. It fans a collective out to every rank and joins their replies. Only its
// own hang watchdog (a rank that has not finished a collective within the operator's threshold),
// a dead rank or a failed one breaks it; it then rebuilds itself under a new generation, within a
// restart budget, with backoff between attempts, and maps every registered buffer again.
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { ErrorCodes, NccldError, toNccldError, type ErrorCode } from '../shared/errors.js';
import type { Collective } from './collective.js';
import type { Logger } from './logger.js';
import { RankProcess } from './rank-process.js';
import { Registry, type Registration } from './registry.js';
import type { Backend } from './device/messages.js';
import { BACKENDS, type BackendTraits } from './backends.js';

export type WorldState = 'starting' | 'ready' | 'rebuilding' | 'failed' | 'stopping' | 'stopped';

export interface WorldOptions {
  backend: Backend;
  /** One entry per rank: the CUDA ordinal on the nccl backend, null on the host backend. */
  devices: (number | null)[];
  logLevel: string;
  logger: Logger;
  /** How long a device process gets to finish and exit on stop before it is killed. */
  stopGraceMs?: number;
  /** Rebuilds allowed within restartWindowMs; one more and the world is failed. */
  restartLimit: number;
  restartWindowMs: number;
  /** A collective not finished on a rank after this long means that rank hangs: the world breaks. */
  hangTimeoutMs: number;
  /** How long a device worker spins for the next collective before it sleeps. */
  ringSpinUs?: number;
  /** How long a device process may take to say it is ready. */
  startTimeoutMs?: number;
}

/** Which error a collective reports when its ranks failed differently: the root cause first. */
const CAUSE_ORDER: ErrorCode[] = [ErrorCodes.DEVICE_LOST, ErrorCodes.TIMEOUT, ErrorCodes.NCCL, ErrorCodes.CUDA];
const rankOfCause = (code: ErrorCode) => (code === ErrorCodes.ABORTED ? 100 : CAUSE_ORDER.indexOf(code) + 1 || 50);

/** Failures that leave a rank (or its communicator) unusable: the world must be rebuilt. */
const BREAKS_WORLD = new Set<ErrorCode>([ErrorCodes.DEVICE_LOST, ErrorCodes.TIMEOUT, ErrorCodes.NCCL, ErrorCodes.CUDA]);
/** Rebuild attempts after the first wait 100 ms, 200 ms, ... up to this. */
const MAX_BACKOFF_MS = 5_000;
/** A live rank must answer a ping within this during a rebuild. */
const PING_TIMEOUT_MS = 10_000;

export class World extends EventEmitter {
  state: WorldState = 'starting';
  failure: string | null = null;
  /** Rises on every rebuild attempt (and each NCCL communicator built). */
  generation = 0;
  /** When each rebuild of the current window started, for the restart budget. */
  private restarts: number[] = [];
  rebuilds = 0;
  lastBreak: string | null = null;
  readonly ranks: RankProcess[];
  /** 0..size-1: the ranks a collective over the whole world runs on. */
  readonly allRanks: readonly number[];
  readonly backend: Backend;
  readonly traits: BackendTraits;
  readonly registry = new Registry();
  /** Registrations waiting for the world to be ready (counted against the daemon-wide limit). */
  registering = 0;
  private readonly log: Logger;
  private readyWaiters: { resolve: () => void; reject: (e: NccldError) => void; timer: NodeJS.Timeout }[] = [];
  private healing: Promise<void> | null = null;
  /** Collectives on the ranks, oldest first (the watchdog looks at the head). */
  private readonly running = new Set<Collective>();
  private watchdog: NodeJS.Timeout | null = null;
  private backoff: { timer: NodeJS.Timeout; wake: () => void } | null = null;

  constructor(private readonly opts: WorldOptions) {
    super();
    this.backend = opts.backend;
    this.traits = BACKENDS[opts.backend];
    this.log = opts.logger;
    this.ranks = opts.devices.map(
      (device, rank) =>
        new RankProcess({
          rank,
          nranks: opts.devices.length,
          backend: opts.backend,
          device,
          logLevel: opts.logLevel,
          ringSpinUs: opts.ringSpinUs ?? 250,
          logger: opts.logger,
          startTimeoutMs: opts.startTimeoutMs ?? 120_000,
        }),
    );
    this.allRanks = this.ranks.map((r) => r.rank);
    for (const r of this.ranks) r.on('exit', (e: { expected: boolean }) => this.onRankExit(r, e.expected));
  }

  get size(): number {
    return this.ranks.length;
  }

  /** Starts every device process; ready only when each has said so (no sleeps, no guessing). */
  async start(): Promise<void> {
    const t0 = Date.now();
    try {
      await this.bringUp();
    } catch (err) {
      this.fail((err as Error).message);
      throw err;
    }
    this.becomeReady();
    const every = Math.max(10, Math.min(1_000, Math.floor(this.opts.hangTimeoutMs / 4)));
    this.watchdog = setInterval(() => this.checkHangs(), every);
    this.watchdog.unref();
    this.log.info({ size: this.size, backend: this.backend, ms: Date.now() - t0 }, 'world ready');
  }

  /** Resolves when the world can take work; waits out a rebuild until the deadline. */
  whenReady(deadline: number): Promise<void> {
    if (this.state === 'ready') return Promise.resolve();
    if (this.state === 'failed') return Promise.reject(this.failedError());
    if (this.state !== 'rebuilding' && this.state !== 'starting') {
      return Promise.reject(new NccldError(ErrorCodes.SHUTTING_DOWN, `the world is ${this.state}`));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.readyWaiters = this.readyWaiters.filter((w) => w !== waiter);
          reject(new NccldError(ErrorCodes.TIMEOUT, `the deadline passed while the world was being rebuilt (${this.lastBreak})`));
        }, Math.max(0, deadline - Date.now())),
      };
      this.readyWaiters.push(waiter);
    });
  }

  /**
   * Runs one collective on every rank; `onEnd` is called once, when every rank has reported (a
   * rank that dies reports DEVICE_LOST through its exit). Nothing here waits on a client deadline.
   */
  run(c: Collective, onEnd: (err: NccldError | null) => void): void {
    const ranks = c.parts.ranks;
    c.ranksLeft = ranks.length;
    // Ranks outside the collective (a group's) have nothing to report: null, not undefined.
    c.rankErrors = ranks.length === this.size ? new Array(this.size) : new Array(this.size).fill(null);
    for (const rank of ranks) c.rankErrors[rank] = undefined;
    this.running.add(c);
    const launched = c.parts.doneEvents ? this.rankLaunched : null;
    c.launchesLeft = launched ? c.parts.doneEvents!.filter((e) => e).length : 0;
    for (const rank of ranks) {
      const r = this.ranks[rank];
      r.run(c, (err) => this.rankDone(c, r.rank, err, onEnd), launched);
    }
  }

  /** A rank has a collective with done events on its stream: once all have, its owner hears. */
  private readonly rankLaunched = (c: Collective): void => {
    if (--c.launchesLeft === 0) c.owner.launched?.(c);
  };

  private rankDone(c: Collective, rank: number, err: NccldError | null, onEnd: (err: NccldError | null) => void): void {
    if (c.rankErrors[rank] !== undefined) return;
    c.rankErrors[rank] = err;
    c.rec.ranks[rank] = err ? 'failed' : 'done';
    if (--c.ranksLeft > 0) return;
    this.running.delete(c);
    onEnd(this.outcome(c));
  }

  /** The error a finished collective reports, if any; breaks the world when the failure says so. */
  private outcome(c: Collective): NccldError | null {
    if (c.hung) {
      return new NccldError(
        ErrorCodes.TIMEOUT,
        `collective seq ${c.seq} had not finished on rank${c.hung.length > 1 ? 's' : ''} ${c.hung.join(', ')} after the hang threshold of ${this.opts.hangTimeoutMs} ms; the world was rebuilt`,
        { ranks: c.hung },
      );
    }
    const failed = c.rankErrors.flatMap((e, rank) => (e ? [{ rank, error: e }] : []));
    if (failed.length === 0) return null;
    failed.sort((a, b) => rankOfCause(a.error.code) - rankOfCause(b.error.code));
    const cause = failed[0].error;
    const partial = this.traits.partialFailureBreaksWorld && failed.length < c.parts.ranks.length;
    if (partial || failed.some((f) => BREAKS_WORLD.has(f.error.code))) {
      this.breakWorld(`collective seq ${c.seq} failed: ${cause.message}`, []);
    }
    return new NccldError(cause.code, cause.message, { ranks: failed.map((f) => f.rank) });
  }

  /** The hang watchdog: the oldest collective on the ranks, unfinished past the threshold, breaks the world. */
  private checkHangs(): void {
    if (this.state !== 'ready') return;
    const now = performance.now();
    for (const c of this.running) {
      if (c.hung) continue;
      if (now - c.startedAt < this.opts.hangTimeoutMs) return;
      // rankErrors is sparse until every rank reports: walk the indices, not the entries.
      const stuck: number[] = [];
      for (let rank = 0; rank < this.size; rank++) if (c.rankErrors[rank] === undefined) stuck.push(rank);
      c.hung = stuck;
      this.breakWorld(
        `hang watchdog: collective seq ${c.seq} (${c.kind} ${c.dtype} ${c.op}, ${c.count} elements) not finished on rank${stuck.length > 1 ? 's' : ''} ${stuck.join(', ')} after ${this.opts.hangTimeoutMs} ms`,
        stuck,
      );
      return;
    }
  }

  /**
   * Something broke: stop feeding the ranks, abort their communicators, kill the ranks named,
   * and rebuild, unless the restart budget is spent. Idempotent while a rebuild is under way.
   */
  breakWorld(reason: string, kill: number[]): void {
    if (this.state === 'stopping' || this.state === 'stopped') return;
    for (const rank of kill) void this.ranks[rank].kill();
    if (this.state === 'rebuilding' || this.state === 'failed' || this.state === 'starting') return;
    this.state = 'rebuilding';
    this.lastBreak = reason;
    this.emit('state', this.state);
    this.log.error({ reason, generation: this.generation }, 'world broken; rebuilding');
    for (const r of this.ranks) if (r.state === 'ready') r.send({ t: 'abort' });
    this.healing = this.heal().finally(() => (this.healing = null));
  }

  /** Rebuilds from `failed` (debug command `rebuild`, SIGHUP), with a fresh restart budget. */
  retry(reason: string): Promise<void> {
    if (this.state === 'stopping' || this.state === 'stopped') return Promise.resolve();
    this.restarts = [];
    if (this.state === 'failed') {
      this.state = 'rebuilding';
      this.failure = null;
      this.lastBreak = reason;
      this.emit('state', this.state);
      this.log.warn({ reason }, 'rebuilding a failed world');
      this.healing = this.heal().finally(() => (this.healing = null));
    } else if (this.state === 'ready') {
      this.breakWorld(reason, []);
    }
    return this.healing ?? Promise.resolve();
  }

  private async heal(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) await this.sleep(Math.min(MAX_BACKOFF_MS, 100 * 2 ** (attempt - 1)));
      if (this.state !== 'rebuilding') return;
      const now = Date.now();
      this.restarts = this.restarts.filter((t) => now - t < this.opts.restartWindowMs);
      if (this.restarts.length >= this.opts.restartLimit) {
        this.fail(`restart budget spent (${this.opts.restartLimit} rebuilds in ${this.opts.restartWindowMs} ms); last: ${this.lastBreak}`);
        return;
      }
      this.restarts.push(now);
      this.rebuilds++;
      const t0 = Date.now();
      try {
        await this.bringUp();
      } catch (err) {
        if (this.state !== 'rebuilding') return;
        this.lastBreak = `rebuild failed: ${(err as Error).message}`;
        this.log.error({ err: (err as Error).message, attempt: attempt + 1 }, 'world rebuild attempt failed');
        for (const r of this.ranks) if (r.state === 'ready') r.send({ t: 'abort' });
        continue;
      }
      if (this.state !== 'rebuilding') return;
      this.becomeReady();
      this.log.info({ generation: this.generation, ms: Date.now() - t0, attempts: attempt + 1 }, 'world rebuilt');
      this.emit('rebuilt', this.generation);
      return;
    }
  }

  /** Waits between rebuild attempts; stop() cuts it short. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.backoff = null;
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.backoff = { timer, wake };
    });
  }

  /**
   * Restarts every rank that is not alive and healthy, maps every registered buffer into the new
   * ones, builds the communicator (nccl), then checks every rank again: a rank that died meanwhile
   * fails the attempt instead of leaving a world `ready` with a dead rank.
   */
  private async bringUp(): Promise<void> {
    this.generation++;
    const started: RankProcess[] = [];
    await Promise.all(
      this.ranks.map(async (r) => {
        if (r.state === 'ready' && (await r.ping(PING_TIMEOUT_MS).catch(() => false))) return;
        await r.kill();
        if (this.stoppingNow()) throw new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping');
        await r.start();
        r.generation = this.generation;
        started.push(r);
      }),
    );
    await this.reinstall(started);
    if (this.traits.needsCommunicator) await this.buildComm();
    const alive = await Promise.all(this.ranks.map((r) => r.ping(PING_TIMEOUT_MS).catch(() => false)));
    const dead = alive.flatMap((ok, rank) => (ok ? [] : [rank]));
    if (dead.length > 0) throw new NccldError(ErrorCodes.DEVICE_LOST, `rank${dead.length > 1 ? 's' : ''} ${dead.join(', ')} died during the rebuild`);
  }

  private stoppingNow(): boolean {
    return this.state === 'stopping' || this.state === 'stopped';
  }

  /** Maps every registered buffer into ranks that were (re)started; one that cannot be is marked lost. */
  private async reinstall(ranks: RankProcess[]): Promise<void> {
    if (ranks.length === 0 || this.registry.size === 0) return;
    const regs = [...this.registry.values()];
    await Promise.all(
      ranks.map(async (r) => {
        for (const reg of regs) {
          if (reg.kind === 'ipc' && reg.rank !== r.rank) continue;
          try {
            await this.installOn(r, reg);
          } catch (err) {
            const e = toNccldError(err);
            if (e.code === ErrorCodes.DEVICE_LOST) throw e; // the rank died: this attempt fails
            reg.lost = new NccldError(ErrorCodes.NO_SUCH_BUFFER, `buffer ${reg.id} could not be mapped again after a rebuild: ${e.message}`);
          }
        }
      }),
    );
  }

  private async installOn(r: RankProcess, reg: Registration): Promise<number> {
    if (reg.kind === 'memfd') {
      await r.mapFd(reg.id, reg.fd);
      return reg.bytes;
    }
    const info = await r.call<{ size: number; device: number }>({ t: 'open', id: reg.id, ipc: reg.ipc! });
    return info.size;
  }

  /**
   * Maps a new registration into the ranks that need it (every rank on the host backend, its
   * device's rank on nccl); resolves with its usable size. It is in the registry from the start,
   * so a rebuild meanwhile maps it into new ranks too.
   */
  async register(reg: Registration, deadline: number): Promise<number> {
    this.registering++;
    try {
      await this.whenReady(deadline);
    } catch (err) {
      reg.dispose();
      throw err;
    } finally {
      this.registering--;
    }
    this.registry.add(reg);
    const ranks = reg.kind === 'ipc' ? [this.ranks[reg.rank]] : this.ranks;
    for (let tries = 0; ; tries++) {
      try {
        const sizes = await withDeadline(Promise.all(ranks.map((r) => this.installOn(r, reg))), deadline, `buffer ${reg.id} was not mapped by every rank in time`);
        return Math.min(...sizes);
      } catch (err) {
        const e = toNccldError(err);
        // A rank lost meanwhile: the rebuild maps every registered buffer; wait for it and check again.
        if ((e.code === ErrorCodes.DEVICE_LOST || e.code === ErrorCodes.NOT_READY) && tries < 2 && this.state !== 'failed') {
          try {
            // The rank's exit may not have been handled yet: let the world notice it first.
            if (this.state === 'ready') await this.stateChange(500);
            await this.whenReady(deadline);
            continue;
          } catch {
            // fall through: give up on it
          }
        }
        void this.unregister(reg);
        throw e;
      }
    }
  }

  /** Resolves at the next state change, or after `ms`. */
  private stateChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off('state', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.on('state', done);
    });
  }

  /**
   * Drops a registration from every rank (after whatever they run now) and closes its descriptor.
   * Resolves once each rank has dropped it (a rank that is gone holds nothing).
   */
  async unregister(reg: Registration): Promise<void> {
    this.registry.delete(reg);
    const ranks = this.ranks.filter((r) => reg.kind === 'memfd' || r.rank === reg.rank);
    await Promise.allSettled(ranks.map((r) => this.unmapOn(r, reg.id)));
    reg.dispose();
  }

  /** Unmaps asked for in this turn of the event loop, per rank: sent as one message each. */
  private readonly unmapBatch = new Map<RankProcess, { ids: number[]; done: Promise<unknown> }>();

  /**
   * Drops buffer `id` on rank `r`, together with the others dropped in the same turn (a release
   * names up to 1024): one message per buffer and rank held the event loop, and the ranks, for
   * tens of milliseconds.
   */
  private unmapOn(r: RankProcess, id: number): Promise<unknown> {
    let batch = this.unmapBatch.get(r);
    if (!batch) {
      const ids: number[] = [];
      const done = Promise.resolve().then(() => {
        this.unmapBatch.delete(r);
        return r.call({ t: 'unmap', ids });
      });
      batch = { ids, done };
      this.unmapBatch.set(r, batch);
    }
    batch.ids.push(id);
    return batch.done;
  }

  private becomeReady(): void {
    this.state = 'ready';
    this.failure = null;
    this.emit('state', this.state);
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  /** Rank 0 makes a unique id; every rank joins the communicator built from it. */
  private async buildComm(): Promise<void> {
    const generation = this.generation;
    const t0 = Date.now();
    const first = this.ranks[0];
    const idReply = first.expect('uniqueId');
    first.send({ t: 'uniqueId' });
    const { uniqueId, error } = await idReply;
    if (error || !uniqueId) throw new NccldError(ErrorCodes.NCCL, `rank 0 could not make an NCCL unique id: ${error?.message}`);
    const readies = this.ranks.map((r) => {
      const ready = r.expect('commReady');
      r.send({ t: 'comm', generation, uniqueId });
      return ready;
    });
    const replies = await Promise.all(readies);
    const bad = replies.flatMap((m, rank) => (m.error ? [`rank ${rank}: ${m.error.message}`] : []));
    if (bad.length > 0) throw new NccldError(ErrorCodes.NCCL, `NCCL communicator not built: ${bad.join('; ')}`);
    this.log.info({ generation, ms: Date.now() - t0 }, 'NCCL communicator ready on every rank');
  }

  /** Each rank's counters (buffers mapped; IPC opens and closes on the nccl backend). */
  rankStats(): Promise<Record<string, number>[]> {
    return Promise.all(this.ranks.map((r) => r.call<Record<string, number>>({ t: 'stats' })));
  }

  /** Stops every rank (killing those that do not stop in time) from any state; a rebuild under way ends too. */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopping';
    if (this.watchdog) clearInterval(this.watchdog);
    this.backoff?.wake();
    const stopping = new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping');
    for (const w of this.readyWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(stopping);
    }
    for (const r of this.ranks) r.retire();
    // Ranks first: a rebuild waiting on one (a start that hangs) ends when its process does.
    await Promise.all(this.ranks.map((r) => r.stop(this.opts.stopGraceMs ?? 10_000)));
    await this.healing?.catch(() => {});
    for (const reg of [...this.registry.values()]) reg.dispose();
    this.state = 'stopped';
    this.log.info('world stopped');
  }

  private onRankExit(rank: RankProcess, expected: boolean): void {
    if (expected || this.state === 'stopping' || this.state === 'stopped' || this.state === 'starting') return;
    this.breakWorld(`device process of rank ${rank.rank} (pid ${rank.pid}) died`, []);
  }

  failedError(): NccldError {
    return new NccldError(ErrorCodes.WORLD_FAILED, `the world has failed: ${this.failure}; fix the cause, then send 'rebuild' to the debug socket`);
  }

  private fail(reason: string): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.failure = reason;
    this.log.error({ reason }, 'world failed');
    this.emit('state', this.state);
    const err = this.failedError();
    for (const w of this.readyWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }
}

/** `work`, or a TIMEOUT at the deadline (the work itself is not cancelled). */
function withDeadline<T>(work: Promise<T>, deadline: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NccldError(ErrorCodes.TIMEOUT, what)), Math.max(0, deadline - Date.now()));
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}
