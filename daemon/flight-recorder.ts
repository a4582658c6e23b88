// The flight recorder: every collective in flight and the last N finished, each with its state on
// every rank, so a stuck collective shows which rank has not finished (the debug socket's `ops`).
export type RankProgress = 'pending' | 'done' | 'failed';

export interface OpRecord {
  seq: number | null;
  client: number;
  clientName: string | null;
  requestId: number;
  kind: string;
  dtype: string;
  op: string;
  count: number;
  bytes: number;
  state: 'queued' | 'running' | 'done' | 'failed';
  generation: number | null;
  ranks: RankProgress[];
  error: string | null;
  queuedAt: number;
  startedAt: number | null;
  finishedAt: number | null;
}

export class FlightRecorder {
  private readonly live = new Set<OpRecord>();
  private readonly running = new Map<number, OpRecord>();
  private readonly finished: OpRecord[] = [];

  constructor(private readonly capacity = 256) {}

  queued(info: Pick<OpRecord, 'client' | 'clientName' | 'requestId' | 'kind' | 'dtype' | 'op' | 'count' | 'bytes'>): OpRecord {
    const rec: OpRecord = { ...info, seq: null, state: 'queued', generation: null, ranks: [], error: null, queuedAt: Date.now(), startedAt: null, finishedAt: null };
    this.live.add(rec);
    return rec;
  }

  started(rec: OpRecord, seq: number, generation: number, nranks: number): void {
    rec.seq = seq;
    rec.state = 'running';
    rec.generation = generation;
    rec.ranks = Array(nranks).fill('pending');
    rec.startedAt = Date.now();
    this.running.set(seq, rec);
  }

  rankDone(seq: number, rank: number, failed: boolean): void {
    const rec = this.running.get(seq);
    if (rec) rec.ranks[rank] = failed ? 'failed' : 'done';
  }

  finish(rec: OpRecord, error: { code: string; message: string } | null): void {
    rec.state = error ? 'failed' : 'done';
    rec.error = error ? `${error.code}: ${error.message}` : null;
    rec.finishedAt = Date.now();
    this.live.delete(rec);
    if (rec.seq !== null) this.running.delete(rec.seq);
    this.finished.push(rec);
    if (this.finished.length > this.capacity) this.finished.shift();
  }

  /** Queued and running, oldest first. */
  inFlight(): OpRecord[] {
    return [...this.live];
  }

  /** The last `n` finished, oldest first. */
  recent(n = this.capacity): OpRecord[] {
    return this.finished.slice(-n);
  }
}
