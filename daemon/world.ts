// The world: one device process per rank, started together, fed every collective in one order,
// and stopped together. It fans a collective out to every rank and joins their replies.
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { BufferRef } from '../shared/protocol.js';
import type { Logger } from './logger.js';
import { RankProcess } from './rank-process.js';
import type { Backend, RunMessage } from './device/messages.js';

export type WorldState = 'starting' | 'ready' | 'failed' | 'stopping' | 'stopped';

export interface WorldOptions {
  backend: Backend;
  /** One entry per rank: the CUDA ordinal on the nccl backend, null on the host backend. */
  devices: (number | null)[];
  logLevel: string;
  logger: Logger;
  /** How long a device process gets to finish and exit on stop before it is killed. */
  stopGraceMs?: number;
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

export class World {
  state: WorldState = 'starting';
  failure: string | null = null;
  /** Rises each time an NCCL communicator is built; 0 on the host backend. */
  generation = 0;
  readonly ranks: RankProcess[];
  readonly backend: Backend;
  private readonly log: Logger;

  constructor(private readonly opts: WorldOptions) {
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
      await Promise.all(this.ranks.map((r) => r.start()));
      if (this.backend === 'nccl') await this.buildComm();
    } catch (err) {
      this.fail((err as Error).message);
      throw err;
    }
    if (this.state !== 'starting') throw new NccldError(ErrorCodes.NOT_READY, `world is ${this.state}: ${this.failure}`);
    this.state = 'ready';
    this.log.info({ size: this.size, backend: this.backend, ms: Date.now() - t0 }, 'world ready');
  }

  /** Runs one collective on every rank; resolves when all have finished, rejects naming the ranks that failed. */
  async run(c: Collective): Promise<void> {
    if (this.state !== 'ready') {
      throw new NccldError(ErrorCodes.NOT_READY, `the world is ${this.state}${this.failure ? `: ${this.failure}` : ''}`);
    }
    const results = await Promise.allSettled(
      this.ranks.map((r) =>
        r.run({
          t: 'run',
          seq: c.seq,
          client: c.client,
          kind: c.kind,
          dtype: c.dtype,
          op: c.op,
          count: c.count,
          // Host ranks each reduce a slice across all buffers; an NCCL rank needs only its own.
          buffers: this.backend === 'host' ? c.buffers : [c.buffers[r.rank]],
        }),
      ),
    );
    const failed = results.flatMap((res, rank) => (res.status === 'rejected' ? [{ rank, error: res.reason as NccldError }] : []));
    if (failed.length === 0) return;
    const first = failed[0].error;
    throw new NccldError(first.code, first.message, { ranks: failed.map((f) => f.rank) });
  }

  /** Rank 0 makes a unique id; every rank joins the communicator built from it. */
  private async buildComm(): Promise<void> {
    const generation = ++this.generation;
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
    await Promise.all(this.ranks.map((r) => r.stop(this.opts.stopGraceMs ?? 10_000)));
    this.state = 'stopped';
    this.log.info('world stopped');
  }

  private onRankExit(rank: RankProcess, expected: boolean): void {
    if (expected || this.state === 'stopping' || this.state === 'stopped') return;
    this.fail(`device process of rank ${rank.rank} (pid ${rank.pid}) died`);
  }

  private fail(reason: string): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.failure = reason;
    this.log.error({ reason }, 'world failed');
  }
}
