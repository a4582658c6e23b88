// The SDK's connection to a daemon: one Unix socket, many requests in flight, each matched to its
// reply by id. When the connection drops, every pending request is rejected, never left waiting.
import net from 'node:net';
import { EventEmitter } from 'node:events';
import type { DType, ReduceOp } from '../shared/dtypes.js';
import { ErrorCodes, NccldError, isErrorCode } from '../shared/errors.js';
import { FrameDecoder, encodeFrame, type Message } from '../shared/framing.js';
import { clientSocketPath } from '../shared/paths.js';
import { PROTOCOL_VERSION, type BufferRef, type HelloReply } from '../shared/protocol.js';

/** Anything the daemon can reduce: a HostBuffer (host backend), a GPU buffer, or a raw reference. */
export interface BufferLike {
  /** The wire form; `client` tells buffers that must be released before they are freed who used them. */
  toBufferRef(offset?: number, client?: Client): BufferRef;
}

export interface AllReduceOptions {
  /** One buffer per rank, in rank order; reduced in place. */
  buffers: (BufferLike | BufferRef)[];
  dtype: DType;
  op: ReduceOp;
  /** Elements per buffer. */
  count: number;
  /** Byte offset into every buffer (default 0). */
  offset?: number;
  /** Deadline in milliseconds, within the daemon's limits. */
  timeoutMs?: number;
}

export interface AllReduceResult {
  /** The global sequence number the collective ran under. */
  seq: number;
}

export interface ConnectOptions {
  /** Free text naming this client in the daemon's logs. */
  name?: string;
  /** Give up connecting after this long (default 10 s). */
  timeoutMs?: number;
}

interface Pending {
  resolve: (msg: Message) => void;
  reject: (err: NccldError) => void;
}

export class Client extends EventEmitter {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private decoder = new FrameDecoder(64 << 20);
  private closedError: NccldError | null = null;
  /** What the daemon said of itself in the hello exchange. */
  server!: HelloReply;

  private constructor(
    private socket: net.Socket,
    private readonly socketPath: string,
    private readonly opts: ConnectOptions,
  ) {
    super();
  }

  /** Connects and completes the hello exchange. */
  static async connect(socketPath: string = clientSocketPath(), opts: ConnectOptions = {}): Promise<Client> {
    const client = new Client(new net.Socket(), socketPath, opts);
    await client.open();
    return client;
  }

  /**
   * Connects again after the connection dropped (the daemon restarted, say). Requests pending on
   * the old connection were already rejected with NCCLD_ERR_CONNECTION_CLOSED; none is resent.
   */
  async reconnect(): Promise<void> {
    this.failPending(new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the connection to nccld was replaced by reconnect()'));
    this.socket.destroy();
    await this.open();
  }

  private failPending(err: NccldError): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(err);
  }

  private open(): Promise<void> {
    const { socketPath, opts } = this;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      this.socket = socket;
      this.decoder = new FrameDecoder(64 << 20);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new NccldError(ErrorCodes.CONNECT, `no hello from nccld at ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new NccldError(ErrorCodes.CONNECT, `cannot reach nccld at ${socketPath}: ${err.code ?? err.message}`));
      });
      socket.once('connect', () => {
        this.closedError = null;
        this.attach(socket);
        this.request({ type: 'hello', protocol: PROTOCOL_VERSION, ...(opts.name ? { client: opts.name } : {}) }, 0).then(
          (reply) => {
            clearTimeout(timer);
            this.server = reply as unknown as HelloReply;
            resolve();
          },
          (err) => {
            clearTimeout(timer);
            socket.destroy();
            reject(err);
          },
        );
      });
    });
  }

  get worldSize(): number {
    return this.server.worldSize;
  }

  get requestsInFlight(): number {
    return this.pending.size;
  }

  /** Runs an AllReduce; resolves once every rank has finished it, so the buffers hold the result. */
  async allReduce(opts: AllReduceOptions): Promise<AllReduceResult> {
    const reply = await this.request({
      type: 'allreduce',
      dtype: opts.dtype,
      op: opts.op,
      count: opts.count,
      buffers: opts.buffers.map((b) => toRef(b, opts.offset, this)),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
    return { seq: reply.seq as number };
  }

  /** Tells the daemon to drop its mappings of these buffers (HostBuffer.free does it for you). */
  async release(buffers: (BufferLike | BufferRef)[]): Promise<void> {
    await this.request({ type: 'release', buffers: buffers.map((b) => toRef(b)) });
  }

  /** Sends any message and resolves with its reply; for protocol tests and new request types. */
  request(msg: Message, id: number = this.nextId++): Promise<Message> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.pending.has(id)) {
      return Promise.reject(new NccldError(ErrorCodes.DUPLICATE_ID, `request id ${id} is already in flight on this connection`));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(encodeFrame(msg.type === 'hello' ? msg : { ...msg, id }));
    });
  }

  /** Closes the connection; requests still pending are rejected with NCCLD_ERR_CONNECTION_CLOSED. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  private attach(socket: net.Socket): void {
    socket.on('data', (chunk) => {
      try {
        for (const frame of this.decoder.push(chunk)) {
          if ('message' in frame) this.onMessage(frame.message);
        }
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on('error', () => {}); // 'close' follows and settles everything
    socket.on('close', () => {
      if (socket !== this.socket) return; // an old connection, replaced by reconnect()
      this.closedError = new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the connection to nccld closed');
      this.failPending(this.closedError);
      this.emit('close');
    });
  }

  private onMessage(msg: Message): void {
    // The hello reply has no id; it answers the request we filed under id 0.
    const id = msg.type === 'hello' ? 0 : (msg.id as number | null);
    const p = id === null ? undefined : this.pending.get(id);
    if (!p) {
      // An error about the connection itself (bad frame, version): surface it to listeners.
      if (msg.type === 'error') this.emit('protocolError', toError(msg));
      if (id === null && msg.type === 'error' && this.pending.has(0)) {
        this.pending.get(0)!.reject(toError(msg));
        this.pending.delete(0);
      }
      return;
    }
    this.pending.delete(id!);
    if (msg.type === 'error') p.reject(toError(msg));
    else p.resolve(msg);
  }
}

function toRef(b: BufferLike | BufferRef, offset?: number, client?: Client): BufferRef {
  if ('toBufferRef' in b && typeof b.toBufferRef === 'function') return b.toBufferRef(offset, client);
  const ref = b as BufferRef;
  return offset === undefined ? ref : { ...ref, offset: (ref.offset ?? 0) + offset };
}

function toError(msg: Message): NccldError {
  const { type: _t, id: _i, code, message, ...details } = msg;
  return new NccldError(
    isErrorCode(code) ? code : ErrorCodes.INTERNAL,
    typeof message === 'string' ? message : 'nccld sent an error without a message',
    Object.keys(details).length ? details : undefined,
  );
}

/** Connects to the daemon: the user's own (default paths as the daemon's), else the system service's. */
export function connect(socketPath?: string, opts?: ConnectOptions): Promise<Client> {
  return Client.connect(socketPath, opts);
}
