// The debug socket: one text command per line, usable with `echo status | nc -U <socket>`.
// Every reply ends with a line `OK` or `ERROR: <reason>`, and the connection stays usable.
import net from 'node:net';
import type { Logger } from './logger.js';
import { closeUnix, listenFd, listenUnix } from './unix-listen.js';
import type { Answer, DebugCommands } from './debug-commands.js';

const MAX_LINE_BYTES = 4096;
/**
 * `echo status | nc -U` with OpenBSD's nc never half-closes its side: it waits for us to close.
 * So a connection is one-shot: once every reply is out and nothing more came for this long, we
 * close it. `keepalive` turns that into a long idle limit for people typing commands.
 */
const ONE_SHOT_IDLE_MS = 300;
const INTERACTIVE_IDLE_MS = 10 * 60_000;

/** One debug connection's mode: one-shot (the default) or interactive, and whether it asked to quit. */
interface Session {
  interactive: boolean;
  quitting: boolean;
  json: boolean;
  armIdle: () => void;
}

export class DebugServer {
  private readonly server: net.Server;
  private socketPath: string | null = null;

  constructor(
    private readonly commands: DebugCommands,
    private readonly log: Logger,
  ) {
    // Half-open: `echo cmd | nc -U` closes its side first, and still gets the (async) answers.
    this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
  }

  /** Listens on a path we create, or on a socket passed to us (whose file is not ours to remove). */
  async listen(where: { path: string; mode: number } | { fd: number }): Promise<void> {
    if ('fd' in where) return listenFd(this.server, where.fd);
    await listenUnix(this.server, where.path, where.mode);
    this.socketPath = where.path;
  }

  async close(): Promise<void> {
    const closing = closeUnix(this.server, this.socketPath);
    for (const s of this.sockets) s.end();
    await closing;
  }

  private readonly sockets = new Set<net.Socket>();

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    let buffered = '';
    let discarding = false;
    let idle: NodeJS.Timeout | undefined;
    const session: Session = { interactive: false, quitting: false, json: false, armIdle: () => {} };
    session.armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => socket.end(), session.interactive ? INTERACTIVE_IDLE_MS : ONE_SHOT_IDLE_MS);
    };
    this.sessions.set(socket, session);
    socket.on('close', () => clearTimeout(idle));
    socket.setEncoding('utf8');
    const tooLong = `ERROR: line longer than ${MAX_LINE_BYTES} bytes\n`;
    socket.on('data', (chunk: string) => {
      clearTimeout(idle);
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (discarding) {
          discarding = false; // the end of an over-long line, already answered
        } else if (Buffer.byteLength(line) > MAX_LINE_BYTES) {
          socket.write(tooLong);
        } else {
          this.reply(socket, line.replace(/\r$/, '').trim());
        }
      }
      // A line still without its end, already too long: answer now, drop the rest of it.
      if (Buffer.byteLength(buffered) > MAX_LINE_BYTES) {
        buffered = '';
        if (!discarding) socket.write(tooLong);
        discarding = true;
      }
    });
    // `echo status | nc -U` may half-close before we answer: treat what is left as a last line.
    socket.on('end', () => {
      if (buffered.trim() && !discarding) this.reply(socket, buffered.trim());
      void (this.replies.get(socket) ?? Promise.resolve()).then(() => socket.end());
    });
  }

  // Replies go out in the order commands came, even when one must ask the device processes.
  private readonly replies = new WeakMap<net.Socket, Promise<void>>();
  private readonly sessions = new WeakMap<net.Socket, Session>();

  private reply(socket: net.Socket, line: string): void {
    if (line === '') return;
    const [command, ...args] = line.split(/\s+/);
    this.log.debug({ command, args }, 'debug command');
    const session = this.sessions.get(socket)!;
    // One command at a time, in order: `format json` or `log-level` applies to what follows it.
    const before = this.replies.get(socket) ?? Promise.resolve();
    const done: Promise<void> = before.then(async () => {
      let out: string[];
      try {
        const answer = await this.run(command.toLowerCase(), args, session);
        out = session.json ? [JSON.stringify({ ok: true, command, result: answer.data })] : [...answer.lines, 'OK'];
      } catch (err) {
        const message = (err as Error).message;
        out = session.json ? [JSON.stringify({ ok: false, command, error: message })] : [`ERROR: ${message}`];
      }
      if (socket.writable) socket.write(out.join('\n') + '\n');
      if (session.quitting) socket.end();
      // The last reply of a burst is out: a one-shot client gets its close soon.
      else if (this.replies.get(socket) === done) session.armIdle();
    });
    this.replies.set(socket, done);
  }

  private async run(command: string, args: string[], session: Session): Promise<Answer> {
    switch (command) {
      case 'keepalive':
        session.interactive = true;
        return { lines: [`this connection stays open until quit, or ${INTERACTIVE_IDLE_MS / 60_000} minutes idle`], data: { keepalive: true } };
      case 'quit':
      case 'exit':
        session.quitting = true;
        return { lines: [], data: null };
      case 'format':
        if (args[0] !== 'json' && args[0] !== 'text') throw new Error('usage: format json|text');
        session.json = args[0] === 'json';
        return { lines: [`format: ${args[0]}`], data: { format: args[0] } };
      default:
        return this.commands.run(command, args);
    }
  }
}
