// The daemon's handle on one device process: forks it, speaks to it, and settles everything sent
// to it, with an error if the process dies first or cannot be started at all, so nothing ever
// waits on a dead rank. Besides Node's fork channel it holds a Unix seqpacket pair over which
// memfds travel (SCM_RIGHTS): Node's channel cannot carry plain file descriptors.
import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, NccldError, isErrorCode } from '../shared/errors.js';
import { native, type RankRing } from '../shared/native.js';
import type { Logger } from './logger.js';
import type { Backend, CallMessage, FromDevice, ToDevice, WireError } from './device/messages.js';
import { RING_TAG, sendTagged } from './device/fd-channel.js';
import { RECORD_KINDS, type Collective, type Slot } from './collective.js';
import { DTYPES, REDUCE_OPS } from '../shared/dtypes.js';
import { IPC_HANDLE_BYTES } from '../shared/protocol.js';
import { wireResourceError as resourceError } from './device/wire.js';
import { BACKENDS } from './backends.js';

function fromWire(e: WireError, rank: number): NccldError {
  return new NccldError(isErrorCode(e.code) ? e.code : ErrorCodes.INTERNAL, `rank ${rank}: ${e.message}`);
}

const DEVICE_ENTRY = fileURLToPath(new URL('./device/main.js', import.meta.url));

/** Descriptors held in reserve for fork() (see start()). */
const SPARE_FDS = 6;
const spareFds: number[] = [];

function takeSpareFds(): void {
  try {
    while (spareFds.length < SPARE_FDS) spareFds.push(openSync('/dev/null', 'r'));
  } catch {
    // fewer in reserve until descriptors are free again
  }
}

function releaseSpareFds(): void {
  for (const fd of spareFds.splice(0)) closeSync(fd);
}

takeSpareFds();
/** What a ring completion's code says; the worker posts codes only. */
const RING_FAILURES: Record<string, string> = {
  [ErrorCodes.NO_SUCH_BUFFER]: 'named a buffer this rank has not mapped',
  [ErrorCodes.BUFFER_TOO_SMALL]: 'ran past the end of a buffer on this rank',
  [ErrorCodes.BAD_ALIGNMENT]: 'had an offset that is not a multiple of the element size',
  [ErrorCodes.ABORTED]: 'was cut short: the communicator was aborted (the world broke, or is being rebuilt)',
  [ErrorCodes.NCCL]: 'failed in NCCL, or its communicator reported an asynchronous error (or an injected failure)',
  [ErrorCodes.CUDA]: 'failed in the CUDA driver',
  [ErrorCodes.NOT_READY]: 'reached the rank before its communicator was ready',
};
/** Collectives a rank's ring holds: far above either backend's window (1 on host, 64 on NCCL). */
const RING_CAPACITY = 1024;
/** The ring's note that a collective is on the stream with its done event recorded (not an end). */
const RING_LAUNCHED = native.RANK_RING_CODES.indexOf('LAUNCHED');
/** ring_layout.h's SubmitHeader flags: which of a record's event handles are in use. */
const RING_FLAG_WAIT = 1;
const RING_FLAG_DONE = 2;
/** Buffer slots per NCCL record: this rank's send buffer, and its receive buffer when apart. */
const NCCL_RECORD_SLOTS = 2;
/** The fork channel's message for a file descriptor: retried while the seqpacket queue is full. */
const FD_RETRY_MS = 5;

export type RankState = 'starting' | 'ready' | 'killing' | 'stopping' | 'exited';

export interface RankOptions {
  rank: number;
  nranks: number;
  backend: Backend;
  device: number | null;
  logLevel: string;
  /** How long the device's worker spins for the next collective before it sleeps. */
  ringSpinUs: number;
  logger: Logger;
  /** A device process that has not said ready by then (a CUDA init that hangs...) is killed. */
  startTimeoutMs: number;
}

type Done = (err: NccldError | null) => void;
type Settle = { resolve: (v: unknown) => void; reject: (e: NccldError) => void };

