// The SDK's connection to a daemon: one Unix socket, many requests in flight, each matched to its
// reply by id. Buffers are registered once per connection (a sealed memfd travels with the
// register frame, so the connection's bytes go through native code, which can pass descriptors)
// and named by number afterwards. When the connection drops, every pending request is rejected,
// never left waiting.
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { DType, ReduceOp } from '../shared/dtypes.js';
import { ErrorCodes, NccldError, isErrorCode } from '../shared/errors.js';
import { FrameDecoder, encodeFrame, type Message } from '../shared/framing.js';
import { native, type UnixConnection } from '../shared/native.js';
import { clientSocketPath } from '../shared/paths.js';
import {
  MAX_REQUEST_ID,
  PROTOCOL_VERSION,
  REDUCING,
  ROOTED,
  parseRequest,
  type BufferSlot,
  type CollectiveName,
  type HelloReply,
} from '../shared/protocol.js';
import { Group } from './group.js';

/** Memory the daemon can use: what a register request carries for it. */
export interface BufferLike {
  /** Frame fields of the register request, and the descriptor (a sealed memfd) to send with it. */
  registerRequest(): { fields: Message; fd?: number };
  /** Told when a client registers it, so freeing it can release it from that client first. */
  registeredWith?(client: Client): void;
}

/** A buffer for a collective: memory to register (once per connection), a registered number, or a slot. */
export type BufferArg = BufferLike | number | BufferSlot;

export interface AllReduceOptions {
  /** One buffer per rank, in rank order; reduced in place. */
  buffers: BufferArg[];
  dtype: DType;
  op: ReduceOp;
  /** Elements per buffer. */
  count: number;
  /** Byte offset into every buffer (default 0); a slot's own offset is added to it. */
  offset?: number;
  /** Deadline of the reply in milliseconds, within the daemon's limits. */
  timeoutMs?: number;
}

export interface CollectiveResult {
  /** The global sequence number the collective ran under. */
  seq: number;
}
export type AllReduceResult = CollectiveResult;

/**
 * What every collective but barrier takes. B is BufferArg[] for a client naming every rank's
 * buffer (in rank order), BufferArg for a group member naming its own.
 */
export interface DataOptions<B> {
  send: B;
  /** Left out: in place, as NCCL defines it (docs/protocol.md); alltoall cannot. */
  recv?: B;
  dtype: DType;
  /** NCCL's count argument for the collective: per rank for allgather's send, reducescatter's recv, alltoall's blocks. */
  count: number;
  /** Deadline of the reply in milliseconds, within the daemon's limits. */
  timeoutMs?: number;
}
export interface ReduceOptions<B> extends DataOptions<B> {
  op: ReduceOp;
}
export interface RootedOptions<B> extends DataOptions<B> {
  /** The rank whose send is broadcast, or whose recv gets the reduction (a group rank in a group). */
  root: number;
}
export interface RootedReduceOptions<B> extends ReduceOptions<B> {
  root: number;
}
export interface AllToAllOptions<B> extends DataOptions<B> {
  recv: B;
}
export interface BarrierOptions {
  timeoutMs?: number;
}

/** Any collective, with the request's fields; those a collective does not take are not sent. */
export interface CollectiveOptions<B = BufferArg[]> {
  collective: CollectiveName;
  /** Left out for barrier. */
  send?: B;
  recv?: B;
  dtype?: DType;
  op?: ReduceOp;
  count?: number;
  root?: number;
  timeoutMs?: number;
}

export interface JoinOptions {
  /** The group's name (1 to 128 characters): every member passes the same. */
  name: string;
  /** Members of the group, 1 to worldSize. */
  size: number;
  /** This member's rank in the group, 0 to size - 1. */
  rank: number;
  /** The world rank whose device this member's buffers live on; default `rank`. */
  device?: number;
  /** How long to wait for the other members (default: the daemon's deadline). */
  timeoutMs?: number;
}

export interface ConnectOptions {
  /** Free text naming this client in the daemon's logs. */
  name?: string;
  /** Give up connecting after this long (default 10 s). */
  timeoutMs?: number;
  /**
   * Users (besides root and this process's own) trusted to serve the socket; the owner of the
   * listening socket is checked before anything is sent. Default: the `nccld` service user if
   * there is one, plus NCCLD_TRUSTED_UIDS (comma-separated).
   */
  trustedUids?: number[];
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
  private conn: UnixConnection | null = null;
  private closeWaiters: (() => void)[] = [];
  /** This connection's registrations: the number, or the registration under way. */
  private registered = new Map<BufferLike, number | Promise<number>>();
  /** Requests wait behind registrations still under way, so they reach the daemon in call order. */
  private sendChain: Promise<unknown> | null = null;
  /** What the daemon said of itself in the hello exchange. */
  server!: HelloReply;

