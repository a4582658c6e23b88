// What the daemon counts per client process (by the peer's uid and pid, from SO_PEERCRED, so
// opening more connections buys a client nothing): its connections, its unfinished requests,
// its registered buffers, and its queue of collectives waiting for the ranks.
import type { Collective } from './collective.js';

/** Who is at the other end of a connection, as the kernel says (SO_PEERCRED). */
export interface Peer {
  pid: number;
  uid: number;
  gid: number;
}

export class ClientProcess {
  connections = 0;
  /** Requests received and not yet ended; a collective counts until it ends on the ranks. */
  unfinished = 0;
  buffers = 0;
  /** Collectives waiting for the ranks, in the order this process sent them. */
  readonly queue: Collective[] = [];
  /** Whether the scheduler has this process in its round-robin turn list. */
  hasTurn = false;

  constructor(
    readonly key: string,
    readonly uid: number | null,
    readonly pid: number | null,
  ) {}

  get idle(): boolean {
    return this.connections === 0 && this.unfinished === 0 && this.buffers === 0 && this.queue.length === 0;
  }
}

export class ClientProcesses {
  private readonly byKey = new Map<string, ClientProcess>();
  private readonly connectionsByUid = new Map<number, number>();

  get size(): number {
    return this.byKey.size;
  }

  /** The process behind a new connection; without credentials each connection counts alone. */
  attach(peer: Peer | null, connectionId: number): ClientProcess {
    const key = peer ? `${peer.uid}:${peer.pid}` : `conn:${connectionId}`;
    let p = this.byKey.get(key);
    if (!p) this.byKey.set(key, (p = new ClientProcess(key, peer?.uid ?? null, peer?.pid ?? null)));
    p.connections++;
    if (p.uid !== null) this.connectionsByUid.set(p.uid, (this.connectionsByUid.get(p.uid) ?? 0) + 1);
    return p;
  }

  detach(p: ClientProcess): void {
    p.connections--;
    if (p.uid !== null) {
      const n = (this.connectionsByUid.get(p.uid) ?? 1) - 1;
      if (n > 0) this.connectionsByUid.set(p.uid, n);
      else this.connectionsByUid.delete(p.uid);
    }
    this.forgetIfIdle(p);
  }

  /** Called whenever a count drops: a process with nothing left is forgotten. */
  forgetIfIdle(p: ClientProcess): void {
    if (p.idle && this.byKey.get(p.key) === p) this.byKey.delete(p.key);
  }

  connectionsOf(uid: number): number {
    return this.connectionsByUid.get(uid) ?? 0;
  }

  all(): IterableIterator<ClientProcess> {
    return this.byKey.values();
  }
}
