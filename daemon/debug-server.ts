// The debug socket: one text command per line, usable with `echo status | nc -U <socket>`.
// Every reply ends with a line `OK` or `ERROR: <reason>`, and the connection stays usable.
import net from 'node:net';
import type { Logger } from './logger.js';
import { closeUnix, listenOn, type ListenOn } from './unix-listen.js';
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
  socket: net.Socket;
  interactive: boolean;
  quitting: boolean;
  json: boolean;
  /** The last reply queued: replies go out in the order commands came. */
  tail: Promise<void>;
  idle: NodeJS.Timeout | undefined;
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
  async listen(where: ListenOn): Promise<void> {
    this.socketPath = await listenOn(this.server, where);
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
    const session: Session = { socket, interactive: false, quitting: false, json: false, tail: Promise.resolve(), idle: undefined };
    socket.on('close', () => clearTimeout(session.idle));
    socket.setEncoding('utf8');
    const tooLong = `ERROR: line longer than ${MAX_LINE_BYTES} bytes\n`;
    socket.on('data', (chunk: string) => {
      clearTimeout(session.idle);
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
          this.reply(session, line.replace(/\r$/, '').trim());
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
      if (buffered.trim() && !discarding) this.reply(session, buffered.trim());
      void session.tail.then(() => socket.end());
    });
  }

  private reply(session: Session, line: string): void {
    if (line === '') return;
    const [command, ...args] = line.split(/\s+/);
    this.log.debug({ command, args }, 'debug command');
    const { socket } = session;
    // One command at a time, in order: `format json` or `log-level` applies to what follows it.
    const done: Promise<void> = session.tail.then(async () => {
      let out: string[];
      try {
        const answer = await this.run(command.toLowerCase(), args, session);
        out = session.json ? [JSON.stringify({ ok: true, command, result: answer.data })] : [...answer.lines.map(escapeControl), 'OK'];
      } catch (err) {
        const message = (err as Error).message;
        out = session.json ? [JSON.stringify({ ok: false, command, error: message })] : [`ERROR: ${escapeControl(message)}`];
      }
      if (socket.writable) socket.write(out.join('\n') + '\n');
      if (session.quitting) socket.end();
      // The last reply of a burst is out: a one-shot client gets its close soon.
      else if (session.tail === done) {
        clearTimeout(session.idle);
        session.idle = setTimeout(() => socket.end(), session.interactive ? INTERACTIVE_IDLE_MS : ONE_SHOT_IDLE_MS);
      }
    });
    session.tail = done;
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

/** Text answers are one line per item: a control character from a client (a newline in its name, say) must not forge lines. */
export function escapeControl(line: string): string {
  return line.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
