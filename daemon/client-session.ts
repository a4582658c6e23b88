// One client connection: frames in, replies out, over a native Unix connection (so memfds can
// arrive with a register frame). It holds the hello exchange and this connection's registered
// buffers, admits collectives against them, and protects everyone else from this client: a hello
// deadline, limits per client process, and a bound on reply bytes it leaves unread (past it, we
// stop reading from it; if it still does not read, it is disconnected).
import { FrameDecoder, encodeFrame, type Message } from '../shared/framing.js';
import { DTYPES } from '../shared/dtypes.js';
import { ErrorCodes, NccldError, toNccldError } from '../shared/errors.js';
import { native, type UnixConnection } from '../shared/native.js';
import {
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  isId,
  parseHello,
  parseRequest,
  collectiveElements,
  isInPlacePair,
  type AllReduceRequest,
  type BufferSlot,
  type CollectiveName,
  type CollectiveRequest,
  type HelloReply,
  type RegisterRequest,
  type ReleaseRequest,
} from '../shared/protocol.js';
import { NCCLD_VERSION } from '../shared/version.js';
import type { ClientProcess, ClientProcesses, Peer } from './client-process.js';
import { Collective, slotsOverlap, type CollectiveOwner, type Slot } from './collective.js';
import { requestTimeout } from './deadlines.js';
import type { Groups, Member, MemberSession } from './groups.js';
import type { FlightRecorder } from './flight-recorder.js';
import type { Logger } from './logger.js';
import { Registration } from './registry.js';
import type { Scheduler } from './scheduler.js';
import type { Stats } from './stats.js';
import type { World } from './world.js';

export interface SessionLimits {
  maxFrameBytes: number;
  /** Requests one client process may have unfinished, over all its connections; past it, BUSY. */
  maxInFlight: number;
  /** Buffers one client process may have registered; and all clients together. */
  maxBuffers: number;
  maxBuffersTotal: number;
  /** Deadline of a collective that names none, and the longest one may name. */
  timeoutMs: number;
  maxTimeoutMs: number;
  /** A connection that has not said hello by then is closed. */
  helloTimeoutMs: number;
  /** Reply bytes a client may leave unread before we stop reading from it. */
  replyBacklogBytes: number;
  /** How long it may stay over that before it is disconnected. */
  slowReaderMs: number;
}

export interface SessionContext {
  world: World;
  scheduler: Scheduler;
  stats: Stats;
  recorder: FlightRecorder;
  limits: SessionLimits;
  processes: ClientProcesses;
  groups: Groups;
  /** True once the daemon is shutting down: new requests are refused. */
  draining: () => boolean;
}

/** Descriptors received and not yet claimed by a register frame; more is a confused client. */
const MAX_PENDING_FDS = 16;

export class ClientSession implements CollectiveOwner, MemberSession {
  readonly connectedAt = Date.now();
  clientName: string | null = null;
  requestsServed = 0;
  /** This connection's registrations, by number. */
  readonly buffers = new Map<number, Registration>();
  /** The groups this connection joined (or is joining), by group number. */
  readonly memberships = new Map<number, Member>();
  closed = false;
  private helloDone = false;
  /** Ids of requests not yet answered: a second request with one of them is refused. */
  private readonly ids = new Set<number>();
  private readonly decoder: FrameDecoder;
  private readonly fds: number[] = [];
  /** Replies of this turn, written together. */
  private outbox: Buffer[] = [];
  private outboxBytes = 0;
  private flushScheduled = false;
  /**
   * The kernel dropped descriptors sent to us because we could not take them (out of file
   * descriptors): a register frame that finds none is told so, not blamed for sending none.
   */
  private fdsDropped = false;
  private readonly log: Logger;
  private readonly conn: UnixConnection;
  private helloTimer: NodeJS.Timeout | null;
  private slowTimer: NodeJS.Timeout | null = null;
  private readingPaused = false;
  /**
   * Set once we hang up (a framing error, a refusal, a slow reader, end() or destroy()): whatever
   * else arrives is ignored and nothing more is written (the native connection throws on a write
   * after end() or close(), and frames later in the same chunk would otherwise still be answered).
   */
  private hungUp = false;