  private constructor(
    private readonly socketPath: string,
    private readonly opts: ConnectOptions,
  ) {
    super();
  }

  /** Connects, checks who serves the socket, and completes the hello exchange. */
  static async connect(socketPath: string = clientSocketPath(), opts: ConnectOptions = {}): Promise<Client> {
    const client = new Client(socketPath, opts);
    await client.open();
    return client;
  }

  /**
   * Connects again after the connection dropped (the daemon restarted, say). Requests pending on
   * the old connection were already rejected with NCCLD_ERR_CONNECTION_CLOSED; none is resent,
   * and buffers are registered again on first use.
   */
  async reconnect(): Promise<void> {
    this.failPending(new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the connection to nccld was replaced by reconnect()'));
    const old = this.conn;
    this.conn = null;
    old?.close();
    this.registered = new Map();
    this.sendChain = null;
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
      // Paused before it connects: Node never reads from it; the native connection does.
      const socket = new net.Socket();
      socket.pause();
      const timer = setTimeout(() => {
        socket.destroy();
        this.conn?.close();
        reject(new NccldError(ErrorCodes.CONNECT, `no hello from nccld at ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new NccldError(ErrorCodes.CONNECT, `cannot reach nccld at ${socketPath}: ${err.code ?? err.message}`));
      });
      socket.once('connect', () => {
        let fd: number;
        try {
          const own = (socket as unknown as { _handle: { fd: number } })._handle.fd;
          checkServer(socketPath, native.peerCredentials(own).uid, opts.trustedUids);
          fd = native.dupFd(own);
        } catch (err) {
          clearTimeout(timer);
          socket.destroy();
          return reject(err instanceof NccldError ? err : new NccldError(ErrorCodes.CONNECT, `cannot use the connection to ${socketPath}: ${(err as Error).message}`));
        }
        socket.destroy();
        this.closedError = null;
        this.attach(fd);
        this.request({ type: 'hello', protocol: PROTOCOL_VERSION, ...(opts.name ? { client: opts.name } : {}) }, undefined, 0).then(
          (reply) => {
            clearTimeout(timer);
            this.server = reply as unknown as HelloReply;
            resolve();
          },
          (err) => {
            clearTimeout(timer);
            this.conn?.close();
            reject(err);
          },
        );
      });
      socket.connect(socketPath);
    });
  }

  get worldSize(): number {
    return this.server.worldSize;
  }

  get requestsInFlight(): number {
    return this.pending.size;
  }

  /**
   * Registers memory with the daemon (once per connection: later calls give the same number).
   * Collectives can then name it; the daemon holds it until release() or the connection closes.
   */
  register(b: BufferLike): Promise<number> {
    const known = this.registered.get(b);
    if (known !== undefined) return Promise.resolve(known);
    const { fields, fd } = b.registerRequest();
    b.registeredWith?.(this);
    const p = this.request({ ...fields, type: 'register' }, fd === undefined ? undefined : [fd]).then(
      (reply) => {
        const handle = reply.buffer as number;
        if (this.registered.get(b) === p) this.registered.set(b, handle);
        return handle;
      },
      (err) => {
        if (this.registered.get(b) === p) this.registered.delete(b);
        throw err;
      },
    );
    this.registered.set(b, p);
    return p;
  }

  /** Runs an AllReduce; resolves once every rank has finished it, so the buffers hold the result. */
  async allReduce(opts: AllReduceOptions): Promise<AllReduceResult> {
    const base = opts.offset ?? 0;
    const reply = await this.submit(opts.buffers, (handles) => ({
      type: 'allreduce',
      dtype: opts.dtype,
      op: opts.op,
      count: opts.count,
      buffers: handles.map((h, i) => slotOf(opts.buffers[i], h, base)),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    }));
    return { seq: reply.seq as number };
  }

  /**
   * Runs any collective over every rank's buffers (one per rank in `send`, and in `recv` unless
   * in place); resolves once every rank has finished it. Bad arguments are refused here, with
   * the daemon's codes, before anything is sent.
   */
  collective(opts: CollectiveOptions): Promise<CollectiveResult> {
    return this.submitCollective(opts);
  }

  broadcast(opts: RootedOptions<BufferArg[]>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'broadcast' });
  }

  reduce(opts: RootedReduceOptions<BufferArg[]>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'reduce' });
  }

  allGather(opts: DataOptions<BufferArg[]>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'allgather' });
  }

  reduceScatter(opts: ReduceOptions<BufferArg[]>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'reducescatter' });
  }

  allToAll(opts: AllToAllOptions<BufferArg[]>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'alltoall' });
  }

  barrier(opts: BarrierOptions = {}): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'barrier' });
  }

  /**
   * Joins the named group as `rank`; resolves once every member has joined and the group is
   * formed. Its collectives then take this member's own buffer.
   */
  async joinGroup(opts: JoinOptions): Promise<Group> {
    const n = this.worldSize;
    if (Number.isSafeInteger(opts.size) && opts.size > n) {
      throw new NccldError(ErrorCodes.GROUP_SIZE, `a group has at most worldSize (${n}) members, not ${opts.size}`);
    }
    const device = opts.device ?? (opts.rank < n ? opts.rank : undefined);
    const msg: Message = { type: 'join', group: opts.name, size: opts.size, rank: opts.rank };
    if (device !== undefined) msg.device = device;
    if (opts.timeoutMs !== undefined) msg.timeoutMs = opts.timeoutMs;
    parseRequest({ ...msg, id: 0 }, n);
    const reply = await this.submit([], () => msg);
    return new Group(this, opts.name, reply.group as number, reply.size as number, reply.rank as number, reply.devices as number[]);
  }

  /**
   * @internal Group's way in, and collective()'s: checks and sends one collective, over every
   * rank's buffers, or over one member's in `group`.
   */
  async submitCollective(opts: CollectiveOptions, group?: Pick<Group, 'number' | 'size'>): Promise<CollectiveResult> {
    const c = opts.collective;
    const send = c === 'barrier' ? [] : (opts.send ?? []);
    const recv = c === 'barrier' ? undefined : opts.recv;
    const buffers = recv ? [...send, ...recv] : send;
    const build = (handles: number[]): Message => {
      const msg: Message = { type: 'collective', collective: c };
      if (group) msg.group = group.number;
      if (c !== 'barrier') {
        msg.dtype = opts.dtype;
        msg.count = opts.count;
        if (REDUCING.has(c)) msg.op = opts.op;
        if (ROOTED.has(c)) msg.root = opts.root;
        // A group member's request names one slot, not a list of one.
        const slots = handles.map((h, i) => slotOf(buffers[i], h));
        const sendSlots = slots.slice(0, send.length);
        msg.send = group ? sendSlots[0] : sendSlots;
        if (recv) msg.recv = group ? slots[send.length] : slots.slice(send.length);
      }
      if (opts.timeoutMs !== undefined) msg.timeoutMs = opts.timeoutMs;
      return msg;
    };
    // The daemon's own shape checks, on the request as it will be sent (unregistered buffers as 0).
    parseRequest({ ...build(buffers.map((b) => knownNumber(b) ?? 0)), id: 0 }, this.worldSize);
    const n = group?.size ?? this.worldSize;
    if (ROOTED.has(c) && (opts.root as number) >= n) {
      throw new NccldError(ErrorCodes.BAD_REQUEST, `${c}: root ${opts.root} is not a rank of ${n}`);
    }
    const reply = await this.submit(buffers, build);
    return { seq: reply.seq as number };
  }

  /** @internal Group.leave()'s way in: in call order after the member's collectives. */
  async leaveGroup(group: number): Promise<void> {
    await this.submit([], () => ({ type: 'leave', group }));
  }

  /**
   * Sends the request `build` makes from the buffers' numbers, registering those not yet
   * registered on this connection first; requests leave in call order, whatever they wait for.
   */
  private submit(buffers: BufferArg[], build: (handles: number[]) => Message): Promise<Message> {
    const handles = buffers.map((b) => knownNumber(b) ?? this.registered.get(b as BufferLike));
    // Fast path: every buffer known and nothing registering ahead of us.
    if (this.sendChain === null && handles.every((h) => typeof h === 'number')) return this.request(build(handles as number[]));
    return this.inOrder(async () => build(await Promise.all(buffers.map((b) => knownNumber(b) ?? this.register(b as BufferLike)))));
  }

  /** Sends what `make` builds once the requests before it were sent, keeping call order. */
  private inOrder(make: () => Promise<Message>): Promise<Message> {
    const prior = this.sendChain ?? Promise.resolve();
    const sent = prior.then(make);
    const mark = sent.catch(() => {});
    this.sendChain = mark;
    void mark.then(() => {
      if (this.sendChain === mark) this.sendChain = null;
    });
    return sent.then((msg) => this.request(msg));
  }

  /** Drops registrations: the daemon lets go of the memory once no collective uses it. */
  async release(buffers: (BufferLike | number)[]): Promise<void> {
    const handles: number[] = [];
    for (const b of buffers) {
      if (typeof b === 'number') {
        handles.push(b);
        continue;
      }
      const known = this.registered.get(b);
      this.registered.delete(b);
      if (known === undefined) continue;
      const h = await Promise.resolve(known).catch(() => null);
      if (h !== null) handles.push(h);
    }
    if (handles.length > 0) await this.request({ type: 'release', buffers: handles });
  }

  /** Sends any message (with descriptors, if given) and resolves with its reply; for protocol tests and new request types. */
  request(msg: Message, fds?: number[], id: number = this.takeId()): Promise<Message> {
    if (this.closedError || !this.conn) return Promise.reject(this.closedError ?? new NccldError(ErrorCodes.CONNECTION_CLOSED, 'not connected'));
    if (this.pending.has(id)) {
      return Promise.reject(new NccldError(ErrorCodes.DUPLICATE_ID, `request id ${id} is already in flight on this connection`));
    }
    const conn = this.conn;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      conn.write(encodeFrame(msg.type === 'hello' ? msg : { ...msg, id }), fds);
    });
  }

  private takeId(): number {
    const id = this.nextId;
    this.nextId = id >= MAX_REQUEST_ID ? 1 : id + 1;
    return id;
  }

  /** Closes the connection; requests still pending are rejected with NCCLD_ERR_CONNECTION_CLOSED. */
  close(): Promise<void> {
    const conn = this.conn;
    if (!conn || this.closedError) return Promise.resolve();
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve);
      conn.end();
    });
  }

  private attach(fd: number): void {
    this.decoder = new FrameDecoder(64 << 20);
    const conn = native.UnixConnection.adopt(fd, {
      onData: (chunk, fds) => {
        for (const f of fds) native.closeFd(f); // the daemon sends none; never keep strays
        try {
          for (const frame of this.decoder.push(chunk)) {
            if ('message' in frame) this.onMessage(frame.message);
          }
        } catch {
          conn.close();
        }
      },
      onDrain: () => {},
      onClose: () => {
        if (conn !== this.conn) return; // an old connection, replaced by reconnect()
        this.closedError = new NccldError(ErrorCodes.CONNECTION_CLOSED, 'the connection to nccld closed');
        this.failPending(this.closedError);
        for (const w of this.closeWaiters.splice(0)) w();
        this.emit('close');
      },
    });
    this.conn = conn;
  }

  private onMessage(msg: Message): void {
    // A note before a result (a collective with a doneEvent is on every stream): not its answer.
    if (msg.type === 'launched') {
      this.emit('launched', msg.id);
      return;
    }
    // The hello reply has no id; it answers the request we filed under id 0.
    const id = msg.type === 'hello' ? 0 : (msg.id as number | null);
    const p = id === null ? undefined : this.pending.get(id);
    if (!p) {
      // An error about the connection itself (bad frame, version, limits): surface it to listeners.
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

/** Root, this user, and the users named: the only ones trusted to run the daemon a client talks to. */
function checkServer(socketPath: string, uid: number, trusted: number[] | undefined): void {
  const me = process.geteuid?.() ?? uid;
  if (uid === 0 || uid === me) return;
  const allowed = trusted ?? defaultTrustedUids();
  if (allowed.includes(uid)) return;
  throw new NccldError(
    ErrorCodes.CONNECT,
    `${socketPath} is served by uid ${uid}, which is neither root, you (${me}) nor a trusted nccld user: refusing to send it anything (trust it with NCCLD_TRUSTED_UIDS=${uid})`,
  );
}

function defaultTrustedUids(): number[] {
  const out = (process.env.NCCLD_TRUSTED_UIDS ?? '')
    .split(',')
    .filter((s) => /^\d+$/.test(s.trim()))
    .map(Number);
  try {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('nccld:'));
    const uid = line ? Number(line.split(':')[2]) : NaN;
    if (Number.isInteger(uid)) out.push(uid);
  } catch {
    // no passwd file: only root and ourselves
  }
  return out;
}

/** The registration number a BufferArg names itself, if it is a number or a slot. */
function knownNumber(b: BufferArg): number | undefined {
  return typeof b === 'number' ? b : 'buffer' in b ? b.buffer : undefined;
}

/** The slot for `b`, registered as `handle`, `base` bytes further on. */
function slotOf(b: BufferArg, handle: number, base = 0): number | BufferSlot {
  const offset = base + (typeof b === 'object' && 'buffer' in b ? (b.offset ?? 0) : 0);
  return offset ? { buffer: handle, offset } : handle;
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
