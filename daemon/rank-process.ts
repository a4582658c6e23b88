// The daemon's handle on one device process: forks it, speaks to it, and settles every request
// sent to it, with an error if the process dies first, so nothing waits on a dead rank.
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, NccldError, isErrorCode } from '../shared/errors.js';
import type { Logger } from './logger.js';
import type { Backend, FromDevice, OpenMessage, RunMessage, StatsRequest, ToDevice, WireError } from './device/messages.js';

type Settle<T> = { resolve: (v: T) => void; reject: (e: NccldError) => void };

function fromWire(e: WireError, rank: number): NccldError {
  return new NccldError(isErrorCode(e.code) ? e.code : ErrorCodes.INTERNAL, `rank ${rank}: ${e.message}`);
}

const DEVICE_ENTRY = fileURLToPath(new URL('./device/main.js', import.meta.url));
/** A device process that has not said ready by then (a CUDA init that hangs...) is killed. */
const START_TIMEOUT_MS = 120_000;

export type RankState = 'starting' | 'ready' | 'killing' | 'stopping' | 'exited';

export interface RankOptions {
  rank: number;
  nranks: number;
  backend: Backend;
  device: number | null;
  logLevel: string;
  logger: Logger;
}

export class RankProcess extends EventEmitter {
  readonly rank: number;
  readonly device: number | null;
  state: RankState = 'starting';
  pid: number | undefined;
  deviceName: string | null = null;
  collectivesDone = 0;
  /** The world generation this rank's current process joined. */
  generation = 0;
  lastError: string | null = null;
  private child: ChildProcess | undefined;
  private readonly pending = new Map<number, Settle<void>>();
  private readonly calls = new Map<number, Settle<unknown>>();
  private nextCall = 1;
  /** One-shot waits for a message type (uniqueId, commReady), settled by it or by the process's exit. */
  private readonly waiters: { type: FromDevice['t']; settle: Settle<FromDevice> }[] = [];
  private readonly log: Logger;

  constructor(private readonly opts: RankOptions) {
    super();
    this.rank = opts.rank;
    this.device = opts.device;
    this.log = opts.logger.child({ rank: opts.rank });
  }

  /** Faults to put into this rank's device processes (tests and drills; off unless enabled). */
  startFault: 'crash' | null = null;

  /** Forks the process (again, after a death) and resolves once it reports ready; rejects if it dies first. */
  start(): Promise<void> {
    this.state = 'starting';
    const env = { ...process.env };
    // Sockets handed to the daemon by systemd are not the device process's.
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    delete env.LISTEN_FDNAMES;
    delete env.NOTIFY_SOCKET;
    const child = fork(DEVICE_ENTRY, [], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env,
    });
    this.child = child;
    this.pid = child.pid;
    this.log.info({ devicePid: child.pid }, 'device process forked');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.log.error({ ms: START_TIMEOUT_MS }, 'device process not ready in time; killing it');
        child.kill('SIGKILL');
      }, START_TIMEOUT_MS);
      child.once('exit', () => clearTimeout(timer));
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        reject(new NccldError(ErrorCodes.DEVICE_LOST, `device process of rank ${this.rank} exited (code ${code}, signal ${signal}) before it was ready`));
      };
      child.once('exit', onExit);
      child.on('message', (raw) =>
        this.onMessage(raw as FromDevice, resolve, reject, () => {
          clearTimeout(timer);
          child.off('exit', onExit);
        }),
      );
      child.on('exit', (code, signal) => {
        if (child === this.child) this.onExit(code, signal);
      });
      child.on('error', (err) => this.log.error({ err }, 'device process error'));
      this.send({
        t: 'init',
        rank: this.rank,
        nranks: this.opts.nranks,
        backend: this.opts.backend,
        device: this.opts.device,
        logLevel: this.opts.logLevel,
        parentPid: process.pid,
        ...(this.startFault ? { fault: this.startFault } : {}),
      });
    });
  }

  /** SIGKILL: for a rank that missed a deadline; its exit settles everything sent to it. */
  kill(): Promise<void> {
    const child = this.child;
    if (!child || this.state === 'exited') return Promise.resolve();
    // Not 'ready' from this moment: a rebuild must wait for this process to be gone.
    this.state = 'killing';
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    return exited;
  }

  /** Resolves once the current process has exited (at once if it has). */
  exited(): Promise<void> {
    const child = this.child;
    if (!child || this.state === 'exited' || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Runs one collective on this rank; settles when the rank has finished it or died. */
  run(job: RunMessage): Promise<void> {
    if (this.state !== 'ready') {
      return Promise.reject(new NccldError(ErrorCodes.DEVICE_LOST, `rank ${this.rank} is ${this.state}`));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(job.seq, { resolve, reject });
      this.send(job);
    });
  }

  send(msg: ToDevice): void {
    if (this.child?.connected) this.child.send(msg);
  }

  /** Asks the process to finish its work and exit; kills it if it has not after `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    const child = this.child;
    if (!child || this.state === 'exited') return;
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

  private onMessage(msg: FromDevice, ready: () => void, failed: (e: NccldError) => void, readyDone: () => void): void {
    switch (msg.t) {
      case 'ready':
        this.pid = msg.pid;
        this.deviceName = msg.deviceName;
        readyDone();
        if (msg.error) {
          this.lastError = `${msg.error.code}: ${msg.error.message}`;
          failed(fromWire(msg.error, this.rank));
          this.child?.kill('SIGKILL');
          return;
        }
        this.state = 'ready';
        ready();
        break;
      case 'reply': {
        const c = this.calls.get(msg.call);
        this.calls.delete(msg.call);
        if (msg.error) c?.reject(fromWire(msg.error, this.rank));
        else c?.resolve(msg.value);
        break;
      }
      case 'done': {
        const p = this.pending.get(msg.seq);
        if (!p) {
          this.log.error({ seq: msg.seq }, 'reply for a collective this rank was not running');
          return;
        }
        this.pending.delete(msg.seq);
        this.collectivesDone++;
        if (msg.error) {
          this.lastError = `${msg.error.code}: ${msg.error.message}`;
          p.reject(fromWire(msg.error, this.rank));
        } else {
          p.resolve();
        }
        break;
      }
      default: {
        const w = this.waiters.findIndex((x) => x.type === msg.t);
        if (w >= 0) this.waiters.splice(w, 1)[0].settle.resolve(msg);
        else this.log.warn({ t: msg.t }, 'unexpected message from device process');
      }
    }
  }

  /** Sends a request that the device process answers with a reply (open, stats). */
  call<T>(msg: Omit<OpenMessage, 'call'> | Omit<StatsRequest, 'call'>): Promise<T> {
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
      this.waiters.push({ type, settle: { resolve: resolve as (m: FromDevice) => void, reject } });
    });
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    const expected = this.state === 'stopping' || this.state === 'killing';
    this.state = 'exited';
    const why = `device process of rank ${this.rank} (pid ${this.pid}) exited (code ${code}, signal ${signal})`;
    if (expected) this.log.info({ code, signal }, 'device process exited');
    else this.log.error({ code, signal }, 'device process exited unexpectedly');
    const lost = new NccldError(ErrorCodes.DEVICE_LOST, why);
    for (const p of this.pending.values()) p.reject(lost);
    for (const c of this.calls.values()) c.reject(lost);
    for (const w of this.waiters) w.settle.reject(lost);
    this.pending.clear();
    this.calls.clear();
    this.waiters.length = 0;
    this.emit('exit', { code, signal, expected });
  }
}