  constructor(
    readonly id: number,
    fd: number,
    readonly peer: Peer | null,
    readonly process: ClientProcess,
    private readonly ctx: SessionContext,
    logger: Logger,
    private readonly onGone: (s: ClientSession) => void,
  ) {
    this.log = logger.child({ client: id, peerPid: peer?.pid, peerUid: peer?.uid });
    this.decoder = new FrameDecoder(ctx.limits.maxFrameBytes);
    this.conn = native.UnixConnection.adopt(fd, {
      onData: (chunk, fds, truncated) => this.onData(chunk, fds, truncated),
      onDrain: () => this.onDrain(),
      onClose: (err) => this.onClose(err),
    });
    this.helloTimer = setTimeout(() => {
      this.helloTimer = null;
      this.refuse(new NccldError(ErrorCodes.HELLO_TIMEOUT, `no hello within ${ctx.limits.helloTimeoutMs} ms`));
    }, ctx.limits.helloTimeoutMs);
    this.log.info('client connected');
  }

  get requestsInFlight(): number {
    return this.ids.size;
  }

  /** Reply bytes queued for this client and not yet taken by the kernel. */
  get unreadBytes(): number {
    return this.closed ? 0 : this.conn.writableLength;
  }

  /** Closes once the replies queued so far are sent. */
  end(): void {
    this.hungUp = true;
    this.flush();
    if (!this.closed) this.conn.end();
  }

  /** Closes now. */
  destroy(): void {
    this.hungUp = true;
    if (!this.closed) this.conn.close();
  }

  private onData(chunk: Buffer, fds: number[], truncated: boolean): void {
    if (fds.length > 0) this.fds.push(...fds);
    if (this.hungUp) return this.closeFds();
    if (truncated && fds.length < MAX_PENDING_FDS) {
      // Room was made for 16: the kernel could not install them here (EMFILE, ENFILE).
      this.fdsDropped = true;
    } else if (truncated || this.fds.length > MAX_PENDING_FDS) {
      this.closeFds();
      this.sendError(null, new NccldError(ErrorCodes.BAD_REQUEST, `too many file descriptors sent at once (at most one with each register frame)`));
    }
    try {
      for (const frame of this.decoder.push(chunk)) {
        if (!this.open) return;
        if ('error' in frame) this.sendError(null, frame.error);
        else this.onMessage(frame.message);
      }
    } catch (err) {
      // Only an oversized length prefix gets here: we cannot find the next frame, so we hang up.
      this.sendError(null, toNccldError(err));
      this.log.warn({ err: (err as Error).message }, 'closing client: unrecoverable framing error');
      this.hungUp = true;
      this.closeFds();
      this.flush();
      this.conn.end();
      return;
    }
    // A descriptor arrives with the first bytes of its frame: once no frame is half-read, any left are strays.
    if (this.decoder.pendingBytes === 0) {
      this.closeFds();
      this.fdsDropped = false;
    }
  }

  private closeFds(): void {
    for (const fd of this.fds.splice(0)) native.closeFd(fd);
  }

  private onMessage(msg: Message): void {
    if (!this.helloDone) return this.onHello(msg);
    const id = isId(msg.id) ? msg.id : null;
    // A register frame owns the descriptor sent with it, whatever becomes of the request.
    const fd = msg.type === 'register' ? this.fds.shift() : undefined;
    try {
      // Before anything else: a reply under this id would be taken for the earlier request's.
      if (id !== null && this.ids.has(id)) {
        throw new NccldError(ErrorCodes.DUPLICATE_ID, `request id ${id} is already in flight on this connection; it keeps its own reply`, { duplicateId: id });
      }
      const req = parseRequest(msg, this.ctx.world.size);
      // release and leave free resources: neither a full quota nor shutdown refuses them.
      if (req.type !== 'release' && req.type !== 'leave') {
        if (this.ctx.draining()) throw new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is shutting down and takes no new requests');
        if (this.process.unfinished >= this.ctx.limits.maxInFlight) {
          throw new NccldError(ErrorCodes.BUSY, `this client process already has ${this.ctx.limits.maxInFlight} requests unfinished; wait for replies first`);
        }
      }
      switch (req.type) {
        case 'allreduce':
          return this.admitAllReduce(req);
        case 'collective':
          if (req.group !== undefined) return this.ctx.groups.submit(this, req, this.resolveSlot);
          return this.admitCollective(req);
        case 'join':
          return this.ctx.groups.join(this, req);
        case 'leave':
          return this.ctx.groups.leave(this, req.group, req.id);
        case 'release':
          return this.release(req);
        case 'register':
          return this.startRegister(req, fd);
      }
    } catch (err) {
      if (fd !== undefined && msg.type === 'register') native.closeFd(fd);
      const e = toNccldError(err);
      // A reply whose id the client could confuse with another request's carries none.
      const unmatched = id === null || e.code === ErrorCodes.DUPLICATE_ID;
      this.sendError(unmatched ? null : id, e);
    }
  }

