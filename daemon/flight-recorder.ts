// The flight recorder: every collective in flight and the last N finished, each with its state on
// every rank, so a stuck collective shows which rank has not finished (the debug socket's `ops`).
// It costs the hot path no allocation once warm: finished records sit in a fixed ring, and the one
// pushed out of it is reused for the next collective.
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
  /** Finished records, oldest at `next` once the ring has wrapped. */
  private readonly finished: (OpRecord | undefined)[];
  private next = 0;
  /** The record last pushed out of the ring: the next collective's. */
  private spare: OpRecord | null = null;

  constructor(private readonly capacity = 256) {
    this.finished = new Array(capacity);
  }

  /** A new collective, queued. Plain arguments, not an object: this runs for every request. */
  queued(client: number, clientName: string | null, requestId: number, kind: string, dtype: string, op: string, count: number, bytes: number): OpRecord {
    const rec = this.spare ?? ({ ranks: [] as RankProgress[] } as OpRecord);
    this.spare = null;
    rec.client = client;
    rec.clientName = clientName;
    rec.requestId = requestId;
    rec.kind = kind;
    rec.dtype = dtype;
    rec.op = op;
    rec.count = count;
    rec.bytes = bytes;
    rec.seq = null;
    rec.state = 'queued';
    rec.generation = null;
    rec.ranks.length = 0;
    rec.error = null;
    rec.queuedAt = Date.now();
    rec.startedAt = null;
    rec.finishedAt = null;
    this.live.add(rec);
    return rec;
  }

  started(rec: OpRecord, seq: number, generation: number, nranks: number): void {
    rec.seq = seq;
    rec.state = 'running';
    rec.generation = generation;
    rec.ranks.length = nranks;
    rec.ranks.fill('pending');
    rec.startedAt = Date.now();
  }

  finish(rec: OpRecord, error: { code: string; message: string } | null): void {
    rec.state = error ? 'failed' : 'done';
    rec.error = error ? `${error.code}: ${error.message}` : null;
    rec.finishedAt = Date.now();
    this.live.delete(rec);
    const out = this.finished[this.next];
    this.finished[this.next] = rec;
    this.next = (this.next + 1) % this.capacity;
    if (out) this.spare = out;
  }

  /** Queued and running, oldest first. */
  inFlight(): OpRecord[] {
    return [...this.live];
  }

  /** The last `n` finished, oldest first (copies: the records themselves are reused). */
  recent(n = this.capacity): OpRecord[] {
    const out: OpRecord[] = [];
    for (let i = 0; i < this.capacity; i++) {
      const rec = this.finished[(this.next + i) % this.capacity];
      if (rec) out.push({ ...rec, ranks: [...rec.ranks] });
    }
    return out.slice(-n);
  }
}
