// A client that speaks raw bytes, for protocol tests: it can send anything, and it collects
// every frame the daemon answers until the daemon closes the connection. rawConnect uses a plain
// Node socket; rawFdConnect a native Unix connection, which can also send file descriptors
// (SCM_RIGHTS) with a frame, as a register request needs.
import net from 'node:net';
import { FrameDecoder, encodeFrame, type Message } from '../../dist/shared/framing.js';
import { native } from '../../dist/shared/native.js';

interface Replies {
  replies: Message[];
  /** Feeds bytes read from the daemon. */
  push(chunk: Uint8Array): void;
  next(match: (m: Message) => boolean, ms?: number): Promise<Message>;
}

function collectReplies(): Replies {
  const decoder = new FrameDecoder(1 << 30);
  const replies: Message[] = [];
  const waiters: { match: (m: Message) => boolean; resolve: (m: Message) => void }[] = [];
  // Each reply is handed to at most one next(), so a later next() never sees an old answer.
  const taken = new Set<Message>();
  const take = (m: Message) => (taken.add(m), m);
  return {
    replies,
    push(chunk) {
      for (const f of decoder.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))) {
        if (!('message' in f)) continue;
        replies.push(f.message);
        const w = waiters.findIndex((x) => x.match(f.message));
        if (w >= 0) waiters.splice(w, 1)[0].resolve(take(f.message));
      }
    },
    next: (match, ms = 10_000) =>
      new Promise((res, rej) => {
        const seen = replies.find((m) => !taken.has(m) && match(m));
        if (seen) return res(take(seen));
        const timer = setTimeout(() => rej(new Error(`no matching reply within ${ms} ms; got ${JSON.stringify(replies)}`)), ms);
        waiters.push({ match, resolve: (m) => (clearTimeout(timer), res(m)) });
      }),
  };
}

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
    const r = collectReplies();
    const closed = new Promise<void>((res) => socket.once('close', () => res()));
    socket.on('error', () => {});
    socket.on('data', (chunk) => r.push(chunk));
    socket.once('error', reject);
    socket.once('connect', () =>
      resolve({
        socket,
        replies: r.replies,
        closed,
        send: (b) => socket.write(b),
        sendMessage: (m) => socket.write(encodeFrame(m)),
        next: r.next,
      }),
    );
  });
}

export interface RawFdConnection {
  replies: Message[];
  closed: Promise<void>;
  /** Writes bytes; `fds` travel with their first byte. */
  send(bytes: Uint8Array, fds?: number[]): void;
  sendMessage(msg: Message, fds?: number[]): void;
  next(match: (m: Message) => boolean, ms?: number): Promise<Message>;
  /** Closes once what was written is sent. */
  end(): void;
  /** Closes now. */
  close(): void;
}

export function rawFdConnect(path: string): Promise<RawFdConnection> {
  return new Promise((resolve, reject) => {
    // Node only connects; the native connection does all reading and writing.
    const socket = new net.Socket();
    socket.pause();
    socket.once('error', reject);
    socket.once('connect', () => {
      const fd = native.dupFd((socket as unknown as { _handle: { fd: number } })._handle.fd);
      socket.destroy();
      const r = collectReplies();
      let onClosed!: () => void;
      const closed = new Promise<void>((res) => (onClosed = res));
      const conn = native.UnixConnection.adopt(fd, {
        onData: (chunk, fds) => {
          for (const f of fds) native.closeFd(f);
          r.push(chunk);
        },
        onDrain: () => {},
        onClose: () => onClosed(),
      });
      let open = true;
      void closed.then(() => (open = false));
      resolve({
        replies: r.replies,
        closed,
        send: (b, fds) => {
          if (open) conn.write(b, fds);
        },
        sendMessage: (m, fds) => {
          if (open) conn.write(encodeFrame(m), fds);
        },
        next: r.next,
        end: () => {
          if (open) conn.end();
          open = false;
        },
        close: () => {
          if (open) conn.close();
          open = false;
        },
      });
    });
    socket.connect(path);
  });
}
