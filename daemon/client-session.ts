// One client connection: frames in, replies out. It holds the hello exchange, the client's
// requests in flight (bounded), and on close hands the client's buffers back once its work ends.
import type { Socket } from 'node:net';
import { FrameDecoder, encodeFrame, type Message } from '../shared/framing.js';
import { ErrorCodes, NccldError, toNccldError } from '../shared/errors.js';
import {
  ipcHandleKey,
  isShmRef,
  type BufferRef,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  parseHello,
  parseRequest,
  requestId,
  type HelloReply,
  type Request,
} from '../shared/protocol.js';
import { NCCLD_VERSION } from '../shared/version.js';
import type { Logger } from './logger.js';
import type { Scheduler } from './scheduler.js';
import type { Stats } from './stats.js';
import { IpcBufferTable } from './ipc-buffers.js';
import { validateAllReduce, type Peer } from './validate.js';
import type { World } from './world.js';

export interface SessionLimits {
  maxFrameBytes: number;
  /** Requests one client may have in flight; past it, NCCLD_ERR_BUSY. */
  maxInFlight: number;
  /** Deadline of a collective that names none, and the longest one may name. */
  timeoutMs: number;
  maxTimeoutMs: number;
}

export interface SessionContext {
  world: World;
  scheduler: Scheduler;
  stats: Stats;
  limits: SessionLimits;
  /** True once the daemon is shutting down: new requests are refused. */
  draining: () => boolean;
}

export class ClientSession {
  readonly connectedAt = Date.now();
  clientName: string | null = null;
  requestsServed = 0;
  /** Buffers this client has named and not released (shm names, IPC handles in hex). */
  readonly buffers = new Set<string>();
  private helloDone = false;
  private closed = false;
  /** Set after an unrecoverable framing error: whatever else arrives is ignored. */
  private hungUp = false;
  private readonly inFlight = new Map<number, Promise<unknown>>();
  private readonly decoder: FrameDecoder;
  private readonly log: Logger;
  private readonly ipc: IpcBufferTable;
  /** Requests are admitted (checked and queued) one at a time, in the order they arrived. */
  private admission: Promise<unknown> = Promise.resolve();

