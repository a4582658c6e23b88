// The API socket: accepts client connections, refuses those over the limits (in all, and per
// uid), and hands each accepted one to a session that speaks over a native Unix connection.
import net from 'node:net';
import { encodeFrame } from '../shared/framing.js';
import { ErrorCodes } from '../shared/errors.js';
import { native } from '../shared/native.js';
import { ClientProcesses, type Peer } from './client-process.js';
import { ClientSession, type SessionContext } from './client-session.js';
import type { Logger } from './logger.js';
import { closeUnix, listenOn, type ListenOn } from './unix-listen.js';

export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerUid: number;
}

export class ApiServer {
  readonly sessions = new Map<number, ClientSession>();
  readonly processes: ClientProcesses;
  /** Connections refused at accept, for stats: over the limit in all, over a user's limit, out of descriptors. */
  readonly refused = { total: 0, perUid: 0, descriptors: 0 };
  private nextClientId = 1;
  private readonly server: net.Server;
  private socketPath: string | null = null;
  private readonly ctx: SessionContext;

  constructor(
    ctx: Omit<SessionContext, 'processes'>,
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
  ) {
    this.processes = new ClientProcesses();
    this.ctx = { ...ctx, processes: this.processes };
    // Paused: the connection's bytes (and descriptors) are read by native code, never by Node.
    this.server = net.createServer({ pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => this.log.error({ err: err.message }, 'API socket error'));
  }

  /** Listens on a path we create, or on a socket passed to us (whose file is not ours to remove). */
  async listen(where: ListenOn): Promise<void> {
    this.socketPath = await listenOn(this.server, where);
  }

  /** Stops accepting at once; sessions stay open so their requests can finish and be answered. */
  stopAccepting(): Promise<void> {
    return closeUnix(this.server, this.socketPath);
  }

  /** Closes every session once its replies are out; those still open after `graceMs` are cut. */
  async endSessions(graceMs: number): Promise<void> {
    for (const s of this.sessions.values()) s.end();
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const s of [...this.sessions.values()]) s.destroy();
  }

  private accept(socket: net.Socket): void {
    const handleFd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const peer = typeof handleFd === 'number' && handleFd >= 0 ? peerOf(handleFd) : null;
    const total = this.sessions.size;
    const mine = peer ? this.processes.connectionsOf(peer.uid) : 0;
    const overLimit: 'total' | 'perUid' | null =
      total >= this.limits.maxConnections ? 'total' : peer && peer.uid !== 0 && mine >= this.limits.maxConnectionsPerUid ? 'perUid' : null;
    const over =
      overLimit === 'total'
        ? `the daemon serves ${this.limits.maxConnections} connections, its limit`
        : overLimit === 'perUid'
          ? `uid ${peer!.uid} has ${this.limits.maxConnectionsPerUid} connections open, the limit per user`
          : null;
    let fd = -1;
    if (!over && typeof handleFd === 'number') {
      try {
        fd = native.dupFd(handleFd);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'cannot take a new connection');
      }
    }
    if (fd < 0) {
      this.refused[overLimit ?? 'descriptors']++;
      this.ctx.stats.error(over ? ErrorCodes.TOO_MANY_CONNECTIONS : ErrorCodes.RESOURCE_EXHAUSTED);
      const code = over ? ErrorCodes.TOO_MANY_CONNECTIONS : ErrorCodes.RESOURCE_EXHAUSTED;
      const message = over ?? 'the daemon is out of file descriptors; retry later';
      socket.end(encodeFrame({ type: 'error', id: null, code, message }));
      setTimeout(() => socket.destroy(), 1_000).unref();
      return;
    }
    // Our duplicate carries the connection from here; Node's handle lets go of its own.
    socket.destroy();
    const id = this.nextClientId++;
    const proc = this.processes.attach(peer, id);
    let session: ClientSession;
    try {
      session = new ClientSession(id, fd, peer, proc, this.ctx, this.log, (s) => this.sessions.delete(s.id));
    } catch (err) {
      this.processes.detach(proc);
      native.closeFd(fd);
      this.log.warn({ err: (err as Error).message }, 'cannot start a session');
      return;
    }
    this.sessions.set(id, session);
  }
}

/** Who is on the other end: the kernel's answer (SO_PEERCRED), which a client cannot forge. */
function peerOf(fd: number): Peer | null {
  try {
    return native.peerCredentials(fd);
  } catch {
    return null;
  }
}
