// A client that speaks raw bytes, for protocol tests: it can send anything, and it collects
// every frame the daemon answers until the daemon closes the connection.
import net from 'node:net';
import { FrameDecoder, encodeFrame, type Message } from '../../dist/shared/framing.js';

export interface RawConnection {
  socket: net.Socket;
  replies: Message[];
  closed: Promise<void>;
  send(bytes: Buffer): void;
  sendMessage(msg: Message): void;
  /** Resolves with the first reply not yet taken (received or still to come) that matches; rejects after `ms`. */
  next(match: (m: Message) => boolean, ms?: number): Promise<Message>;
}

export function rawConnect(path: string): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    const decoder = new FrameDecoder(1 << 30);
    const replies: Message[] = [];
    const waiters: { match: (m: Message) => boolean; resolve: (m: Message) => void }[] = [];
    // Each reply is handed to at most one next(), so a later next() never sees an old answer.
    const taken = new Set<Message>();
    const take = (m: Message) => (taken.add(m), m);
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        if (!('message' in f)) continue;
        replies.push(f.message);
        const w = waiters.findIndex((x) => x.match(f.message));
        if (w >= 0) waiters.splice(w, 1)[0].resolve(take(f.message));
      }
    });
    socket.once('error', reject);
    socket.once('connect', () =>
      resolve({
        socket,
        replies,
        closed,
        send: (b) => socket.write(b),
        sendMessage: (m) => socket.write(encodeFrame(m)),
        next: (match, ms = 10_000) =>
          new Promise((res, rej) => {
            const seen = replies.find((m) => !taken.has(m) && match(m));
            if (seen) return res(take(seen));
            const timer = setTimeout(() => rej(new Error(`no matching reply within ${ms} ms; got ${JSON.stringify(replies)}`)), ms);
            waiters.push({ match, resolve: (m) => (clearTimeout(timer), res(m)) });
          }),
      }),
    );
  });
}
