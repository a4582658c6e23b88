// The API socket: accepts client connections and gives each a session.
import net from 'node:net';
import { native } from '../shared/native.js';
import { ClientSession, type SessionContext } from './client-session.js';
import type { Logger } from './logger.js';
import { closeUnix, listenOn, type ListenOn } from './unix-listen.js';
import type { Peer } from './validate.js';

export class ApiServer {
  readonly sessions = new Map<number, ClientSession>();
  private nextClientId = 1;
  private readonly server: net.Server;
  private socketPath: string | null = null;

  constructor(
    private readonly ctx: SessionContext,
    private readonly log: Logger,
  ) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Listens on a path we create, or on a socket passed to us (whose file is not ours to remove). */
  async listen(where: ListenOn): Promise<void> {
    this.socketPath = await listenOn(this.server, where);
  }

  /**
   * Stops accepting at once; existing sessions stay open so their requests can finish and be
   * answered. The promise resolves when the last session has ended and the socket file is gone.
   */
  stopAccepting(): Promise<void> {
    return closeUnix(this.server, this.socketPath);
  }

  /** Resolves when every session's requests have been answered. */
  async settled(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.settled()));
  }

  endSessions(): void {
    for (const s of this.sessions.values()) s.close();
  }

  private accept(socket: net.Socket): void {
    const id = this.nextClientId++;
    const session = new ClientSession(id, socket, peerOf(socket), this.ctx, this.log);
    this.sessions.set(id, session);
    socket.once('close', () => this.sessions.delete(id));
  }
}

/** Who is on the other end: the kernel's answer (SO_PEERCRED), which a client cannot forge. */
function peerOf(socket: net.Socket): Peer | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return null;
  try {
    return native.peerCredentials(fd);
  } catch {
    return null;
  }
}
