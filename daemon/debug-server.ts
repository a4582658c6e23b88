// The debug socket: one text command per line, usable with `echo status | nc -U <socket>`.
// Every reply ends with a line `OK` or `ERROR: <reason>`, and the connection stays usable.
import net from 'node:net';
import type { Logger } from './logger.js';
import { closeUnix, listenUnix } from './unix-listen.js';
import type { DaemonStatus } from './status.js';
import { formatStatus } from './status.js';

const MAX_LINE_BYTES = 4096;

export interface DebugCommands {
  status(): DaemonStatus;
}

const HELP = [
  'commands:',
  '  help     this list',
  '  status   backend, world state and size, each rank (pid, device, state), requests served',
];

export class DebugServer {
  private readonly server: net.Server;
  private socketPath: string | null = null;

  constructor(
    private readonly commands: DebugCommands,
    private readonly log: Logger,
  ) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  async listen(socketPath: string, mode: number): Promise<void> {
    await listenUnix(this.server, socketPath, mode);
    this.socketPath = socketPath;
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
    socket.setEncoding('utf8');
    const tooLong = `ERROR: line longer than ${MAX_LINE_BYTES} bytes\n`;
    socket.on('data', (chunk: string) => {
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
      socket.end();
    });
  }

  private reply(socket: net.Socket, line: string): void {
    if (line === '') return;
    const [command] = line.split(/\s+/);
    let out: string[];
    try {
      out = this.run(command.toLowerCase());
      out.push('OK');
    } catch (err) {
      out = [`ERROR: ${(err as Error).message}`];
    }
    this.log.debug({ command }, 'debug command');
    if (socket.writable) socket.write(out.join('\n') + '\n');
  }

  private run(command: string): string[] {
    switch (command) {
      case 'help':
        return [...HELP];
      case 'status':
        return formatStatus(this.commands.status());
      default:
        throw new Error(`unknown command "${command.slice(0, 64)}"; try help`);
    }
  }
}
