// The world: one device process per rank, started together, fed every collective in one order,
// and healed together. It fans a collective out to every rank, joins their replies within the
// collective's deadline, and when a rank dies, hangs or fails it rebuilds itself under a new
// generation, within a restart budget.
import { EventEmitter } from 'node:events';
import { ErrorCodes, NccldError, type ErrorCode } from '../shared/errors.js';
import type { BufferRef } from '../shared/protocol.js';
import type { Logger } from './logger.js';
import { RankProcess } from './rank-process.js';
import type { Backend, RunMessage } from './device/messages.js';

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
}

/** A collective as the world runs it: validated, sequenced, one buffer per rank. */
export interface Collective {
  seq: number;
  client: number;
  kind: 'allreduce';
  dtype: RunMessage['dtype'];
  op: RunMessage['op'];
  count: number;
  buffers: BufferRef[];
}

/** Which error a collective reports when its ranks failed differently: the root cause first. */
const CAUSE_ORDER: ErrorCode[] = [ErrorCodes.DEVICE_LOST, ErrorCodes.TIMEOUT, ErrorCodes.NCCL, ErrorCodes.CUDA];
const rankOfCause = (code: ErrorCode) => (code === ErrorCodes.ABORTED ? 100 : CAUSE_ORDER.indexOf(code) + 1 || 50);

/** Failures that leave a rank (or its communicator) unusable: the world must be rebuilt. */
const BREAKS_WORLD = new Set<ErrorCode>([ErrorCodes.DEVICE_LOST, ErrorCodes.TIMEOUT, ErrorCodes.NCCL, ErrorCodes.CUDA]);

export class World extends EventEmitter {
  state: WorldState = 'starting';
  failure: string | null = null;
  /** Rises on every rebuild (and each NCCL communicator built). */
  generation = 0;
  /** When each rebuild of the current window started, for the restart budget. */
  private restarts: number[] = [];
  rebuilds = 0;
  lastBreak: string | null = null;
  readonly ranks: RankProcess[];
  readonly backend: Backend;
  private readonly log: Logger;
  private readyWaiters: { resolve: () => void; reject: (e: NccldError) => void }[] = [];
  private healing: Promise<void> | null = null;

  constructor(private readonly opts: WorldOptions) {
    super();
    this.backend = opts.backend;
    this.log = opts.logger;
    this.ranks = opts.devices.map(
      (device, rank) =>
        new RankProcess({
          rank,
          nranks: opts.devices.length,
          backend: opts.backend,
          device,
          logLevel: opts.logLevel,
          logger: opts.logger,
        }),
    );
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
    this.log.info({ size: this.size, backend: this.backend, ms: Date.now() - t0 }, 'world ready');
  }