export class RankProcess extends EventEmitter {
  readonly rank: number;
  readonly device: number | null;
  state: RankState = 'exited';
  pid: number | undefined;
  deviceName: string | null = null;
  /** The GPU's UUID ("GPU-..."), which does not depend on CUDA_VISIBLE_DEVICES; null on the host backend. */
  deviceUuid: string | null = null;
  collectivesDone = 0;
  /** The world generation this rank's current process joined. */
  generation = 0;
  lastError: string | null = null;
  private child: ChildProcess | undefined;
  /** The daemon's end of the fd channel of the current process; -1 when none. */
  private fdSocket = -1;
  private readonly pending = new Map<number, Done>();
  /** The shared-memory ring collectives go through (null until attached). */
  private ring: RankRing | null = null;
  /** Host ranks read every rank's buffers; NCCL ranks only their own. */
  private readonly shareBuffers: boolean;
  /** Reused for every submission: one entry per buffer slot, and views of their first n. */
  private readonly slotIds: Uint32Array;
  private readonly slotOffsets: Float64Array;
  private readonly views: { ids: Uint32Array; offsets: Float64Array }[] = [];
  /** A record's other fields: root, comm, share, nshares, color, key, flags. */
  private readonly extra = new Int32Array(7);
  /** A record's two event handles, when it has any. */
  private readonly eventBytes = new Uint8Array(2 * IPC_HANDLE_BYTES);
  /** Collectives whose done event this rank has yet to record: told when it has. */
  private readonly launching = new Map<number, () => void>();
  private readonly calls = new Map<number, Settle>();
  private nextCall = 1;
  /** Memfds waiting for room in the fd channel, in order, each with the map call that follows it. */
  private readonly fdBacklog: { id: number; fd: number; settle: Settle }[] = [];
  private fdTimer: NodeJS.Timeout | null = null;
  /** One-shot waits for a message type (uniqueId, commReady), settled by it or by the process's exit. */
  private readonly waiters: { type: FromDevice['t']; settle: Settle }[] = [];
  private readonly log: Logger;
  /** Set by stop(): no new process is started after it. */
  private retired = false;

  constructor(private readonly opts: RankOptions) {
    super();
    this.rank = opts.rank;
    this.device = opts.device;
    this.log = opts.logger.child({ rank: opts.rank });
    this.shareBuffers = BACKENDS[opts.backend].ranksShareBuffers;
    this.slotIds = new Uint32Array(this.recordSlots);
    this.slotOffsets = new Float64Array(this.recordSlots);
  }

  /** Buffer slots a record holds: a send and a receive buffer per rank (host), or this rank's two (NCCL). */
  private get recordSlots(): number {
    return this.shareBuffers ? 2 * this.opts.nranks : NCCL_RECORD_SLOTS;
  }

  /** Faults to put into this rank's device processes (tests and drills; off unless enabled). */
  startFault: 'crash' | null = null;

