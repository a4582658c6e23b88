// One timer for every deadline in the daemon: a min-heap of the items that can expire, and a
// single setTimeout armed for the earliest. A timer per request costs more than the request.
import { ErrorCodes, NccldError } from '../shared/errors.js';

export interface Expiring {
  /** Epoch milliseconds. */
  deadline: number;
  /** Position in the heap; -1 when not in it. Owned by DeadlineQueue. */
  heapIndex: number;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

/** A request's deadline in ms: the one it names, else the default; over the maximum is refused. */
export function requestTimeout(requested: number | undefined, defaultMs: number, maxMs: number): number {
  const ms = requested ?? defaultMs;
  if (ms > maxMs) throw new NccldError(ErrorCodes.BAD_REQUEST, `timeoutMs ${ms} is over this daemon's limit of ${maxMs}`);
  return ms;
}

export class DeadlineQueue<T extends Expiring> {
  private readonly heap: T[] = [];
  private timer: NodeJS.Timeout | null = null;
  private armedFor = Infinity;

  constructor(private readonly onExpire: (item: T) => void) {}

  get size(): number {
    return this.heap.length;
  }

  add(item: T): void {
    item.heapIndex = this.heap.length;
    this.heap.push(item);
    this.up(item.heapIndex);
    this.arm();
  }

  /** Takes an item out (it finished in time); a no-op for one not queued. */
  remove(item: T): void {
    const i = item.heapIndex;
    if (i < 0 || this.heap[i] !== item) return;
    item.heapIndex = -1;
    const last = this.heap.pop()!;
    if (last !== item) {
      this.heap[i] = last;
      last.heapIndex = i;
      this.down(i);
      this.up(last.heapIndex);
    }
    // The timer is left armed: when it fires early it simply re-arms for the new earliest.
  }

  clear(): void {
    for (const item of this.heap) item.heapIndex = -1;
    this.heap.length = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.armedFor = Infinity;
  }

  private arm(): void {
    const first = this.heap[0];
    if (!first) return;
    if (this.timer && this.armedFor <= first.deadline) return;
    if (this.timer) clearTimeout(this.timer);
    this.armedFor = first.deadline;
    // setTimeout takes at most 2^31 - 1 ms (longer fires at once): a far deadline re-arms on firing.
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(0, first.deadline - Date.now())));
  }

  private fire(): void {
    this.timer = null;
    this.armedFor = Infinity;
    const now = Date.now();
    while (this.heap.length > 0 && this.heap[0].deadline <= now) {
      const item = this.heap[0];
      this.remove(item);
      this.onExpire(item);
    }
    this.arm();
  }

  private up(i: number): void {
    const h = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p].deadline <= h[i].deadline) return;
      this.swap(i, p);
      i = p;
    }
  }

  private down(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && h[l].deadline < h[m].deadline) m = l;
      if (r < h.length && h[r].deadline < h[m].deadline) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private swap(a: number, b: number): void {
    const h = this.heap;
    [h[a], h[b]] = [h[b], h[a]];
    h[a].heapIndex = a;
    h[b].heapIndex = b;
  }
}