  private admitAllReduce(req: AllReduceRequest): void {
    this.admitCollective({ type: 'collective', id: req.id, collective: 'allreduce', dtype: req.dtype, op: req.op, count: req.count, send: req.buffers, timeoutMs: req.timeoutMs }, 'buffers');
  }

  /** A collective naming every rank's buffer (the single-client form). */
  private admitCollective(req: CollectiveRequest, sendField = 'send'): void {
    const { limits, world, scheduler, recorder } = this.ctx;
    const timeoutMs = requestTimeout(req.timeoutMs, limits.timeoutMs, limits.maxTimeoutMs);
    if (req.root !== undefined && req.root >= world.size) {
      throw new NccldError(ErrorCodes.BAD_REQUEST, `root ${req.root} is not a rank: this daemon has ${world.size}`);
    }
    const elem = DTYPES[req.dtype].bytes;
    const need = collectiveElements(req.collective, req.count, world.size);
    const inPlace = !req.recv;
    // In place, one buffer is both: it must hold the larger of the two.
    const sendBytes = (inPlace ? Math.max(need.send, need.recv) : need.send) * elem;
    const recvBytes = need.recv * elem;
    const send = req.send.map((s, i) => this.resolveSlot(s, i, sendBytes, sendField, i, elem));
    const recv = req.recv ? req.recv.map((s, i) => this.resolveSlot(s, i, recvBytes, 'recv', i, elem)) : null;
    checkNoOverlap(send, sendBytes, recv, recvBytes, sendField, req.collective, req.count * elem);
    const rec = recorder.queued(this.id, this.clientName, req.id, req.collective, req.dtype, req.op ?? '-', req.count, need.send * elem);
    const parts = { ranks: world.allRanks, send, recv, comm: 0, grouped: false };
    const c = new Collective(this, req.id, req.collective, req.dtype, req.op ?? 'sum', req.count, req.root ?? 0, parts, Date.now() + timeoutMs, rec);
    try {
      scheduler.submit(c);
    } catch (err) {
      recorder.finish(rec, toNccldError(err));
      throw err;
    }
    for (const s of send) s.reg.users++;
    if (recv) for (const s of recv) s.reg.users++;
    this.track(req.id);
  }

