// Buffers registered by clients. A registration is what a collective names: memory the daemon
// holds on to (a sealed memfd it keeps a descriptor of, or a CUDA IPC handle opened on its rank),
// so no client can shrink, replace or unmap it under a running collective.
import { native } from '../shared/native.js';
import type { NccldError } from '../shared/errors.js';
import type { ClientProcess } from './client-process.js';

export type RegistrationKind = 'memfd' | 'ipc';

export class Registration {
  /** Collectives admitted and not yet ended that use it. */
  users = 0;
  /** The client let go of it; it is dropped once `users` reaches 0. */
  released = false;
  /** Set when a restarted rank could not map it again (the client freed its GPU memory, say). */
  lost: NccldError | null = null;
  /** Settles once every rank has dropped it (after unregister). */
  readonly gone: Promise<void>;
  private markGone!: () => void;

  constructor(
    readonly id: number,
    readonly kind: RegistrationKind,
    /** Usable bytes from the buffer's start. */
    public bytes: number,
    readonly owner: ClientProcess,
    /** memfd: the daemon's own descriptor, to map it into restarted device processes; else -1. */
    public fd: number,
    /** ipc: the handle, and the rank whose device holds the memory. */
    readonly ipc: Uint8Array | null,
    readonly rank: number,
  ) {
    this.gone = new Promise((resolve) => (this.markGone = resolve));
  }

  /** Closes the daemon's descriptor (after the ranks have dropped their mappings). */
  dispose(): void {
    if (this.fd >= 0) native.closeFd(this.fd);
    this.fd = -1;
    this.markGone();
  }
}

/** Every live registration, by number. Numbers are never reused while the daemon runs. */
export class Registry {
  private readonly byId = new Map<number, Registration>();
  private nextId = 1;

  get size(): number {
    return this.byId.size;
  }

  newId(): number {
    return this.nextId++;
  }

  add(reg: Registration): void {
    this.byId.set(reg.id, reg);
  }

  delete(reg: Registration): void {
    this.byId.delete(reg.id);
  }

  values(): IterableIterator<Registration> {
    return this.byId.values();
  }
}