  /** Resolves when the world can take a collective; waits out a rebuild until the deadline. */
  whenReady(deadline: number): Promise<void> {
    if (this.state === 'ready') return Promise.resolve();
    if (this.state === 'failed') return Promise.reject(this.failedError());
    if (this.state !== 'rebuilding' && this.state !== 'starting') {
      return Promise.reject(new NccldError(ErrorCodes.SHUTTING_DOWN, `the world is ${this.state}`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== waiter);
        reject(new NccldError(ErrorCodes.TIMEOUT, `the deadline passed while the world was being rebuilt (${this.lastBreak})`));
      }, Math.max(0, deadline - Date.now()));
      const waiter = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e: NccldError) => (clearTimeout(timer), reject(e)),
      };
      this.readyWaiters.push(waiter);
    });
  }

  /**
   * Runs one collective on every rank; resolves when all have finished. Rejects naming the ranks
   * that failed, or at the deadline naming those that had not finished (and heals the world).
   */
  async run(c: Collective, deadline: number, onRank?: (rank: number, failed: boolean) => void): Promise<void> {
    if (this.state !== 'ready') await this.whenReady(deadline);
    const settled: (NccldError | null | undefined)[] = new Array(this.size).fill(undefined);
    const all = Promise.all(
      this.ranks.map((r) =>
        r
          .run({
            t: 'run',
            seq: c.seq,
            client: c.client,
            kind: c.kind,
            dtype: c.dtype,
            op: c.op,
            count: c.count,
            // Host ranks each reduce a slice across all buffers; an NCCL rank needs only its own.
            buffers: this.backend === 'host' ? c.buffers : [c.buffers[r.rank]],
          })
          .then(
            () => {
              settled[r.rank] = null;
              onRank?.(r.rank, false);
            },
            (err: NccldError) => {
              settled[r.rank] = err;
              onRank?.(r.rank, true);
            },
          ),
      ),
    );
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), Math.max(0, deadline - Date.now())))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      const stuck = settled.flatMap((s, rank) => (s === undefined ? [rank] : []));
      const why = `collective seq ${c.seq} (${c.kind} ${c.dtype} ${c.op}, ${c.count} elements) missed its deadline: rank${stuck.length > 1 ? 's' : ''} ${stuck.join(', ')} had not finished`;
      this.breakWorld(why, stuck);
      throw new NccldError(ErrorCodes.TIMEOUT, why, { ranks: stuck });
    }
    const failed = settled.flatMap((e, rank) => (e ? [{ rank, error: e }] : []));
    if (failed.length === 0) return;
    failed.sort((a, b) => rankOfCause(a.error.code) - rankOfCause(b.error.code));
    const cause = failed[0].error;
    // NCCL ranks that went ahead wait for the ones that failed: partial failure breaks the world.
    const partial = this.backend === 'nccl' && failed.length < this.size;
    if (partial || failed.some((f) => BREAKS_WORLD.has(f.error.code))) {
      this.breakWorld(`collective seq ${c.seq} failed: ${cause.message}`, []);
    }
    throw new NccldError(cause.code, cause.message, { ranks: failed.map((f) => f.rank) });
  }

  /**
   * Something broke: stop feeding the ranks, abort their communicators, kill the ranks named,
   * and rebuild, unless the restart budget is spent. Idempotent while a rebuild is under way.
   */
  breakWorld(reason: string, kill: number[]): void {
    if (this.state === 'stopping' || this.state === 'stopped') return;
    for (const rank of kill) void this.ranks[rank].kill();
    if (this.state === 'rebuilding' || this.state === 'failed') return;
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
      this.log.warn({ reason }, 'rebuilding a failed world');
      this.healing = this.heal().finally(() => (this.healing = null));
    } else if (this.state === 'ready') {
      this.breakWorld(reason, []);
    }
    return this.healing ?? Promise.resolve();
  }

  private async heal(): Promise<void> {
    for (;;) {
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
        this.lastBreak = `rebuild failed: ${(err as Error).message}`;
        this.log.error({ err }, 'world rebuild failed');
        for (const r of this.ranks) if (r.state === 'ready') r.send({ t: 'abort' });
        if (this.state !== 'rebuilding') return;
        continue;
      }
      if (this.state !== 'rebuilding') return;
      this.becomeReady();
      this.log.info({ generation: this.generation, ms: Date.now() - t0 }, 'world rebuilt');
      this.emit('rebuilt', this.generation);
      return;
    }
  }

  /** Starts every rank that is not running, then (nccl) builds a communicator of a new generation. */
  private async bringUp(): Promise<void> {
    this.generation++;
    await Promise.all(
      this.ranks.map(async (r) => {
        if (r.state === 'ready') return;
        await r.exited();
        if (this.state === 'stopping' || this.state === 'stopped') throw new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping');
        await r.start();
        r.generation = this.generation;
      }),
    );
    if (this.backend === 'nccl') await this.buildComm();
  }

  private becomeReady(): void {
    this.state = 'ready';
    this.failure = null;
    this.emit('state', this.state);
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve();
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

  /** Opens a client's GPU buffer on its rank (once; ranks cache it) and says how big it is. */
  openBuffer(client: number, rank: number, buffer: BufferRef): Promise<{ size: number; device: number }> {
    return this.ranks[rank].call({ t: 'open', client, buffer });
  }

  /** Each rank's counters (buffers mapped; IPC opens and closes on the nccl backend). */
  rankStats(): Promise<Record<string, number>[]> {
    return Promise.all(this.ranks.map((r) => r.call<Record<string, number>>({ t: 'stats' })));
  }

  /** Drops a client's buffer mappings on every rank, after whatever that rank is running now. */
  forgetClient(client: number, buffers?: BufferRef[]): void {
    for (const r of this.ranks) r.send({ t: 'forget', client, ...(buffers ? { buffers } : {}) });
  }

  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopping';
    const stopping = new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping');
    for (const w of this.readyWaiters.splice(0)) w.reject(stopping);
    // Ranks first: a rebuild waiting on one (a start that hangs) ends when its process does.
    await Promise.all(this.ranks.map((r) => r.stop(this.opts.stopGraceMs ?? 10_000)));
    await this.healing?.catch(() => {});
    this.state = 'stopped';
    this.log.info('world stopped');
  }

  private onRankExit(rank: RankProcess, expected: boolean): void {
    if (expected || this.state === 'stopping' || this.state === 'stopped' || this.state === 'starting') return;
    this.breakWorld(`device process of rank ${rank.rank} (pid ${rank.pid}) died`, []);
  }

  private failedError(): NccldError {
    return new NccldError(ErrorCodes.WORLD_FAILED, `the world has failed: ${this.failure}; fix the cause, then send 'rebuild' to the debug socket`);
  }

  private fail(reason: string): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.failure = reason;
    this.log.error({ reason }, 'world failed');
    this.emit('state', this.state);
    const err = this.failedError();
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
  }
}