  /** A slot named by a request, checked: registered here, on the right device, aligned, big enough. */
  readonly resolveSlot = (s: BufferSlot, i: number, bytes: number, field: string, rank: number, elem: number): Slot => {
    const { world } = this.ctx;
    const reg = this.buffers.get(s.buffer);
    if (!reg) throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `${field}[${i}]: buffer ${s.buffer} is not registered on this connection`);
    if (reg.lost) throw reg.lost;
    if (reg.kind === 'ipc' && reg.rank !== rank) {
      throw new NccldError(ErrorCodes.WRONG_DEVICE, `${field}[${i}]: buffer ${s.buffer} is on rank ${reg.rank}'s device ${world.ranks[reg.rank].device}, but rank ${rank} runs on device ${world.ranks[rank].device}`);
    }
    const offset = s.offset ?? 0;
    if (offset % elem !== 0) {
      throw new NccldError(ErrorCodes.BAD_ALIGNMENT, `${field}[${i}].offset ${offset} is not a multiple of the element size, ${elem} bytes`);
    }
    if (offset + bytes > reg.bytes) {
      throw new NccldError(ErrorCodes.BUFFER_TOO_SMALL, `${field}[${i}]: offset + the ${bytes} bytes this collective needs is ${offset + bytes} bytes, but buffer ${s.buffer} holds ${reg.bytes}`);
    }
    return { reg, offset };
  };

  answer(c: Collective, err: NccldError | null): void {
    this.reply(c.requestId, err ?? { seq: c.seq });
  }

  ended(c: Collective): void {
    this.unuse(c.parts.send);
    if (c.parts.recv) this.unuse(c.parts.recv);
    this.finished();
  }

  get peerPid(): number | null {
    return this.peer?.pid ?? null;
  }

  track(requestId: number): void {
    this.ids.add(requestId);
    this.process.unfinished++;
  }

  reply(requestId: number, result: Record<string, unknown> | NccldError): void {
    this.ids.delete(requestId);
    if (result instanceof NccldError) return this.sendError(requestId, result);
    this.requestsServed++;
    this.send({ type: 'result', id: requestId, ...result });
  }

  sendLaunched(requestId: number): void {
    this.send({ type: 'launched', id: requestId });
  }

  settle(send: Slot | null = null, recv: Slot | null = null): void {
    if (send) this.unuseSlot(send);
    if (recv) this.unuseSlot(recv);
    this.finished();
  }

  /** A request has ended: its place in maxInFlight is free. */
  private finished(): void {
    this.process.unfinished--;
    this.ctx.processes.forgetIfIdle(this.process);
  }

  private unuse(slots: readonly Slot[]): void {
    for (const s of slots) this.unuseSlot(s);
  }

  /** A collective is done with this buffer: a released one goes once nothing uses it. */
  private unuseSlot(s: Slot): void {
    s.reg.users--;
    if (s.reg.released && s.reg.users === 0) void this.drop(s.reg);
  }


  private startRegister(req: RegisterRequest, fd: number | undefined): void {
    const reg = this.newRegistration(req, fd);
    this.ids.add(req.id);
    this.process.unfinished++;
    this.ctx.world.register(reg, Date.now() + this.ctx.limits.timeoutMs).then(
      (bytes) => {
        reg.bytes = bytes;
        if (this.closed) {
          // Gone meanwhile: nobody can name it; let it go at once.
          reg.released = true;
          void this.drop(reg);
        } else {
          this.buffers.set(reg.id, reg);
        }
        this.answerRegister(req.id, null, reg);
      },
      (err) => {
        this.process.buffers--;
        this.answerRegister(req.id, toNccldError(err), reg);
      },
    );
  }

  private answerRegister(id: number, err: NccldError | null, reg: Registration): void {
    this.ids.delete(id);
    this.process.unfinished--;
    if (err) this.sendError(id, err);
    else this.send({ type: 'result', id, buffer: reg.id, bytes: reg.bytes });
    this.ctx.processes.forgetIfIdle(this.process);
  }

  /** Checks what a register request hands over and makes its registration (which then owns the fd). */
  private newRegistration(req: RegisterRequest, fd: number | undefined): Registration {
    const { world, limits } = this.ctx;
    let kind: 'memfd' | 'ipc';
    let bytes = 0;
    let rank = -1;
    if (world.traits.registration === 'memfd') {
      if (req.ipc) throw new NccldError(ErrorCodes.WRONG_BACKEND, 'this daemon runs the host backend: register a sealed memfd, not GPU memory');
      if (fd === undefined && this.fdsDropped) {
        throw new NccldError(ErrorCodes.RESOURCE_EXHAUSTED, 'the daemon is out of file descriptors and could not receive the memfd; release buffers or retry later');
      }
      if (fd === undefined) throw new NccldError(ErrorCodes.BAD_REQUEST, 'register needs a memfd sent with its frame (SCM_RIGHTS)');
      const info = native.fdInfo(fd);
      const { SHRINK, GROW, WRITE, FUTURE_WRITE } = native.SEALS;
      if (info.type !== 'file' || info.seals === -1 || (info.seals & (SHRINK | GROW)) !== (SHRINK | GROW)) {
        throw new NccldError(ErrorCodes.BAD_BUFFER, 'the descriptor must be a memfd sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW), so no one can pull the memory away under a collective');
      }
      if (info.seals & (WRITE | FUTURE_WRITE) || !info.readWrite) {
        throw new NccldError(ErrorCodes.BAD_BUFFER, 'the memfd must be writable: open for reading and writing, without F_SEAL_WRITE or F_SEAL_FUTURE_WRITE (results are written into it)');
      }
      if (info.size <= 0) throw new NccldError(ErrorCodes.BAD_BUFFER, 'the memfd is empty');
      if (info.allocatedBytes < info.size) {
        throw new NccldError(ErrorCodes.BAD_BUFFER, `the memfd's pages must be reserved (posix_fallocate): it holds ${info.size} bytes but only ${info.allocatedBytes} are allocated, and a page that cannot be allocated mid-collective would fault`);
      }
      kind = 'memfd';
      bytes = info.size;
    } else {
      if (fd !== undefined) throw new NccldError(ErrorCodes.WRONG_BACKEND, 'this daemon runs the nccl backend: register a CUDA IPC handle, not a memfd');
      if (!req.ipc) throw new NccldError(ErrorCodes.BAD_REQUEST, 'register needs ipc (a CUDA IPC handle) and device on the nccl backend');
      rank = world.ranks.findIndex((r) => r.device === req.device);
      if (rank < 0) {
        throw new NccldError(ErrorCodes.WRONG_DEVICE, `no rank runs on device ${req.device}; this daemon's ranks run on devices ${world.ranks.map((r) => r.device).join(', ')}`);
      }
      kind = 'ipc';
    }
    if (this.process.buffers >= limits.maxBuffers) {
      throw new NccldError(ErrorCodes.TOO_MANY_BUFFERS, `this client process has ${limits.maxBuffers} buffers registered; release some first`);
    }
    if (world.registry.size + world.registering >= limits.maxBuffersTotal) {
      throw new NccldError(ErrorCodes.TOO_MANY_BUFFERS, `the daemon holds ${limits.maxBuffersTotal} registered buffers, its limit; retry later`);
    }
    this.process.buffers++;
    return new Registration(world.registry.newId(), kind, bytes, this.process, kind === 'memfd' ? fd! : -1, req.ipc ?? null, rank);
  }

  private release(req: ReleaseRequest): void {
    const unknown = req.buffers.filter((b) => !this.buffers.has(b));
    if (unknown.length > 0) {
      throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `not registered on this connection: ${unknown.slice(0, 16).join(', ')}${unknown.length > 16 ? ', ...' : ''}`, { buffers: unknown.slice(0, 16) });
    }
    // The reply waits until every rank has let go of the memory, so the client may free it then.
    // A number named twice is released once.
    const gone = [...new Set(req.buffers)].map((b) => this.releaseReg(this.buffers.get(b)!));
    this.ids.add(req.id);
    void Promise.all(gone).then(() => {
      this.ids.delete(req.id);
      this.send({ type: 'result', id: req.id });
      this.ctx.processes.forgetIfIdle(this.process);
    });
  }

  /**
   * The client lets go: later requests cannot name it; the memory goes once no collective uses it.
   * Resolves when every rank has dropped it.
   */
  private releaseReg(reg: Registration): Promise<void> {
    this.buffers.delete(reg.id);
    reg.released = true;
    if (reg.users === 0) void this.drop(reg);
    return reg.gone;
  }

  private drop(reg: Registration): Promise<void> {
    reg.owner.buffers--;
    this.ctx.processes.forgetIfIdle(reg.owner);
    return this.ctx.world.unregister(reg);
  }

  private onHello(msg: Message): void {
    let hello;
    try {
      hello = parseHello(msg);
    } catch (err) {
      return this.sendError(isId(msg.id) ? msg.id : null, toNccldError(err));
    }
    const protocol = Math.min(hello.protocol, PROTOCOL_VERSION);
    if (protocol < MIN_PROTOCOL_VERSION) {
      this.refuse(new NccldError(ErrorCodes.VERSION, `client speaks protocol ${hello.protocol}; this daemon speaks ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`, {
        supported: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION],
      }));
      return;
    }
    this.helloDone = true;
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.clientName = hello.client ?? null; // the debug socket escapes its control characters
    const { world, limits } = this.ctx;
    const reply: HelloReply = {
      type: 'hello',
      protocol,
      server: 'nccld',
      version: NCCLD_VERSION,
      backend: world.backend,
      worldSize: world.size,
      devices: world.ranks.map((r) => r.device),
      deviceUuids: world.ranks.map((r) => r.deviceUuid),
      maxFrameBytes: limits.maxFrameBytes,
      maxInFlight: limits.maxInFlight,
      maxBuffers: limits.maxBuffers,
      timeoutMs: limits.timeoutMs,
      maxTimeoutMs: limits.maxTimeoutMs,
    };
    this.send(reply as unknown as Message);
    this.log.info({ clientName: this.clientName, protocol }, 'hello');
  }

  /** Says why, then closes: for connections we will not serve. */
  private refuse(err: NccldError): void {
    this.sendError(null, err);
    this.hungUp = true;
    this.flush();
    this.conn.end();
  }

  /**
   * Whether frames are still read and answered: not after we hung up, nor once the native
   * connection is gone (a failed send tears it down at once; onClose only follows on a later turn).
   */
  private get open(): boolean {
    return !this.closed && !this.hungUp && this.conn.fd >= 0;
  }

  /**
   * Queues a reply; the replies of one event-loop turn go out in one write (setImmediate), since
   * a write per reply costs a system call each when many collectives finish together.
   */
  private send(msg: Message): void {
    if (!this.open) return;
    const frame = encodeFrame(msg);
    this.outbox.push(frame);
    this.outboxBytes += frame.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  /** Writes what is queued; also called at once before we hang up, so a last error still goes out. */
  private readonly flush = (): void => {
    this.flushScheduled = false;
    const frames = this.outbox;
    const bytes = this.outboxBytes;
    this.outbox = [];
    this.outboxBytes = 0;
    if (frames.length === 0 || this.closed || this.conn.fd < 0) return;
    let queued: number;
    try {
      queued = this.conn.write(frames.length === 1 ? frames[0] : Buffer.concat(frames, bytes));
    } catch (err) {
      // The connection went under us (its close is reported on a later turn): nothing to send to.
      this.log.debug({ err: (err as Error).message }, 'reply not sent');
      return;
    }
    const limit = this.ctx.limits.replyBacklogBytes;
    if (queued <= limit) return;
    if (queued > 4 * limit) return this.dropSlowReader(`${queued} reply bytes unread`);
    if (this.readingPaused) return;
    // It does not read its replies: read no more requests from it until it does.
    this.readingPaused = true;
    this.conn.pause();
    this.slowTimer = setTimeout(() => this.dropSlowReader(`over ${limit} reply bytes unread for ${this.ctx.limits.slowReaderMs} ms`), this.ctx.limits.slowReaderMs);
  };

  private onDrain(): void {
    if (!this.readingPaused || this.closed) return;
    this.readingPaused = false;
    if (this.slowTimer) clearTimeout(this.slowTimer);
    this.slowTimer = null;
    this.conn.resume();
  }

  private dropSlowReader(why: string): void {
    if (this.closed) return;
    this.ctx.stats.error(ErrorCodes.SLOW_READER);
    this.log.warn({ why }, 'disconnecting a client that does not read its replies');
    this.hungUp = true;
    this.conn.close();
  }

  private sendError(id: number | null, err: NccldError): void {
    this.ctx.stats.error(err.code);
    if (err.code === ErrorCodes.INTERNAL) this.log.error({ err }, 'internal error');
    else this.log.debug({ id, code: err.code, message: err.message }, 'request failed');
    this.send({ type: 'error', id, code: err.code, message: err.message, ...err.details });
  }

  private onClose(err: string | null): void {
    if (this.closed) return;
    this.closed = true;
    if (this.helloTimer) clearTimeout(this.helloTimer);
    if (this.slowTimer) clearTimeout(this.slowTimer);
    this.closeFds();
    this.log.info({ inFlight: this.ids.size, served: this.requestsServed, err }, 'client disconnected');
    // Its queued collectives never start; those on the ranks run to their end; then its buffers go.
    this.ctx.scheduler.cancel(this);
    // Its groups are dissolved (or, still forming, lose its claim): no peer waits for it.
    this.ctx.groups.sessionGone(this);
    for (const reg of [...this.buffers.values()]) void this.releaseReg(reg);
    this.ctx.processes.detach(this.process);
    this.onGone(this);
  }
}