  constructor(
    readonly id: number,
    private readonly socket: Socket,
    readonly peer: Peer | null,
    private readonly ctx: SessionContext,
    logger: Logger,
  ) {
    this.log = logger.child({ client: id, peerPid: peer?.pid, peerUid: peer?.uid });
    this.decoder = new FrameDecoder(ctx.limits.maxFrameBytes);
    this.ipc = new IpcBufferTable(ctx.world, id);
    // New device processes have mapped nothing: open buffers again before their next use.
    const forgetAll = () => this.ipc.forget();
    ctx.world.on('rebuilt', forgetAll);
    socket.once('close', () => ctx.world.off('rebuilt', forgetAll));
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => this.log.debug({ err }, 'client socket error'));
    socket.on('close', () => this.onClose());
    this.log.info('client connected');
  }

  get requestsInFlight(): number {
    return this.inFlight.size;
  }

  /** Resolves once every request of this client has settled. */
  async settled(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight.values()]);
  }

  close(): void {
    this.socket.end();
  }

  private onData(chunk: Buffer): void {
    if (this.hungUp) return;
    try {
      for (const frame of this.decoder.push(chunk)) {
        if ('error' in frame) this.sendError(null, frame.error);
        else this.onMessage(frame.message);
      }
    } catch (err) {
      // Only an oversized length prefix gets here: we cannot find the next frame, so we hang up.
      this.sendError(null, toNccldError(err));
      this.log.warn({ err }, 'closing client: unrecoverable framing error');
      this.hungUp = true;
      this.socket.end();
    }
  }

  private onMessage(msg: Message): void {
    if (!this.helloDone) return this.onHello(msg);
    let req: Request;
    try {
      req = parseRequest(msg);
    } catch (err) {
      return this.sendError(requestId(msg), toNccldError(err));
    }
    if (this.inFlight.has(req.id)) {
      return this.sendError(req.id, new NccldError(ErrorCodes.DUPLICATE_ID, `request id ${req.id} is already in flight on this connection`));
    }
    if (this.inFlight.size >= this.ctx.limits.maxInFlight) {
      return this.sendError(req.id, new NccldError(ErrorCodes.BUSY, `this client already has ${this.ctx.limits.maxInFlight} requests in flight; wait for replies first`));
    }
    if (this.ctx.draining()) {
      return this.sendError(req.id, new NccldError(ErrorCodes.SHUTTING_DOWN, 'the daemon is shutting down and takes no new requests'));
    }
    const work = this.handle(req).then(
      (reply) => this.send(reply),
      (err) => this.sendError(req.id, toNccldError(err)),
    );
    this.inFlight.set(req.id, work);
    void work.finally(() => this.inFlight.delete(req.id));
  }

  private async handle(req: Request): Promise<Message> {
    // Admission keeps this connection's order even when a request must first open GPU buffers;
    // the collective itself is awaited outside it, so many stay in flight.
    const admitted = this.admission.then(() => this.admit(req));
    this.admission = admitted.catch(() => {});
    const { done } = await admitted;
    const seq = await done;
    if (req.type === 'allreduce') this.requestsServed++;
    return { type: 'result', id: req.id, seq };
  }

  private async admit(req: Request): Promise<{ done: Promise<number> }> {
    const { world, scheduler } = this.ctx;
    switch (req.type) {
      case 'allreduce': {
        const timeoutMs = req.timeoutMs ?? this.ctx.limits.timeoutMs;
        if (timeoutMs > this.ctx.limits.maxTimeoutMs) {
          throw new NccldError(ErrorCodes.BAD_REQUEST, `timeoutMs ${timeoutMs} is over this daemon's limit of ${this.ctx.limits.maxTimeoutMs}`);
        }
        // The deadline counts from here: time spent checking and queued is part of it.
        const deadline = Date.now() + timeoutMs;
        validateAllReduce(req, world, this.peer);
        for (const b of req.buffers) this.buffers.add(bufferKey(b));
        if (world.backend === 'nccl') {
          await world.whenReady(deadline); // buffers are opened on live ranks only
          await this.ipc.check(req);
        }
        return {
          done: scheduler.submit(
            { client: this.id, kind: 'allreduce', dtype: req.dtype, op: req.op, count: req.count, buffers: req.buffers },
            deadline,
            () => this.closed,
            { requestId: req.id, clientName: this.clientName },
          ),
        };
      }
      case 'release':
        // Behind every collective already sent to the ranks, so none loses its mapping mid-flight.
        this.ipc.forget(req.buffers);
        for (const b of req.buffers) this.buffers.delete(bufferKey(b));
        world.forgetClient(this.id, req.buffers);
        return { done: Promise.resolve(scheduler.lastSeq) };
    }
  }

  private onHello(msg: Message): void {
    let hello;
    try {
      hello = parseHello(msg);
    } catch (err) {
      return this.sendError(requestId(msg), toNccldError(err));
    }
    const protocol = Math.min(hello.protocol, PROTOCOL_VERSION);
    if (protocol < MIN_PROTOCOL_VERSION) {
      this.sendError(null, new NccldError(ErrorCodes.VERSION, `client speaks protocol ${hello.protocol}; this daemon speaks ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`), {
        supported: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION],
      });
      this.socket.end();
      return;
    }
    this.helloDone = true;
    this.clientName = hello.client ?? null;
    const { world, limits } = this.ctx;
    const reply: HelloReply = {
      type: 'hello',
      protocol,
      server: 'nccld',
      version: NCCLD_VERSION,
      backend: world.backend,
      worldSize: world.size,
      devices: world.ranks.map((r) => r.device),
      maxFrameBytes: limits.maxFrameBytes,
      maxInFlight: limits.maxInFlight,
    };
    this.send(reply as unknown as Message);
    this.log.info({ clientName: this.clientName, protocol }, 'hello');
  }

  private send(msg: Message): void {
    if (!this.socket.writable) return;
    this.socket.write(encodeFrame(msg));
  }

  private sendError(id: number | null, err: NccldError, extra?: Record<string, unknown>): void {
    this.ctx.stats.error(err.code);
    if (err.code === ErrorCodes.INTERNAL) this.log.error({ err }, 'internal error');
    else this.log.debug({ id, code: err.code, message: err.message }, 'request failed');
    this.send({ type: 'error', id, code: err.code, message: err.message, ...err.details, ...extra });
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    const pending = this.inFlight.size;
    this.log.info({ inFlight: pending, served: this.requestsServed }, 'client disconnected');
    // Its collectives already on the ranks finish (the others must not be stalled half-way);
    // queued ones are skipped; then every rank drops this client's mappings.
    void this.settled().then(() => this.ctx.world.forgetClient(this.id));
  }
}

const bufferKey = (b: BufferRef): string => (isShmRef(b) ? `shm:${b.shm}` : `ipc:${ipcHandleKey(b.ipc)}`);