  /**
   * Forks the process (again, after a death) and resolves once it reports ready. Rejects if the
   * fork fails (descriptors, processes or memory exhausted), if the process dies first, or if it
   * is not ready within the start timeout (it is killed then).
   */
  start(): Promise<void> {
    if (this.retired) return Promise.reject(new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is stopping'));
    this.state = 'starting';
    let pair: [number, number];
    let child: ChildProcess;
    try {
      pair = native.socketPair('seqpacket');
    } catch (err) {
      this.state = 'exited';
      return Promise.reject(resourceError(err, `rank ${this.rank}: cannot make its descriptor channel`));
    }
    try {
      const env = { ...process.env };
      // Sockets handed to the daemon by systemd are not the device process's.
      delete env.LISTEN_FDS;
      delete env.LISTEN_PID;
      delete env.LISTEN_FDNAMES;
      delete env.NOTIFY_SOCKET;
      // Node leaks its channel's socket pair when a fork fails for lack of descriptors: give the
      // fork the few it needs from a reserve, so a shortage fails our own calls instead.
      releaseSpareFds();
      try {
        child = fork(DEVICE_ENTRY, [], {
          serialization: 'advanced',
          // fd 3: Node's channel; fd 4 (FD_CHANNEL): the seqpacket end for descriptors.
          stdio: ['ignore', 'inherit', 'inherit', 'ipc', pair[1]],
          env,
        });
      } finally {
        takeSpareFds();
      }
    } catch (err) {
      native.closeFd(pair[0]);
      native.closeFd(pair[1]);
      this.state = 'exited';
      return Promise.reject(resourceError(err, `rank ${this.rank}: cannot start its device process`));
    }
    native.closeFd(pair[1]);
    this.closeFdSocket();
    this.fdSocket = pair[0];
    this.child = child;
    this.pid = child.pid;
    if (child.pid !== undefined) this.log.info({ devicePid: child.pid }, 'device process forked');
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err: NccldError | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => {
        this.log.error({ ms: this.opts.startTimeoutMs }, 'device process not ready in time; killing it');
        settle(new NccldError(ErrorCodes.DEVICE_LOST, `device process of rank ${this.rank} was not ready within ${this.opts.startTimeoutMs} ms`));
        this.state = 'killing';
        child.kill('SIGKILL');
      }, this.opts.startTimeoutMs);
      // A spawn that fails (EMFILE, EAGAIN, ENOMEM) may never emit 'exit': 'error' settles it.
      // After EAGAIN a second one follows (EPIPE, the init sent below): that process is over already.
      child.on('error', (err) => {
        this.log.error({ err: err.message }, 'device process error');
        settle(resourceError(err, `rank ${this.rank}: cannot start its device process`));
        if (child === this.child && child.pid === undefined && this.state !== 'exited') this.onExit(null, null);
      });
      child.once('exit', (code, signal) => {
        settle(new NccldError(ErrorCodes.DEVICE_LOST, `device process of rank ${this.rank} exited (code ${code}, signal ${signal}) before it was ready`));
        if (child === this.child) this.onExit(code, signal);
      });
      child.on('message', (raw) => this.onMessage(raw as FromDevice, settle));
      this.send({
        t: 'init',
        rank: this.rank,
        nranks: this.opts.nranks,
        backend: this.opts.backend,
        device: this.opts.device,
        logLevel: this.opts.logLevel,
        ringSpinUs: this.opts.ringSpinUs,
        parentPid: process.pid,
        ...(this.startFault ? { fault: this.startFault } : {}),
      });
    });
  }

  /** No new process after this (the daemon is stopping). */
  retire(): void {
    this.retired = true;
  }

  /** SIGKILL: for a hung rank; its exit settles everything sent to it. Resolves once it is gone. */
  kill(): Promise<void> {
    const child = this.child;
    if (!child || this.state === 'exited' || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    // Not 'ready' from this moment: a rebuild must wait for this process to be gone.
    this.state = 'killing';
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    return exited;
  }

  /**
   * Runs one collective on this rank; `done` is called once, when the rank has finished it or died.
   * It goes through the rank's shared-memory ring: host ranks get every rank's buffer (each reduces
   * a slice across all of them), NCCL ranks their own only.
   */
  run(c: Collective, done: Done, launched: ((c: Collective) => void) | null = null): void {
    const ring = this.ring;
    if (this.state !== 'ready' || !ring) {
      const err = new NccldError(ErrorCodes.DEVICE_LOST, `rank ${this.rank} is ${this.state}`);
      process.nextTick(done, err); // never re-enter the caller's loop over the ranks
      return;
    }
    const p = c.parts;
    const share = p.grouped ? p.ranks.indexOf(this.rank) : this.rank;
    let n = 0;
    if (this.shareBuffers) {
      // Every share's send buffer, then every share's receive buffer unless in place.
      for (const s of p.send) this.put(n++, s);
      if (p.recv) for (const s of p.recv) this.put(n++, s);
    } else if (p.send.length > 0) {
      this.put(n++, p.send[share]);
      if (p.recv) this.put(n++, p.recv[share]);
    }
    const x = this.extra;
    x[0] = c.root;
    x[1] = p.comm;
    x[2] = p.grouped ? share : 0;
    x[3] = p.grouped ? p.ranks.length : 0;
    const key = p.splitKeys ? p.splitKeys[this.rank] : 0;
    x[4] = key < 0 ? -1 : 0;
    x[5] = key;
    // The client's CUDA events (NCCL, group form): waited on before, recorded after.
    const wait = p.waitEvents?.[share] ?? null;
    const doneEv = p.doneEvents?.[share] ?? null;
    x[6] = (wait ? RING_FLAG_WAIT : 0) | (doneEv ? RING_FLAG_DONE : 0);
    if (wait) this.eventBytes.set(wait, 0);
    if (doneEv) this.eventBytes.set(doneEv, IPC_HANDLE_BYTES);
    const view = this.views[n] ?? (this.views[n] = { ids: this.slotIds.subarray(0, n), offsets: this.slotOffsets.subarray(0, n) });
    let queued: boolean;
    try {
      queued = ring.submit(c.seq, RECORD_KINDS[c.kind], DTYPES[c.dtype].nccl, REDUCE_OPS[c.op], c.count, view.ids, view.offsets, x, this.eventBytes);
    } catch (err) {
      // A record the native side refuses is our bug: this collective fails, nothing waits on it.
      this.log.error({ err, seq: c.seq }, 'the ring refused a record');
      process.nextTick(done, new NccldError(ErrorCodes.INTERNAL, `rank ${this.rank} could not take collective seq ${c.seq}: ${(err as Error).message}`));
      return;
    }
    if (!queued) {
      process.nextTick(done, new NccldError(ErrorCodes.BUSY, `rank ${this.rank}'s ring is full`));
      return;
    }
    this.pending.set(c.seq, done);
    if (doneEv && launched) this.launching.set(c.seq, () => launched(c));
  }

  private put(i: number, s: Slot): void {
    this.slotIds[i] = s.reg.id;
    this.slotOffsets[i] = s.offset;
  }

  /** Completions from the ring: everything posted since the last wake. */
  private readonly onRingComplete = (seqs: Float64Array, codes: Int32Array): void => {
    for (let i = 0; i < seqs.length; i++) {
      const code = codes[i];
      if (code === RING_LAUNCHED) {
        const launched = this.launching.get(seqs[i]);
        this.launching.delete(seqs[i]);
        launched?.();
        continue;
      }
      if (code === 0) {
        this.onDone(seqs[i], null);
        continue;
      }
      const wire = native.RANK_RING_CODES[code] ?? ErrorCodes.INTERNAL;
      const why = RING_FAILURES[wire] ?? 'failed in the rank worker (an internal error, or an injected failure)';
      this.onDone(seqs[i], { code: wire, message: `collective seq ${seqs[i]} ${why}` });
    }
  };

  /**
   * Makes this process's ring (a shared submission and completion ring with two eventfd
   * doorbells) and hands it over on the fd channel; the device's native worker takes collectives
   * from it from then on.
   */
  private async attachRing(): Promise<void> {
    // NCCL records have room for a client's two CUDA event handles.
    const ring = native.RankRing.create(RING_CAPACITY, this.recordSlots, !this.shareBuffers);
    try {
      sendTagged(this.fdSocket, RING_TAG, ring.fds);
      await this.call({ t: 'ring' });
    } catch (err) {
      ring.close();
      throw resourceError(err, `rank ${this.rank}: cannot attach its ring`);
    }
    ring.start(this.onRingComplete);
    this.ring = ring;
  }

  send(msg: ToDevice): void {
    if (this.child?.connected) this.child.send(msg);
  }

  /** Whether the process answers within `ms` (an exit or no answer says no). */
  async ping(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.call({ t: 'ping' }).then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Hands a memfd to the device process, which maps it under `id` and closes its copy. The
   * descriptor travels over the seqpacket channel; the fork-channel message after it says which.
   */
  mapFd(id: number, fd: number): Promise<void> {
    if (this.state !== 'ready') return Promise.reject(new NccldError(ErrorCodes.DEVICE_LOST, `rank ${this.rank} is ${this.state}`));
    return new Promise((resolve, reject) => {
      this.fdBacklog.push({ id, fd, settle: { resolve: resolve as (v: unknown) => void, reject } });
      this.flushFds();
    });
  }

  private flushFds(): void {
    while (this.fdBacklog.length > 0) {
      const next = this.fdBacklog[0];
      if (this.state !== 'ready' || this.fdSocket < 0) {
        this.fdBacklog.shift();
        next.settle.reject(new NccldError(ErrorCodes.DEVICE_LOST, `rank ${this.rank} is ${this.state}`));
        continue;
      }
      try {
        sendTagged(this.fdSocket, next.id, [next.fd]);
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') {
          // The device process has not taken the earlier ones yet: try again shortly.
          this.fdTimer ??= setTimeout(() => {
            this.fdTimer = null;
            this.flushFds();
          }, FD_RETRY_MS);
          return;
        }
        this.fdBacklog.shift();
        const code = (err as { code?: string }).code;
        // The process died and its exit is not handled yet: the rank is lost, as for a call to it.
        const gone = code === 'EPIPE' || code === 'ECONNRESET' || code === 'ENOTCONN';
        next.settle.reject(
          gone
            ? new NccldError(ErrorCodes.DEVICE_LOST, `device process of rank ${this.rank} (pid ${this.pid}) is gone: ${(err as Error).message}`)
            : resourceError(err, `rank ${this.rank}: cannot pass the buffer`),
        );
        continue;
      }
      this.fdBacklog.shift();
      this.call({ t: 'map', id: next.id }).then(next.settle.resolve, next.settle.reject);
    }
  }

  /** Asks the process to finish its work and exit; kills it if it has not after `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    this.retired = true;
    const child = this.child;
    if (!child || this.state === 'exited' || child.exitCode !== null || child.signalCode !== null) return;
    this.state = 'stopping';
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.send({ t: 'stop' });
    const timer = setTimeout(() => {
      this.log.warn({ graceMs }, 'device process did not stop in time; killing it');
      child.kill('SIGKILL');
    }, graceMs);
    await exited;
    clearTimeout(timer);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  private onMessage(msg: FromDevice, started: (err: NccldError | null) => void): void {
    switch (msg.t) {
      case 'ready':
        this.pid = msg.pid;
        this.deviceName = msg.deviceName;
        this.deviceUuid = msg.deviceUuid ?? null;
        if (msg.error) {
          this.lastError = `${msg.error.code}: ${msg.error.message}`;
          started(fromWire(msg.error, this.rank));
          this.state = 'killing';
          this.child?.kill('SIGKILL');
          return;
        }
        this.state = 'ready';
        this.attachRing().then(
          () => started(null),
          (err: NccldError) => {
            started(err);
            this.state = 'killing';
            this.child?.kill('SIGKILL');
          },
        );
        break;
      case 'reply': {
        const c = this.calls.get(msg.call);
        this.calls.delete(msg.call);
        if (msg.error) c?.reject(fromWire(msg.error, this.rank));
        else c?.resolve(msg.value);
        break;
      }
      default: {
        const w = this.waiters.findIndex((x) => x.type === msg.t);
        if (w >= 0) this.waiters.splice(w, 1)[0].settle.resolve(msg);
        else this.log.warn({ t: msg.t }, 'unexpected message from device process');
      }
    }
  }

  private onDone(seq: number, error: WireError | null): void {
    this.launching.delete(seq);
    const done = this.pending.get(seq);
    if (!done) {
      this.log.error({ seq }, 'reply for a collective this rank was not running');
      return;
    }
    this.pending.delete(seq);
    this.collectivesDone++;
    if (error) {
      this.lastError = `${error.code}: ${error.message}`;
      done(fromWire(error, this.rank));
    } else {
      done(null);
    }
  }

  /** Sends a request that the device process answers with a reply (map, open, ping, stats). */
  call<T>(msg: CallMessage): Promise<T> {
    if (this.state !== 'ready') {
      return Promise.reject(new NccldError(ErrorCodes.DEVICE_LOST, `rank ${this.rank} is ${this.state}`));
    }
    const call = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(call, { resolve: resolve as (v: unknown) => void, reject });
      this.send({ ...msg, call } as ToDevice);
    });
  }

  /** Resolves with the next message of this type from the device process. */
  expect<T extends FromDevice['t']>(type: T): Promise<Extract<FromDevice, { t: T }>> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ type, settle: { resolve: resolve as (m: unknown) => void, reject } });
    });
  }

  private closeFdSocket(): void {
    if (this.fdSocket >= 0) native.closeFd(this.fdSocket);
    this.fdSocket = -1;
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    const stopping = this.state === 'stopping';
    const expected = stopping || this.state === 'killing';
    this.state = 'exited';
    this.closeFdSocket();
    // What the worker finished before the process went still counts: take it before failing the rest.
    this.ring?.drain();
    this.ring?.close();
    this.ring = null;
    if (this.fdTimer) clearTimeout(this.fdTimer);
    this.fdTimer = null;
    const why = `device process of rank ${this.rank} (pid ${this.pid}) exited (code ${code}, signal ${signal})`;
    if (this.child?.pid === undefined) this.log.error('device process could not be started');
    else if (expected) this.log.info({ code, signal }, 'device process exited');
    else this.log.error({ code, signal }, 'device process exited unexpectedly');
    // Stopped by the daemon's own shutdown: what was cut short says so.
    const lost = stopping ? new NccldError(ErrorCodes.SHUTTING_DOWN, `${why}: the daemon is stopping`) : new NccldError(ErrorCodes.DEVICE_LOST, why);
    const pending = [...this.pending.values()];
    const calls = [...this.calls.values()];
    const waiters = this.waiters.splice(0);
    const backlog = this.fdBacklog.splice(0);
    this.pending.clear();
    this.launching.clear();
    this.calls.clear();
    for (const done of pending) done(lost);
    for (const c of calls) c.reject(lost);
    for (const w of waiters) w.settle.reject(lost);
    for (const b of backlog) b.settle.reject(lost);
    this.emit('exit', { code, signal, expected });
  }
}