/**
 * No two slots of one registration may share bytes: ranks write their results into them (each
 * rank into every rank's, on the host backend). In place, a slot is both send and receive buffer.
 */
function checkNoOverlap(send: Slot[], sendBytes: number, recv: Slot[] | null, recvBytes: number, sendField: string, collective: CollectiveName, block: number): void {
  const n = send.length;
  const total = recv ? 2 * n : n;
  // Slot k: send[k], then recv[k - n]. No allocation: this runs for every request.
  const slot = (k: number) => (k < n ? send[k] : recv![k - n]);
  const bytes = (k: number) => (k < n ? sendBytes : recvBytes);
  const name = (k: number) => (k < n ? `${sendField}[${k}]` : `recv[${k - n}]`);
  for (let a = 0; a < total; a++) {
    for (let b = a + 1; b < total; b++) {
      const x = slot(a);
      const y = slot(b);
      if (!slotsOverlap(x, bytes(a), y, bytes(b))) continue;
      // A share's own send and recv may be NCCL's in-place pair (the kernels expect exactly that).
      if (b === a + n && a < n && isInPlacePair(collective, x.offset, y.offset, block, a)) continue;
      throw new NccldError(ErrorCodes.BUFFER_OVERLAP, `${name(a)} and ${name(b)} share bytes of buffer ${x.reg.id}; each needs its own bytes (leave recv out to run in place)`);
    }
  }
}
