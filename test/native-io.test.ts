// The native fd-passing pieces on real sockets and real memfds: UnixConnection, the fd helpers,
// ShmSegment.fromFd, and the error codes they throw.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { native, type UnixConnection } from '../dist/shared/native.js';
import { ErrorCodes } from '../dist/shared/errors.js';

const known = new Set<string>(Object.values(ErrorCodes));

interface Side {
  conn: UnixConnection;
  chunks: Buffer[];
  fds: number[][];
  drains: number;
  closes: (string | null)[];
  closed: Promise<string | null>;
  /** Runs inside onData, after the chunk was recorded. */
  hook?: (chunk: Buffer, fds: number[]) => void;
  bytes(): Buffer;
  /** Resolves once `n` bytes (in all) have arrived. */
  untilBytes(n: number): Promise<Buffer>;
  untilDrain(): Promise<void>;
}

function adopt(fd: number): Side {
  const waiters: (() => boolean)[] = [];
  const poke = () => {
    for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]()) waiters.splice(i, 1);
  };
  let total = 0;
  let resolveClosed!: (err: string | null) => void;
  const side: Side = {
    conn: undefined as unknown as UnixConnection,
    chunks: [],
    fds: [],
    drains: 0,
    closes: [],
    closed: new Promise((r) => (resolveClosed = r)),
    bytes: () => Buffer.concat(side.chunks),
    untilBytes: (n) =>
      new Promise((resolve) => {
        const check = () => total >= n && (resolve(side.bytes()), true);
        if (!check()) waiters.push(check);
      }),
    untilDrain: () =>
      new Promise((resolve) => {
        const seen = side.drains;
        waiters.push(() => side.drains > seen && (resolve(), true));
      }),
  };
  side.conn = native.UnixConnection.adopt(fd, {
    onData(chunk, fds) {
      side.chunks.push(chunk);
      side.fds.push(fds);
      total += chunk.length;
      side.hook?.(chunk, fds);
      poke();
    },
    onDrain() {
      side.drains++;
      poke();
    },
    onClose(err) {
      side.closes.push(err);
      resolveClosed(err);
    },
  });
  return side;
}

function connectedPair(): [Side, Side] {
  const [a, b] = native.socketPair('stream');
  return [adopt(a), adopt(b)];
}

const tick = () => new Promise((r) => setTimeout(r, 20));

// Closes whatever is still open at the end of a test, so no handle keeps the process alive.
function cleanup(t: Test, ...sides: Side[]) {
  t.teardown(() => {
    for (const s of sides) s.conn.close();
    for (const s of sides) for (const list of s.fds) for (const fd of list) native.closeFd(fd);
  });
}

function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

t.test('a memfd written through ShmSegment.fromFd reaches the peer over a UnixConnection and maps there', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  const size = 1 << 16;
  const fd = native.memfdCreate('nccld-test', size);
  const mine = native.ShmSegment.fromFd(fd, 'mine');
  t.equal(mine.name, 'mine');
  t.equal(mine.size, size);
  t.equal(mine.currentSize(), size);
  new Uint8Array(mine.buffer()).set(pattern(size, 7));

  a.conn.write(Buffer.from('buf!'), [fd]);
  native.closeFd(fd); // ours to close at once: the kernel (or a dup) holds it now
  await b.untilBytes(4);
  t.equal(b.bytes().toString(), 'buf!');
  const got = b.fds.flat();
  t.equal(got.length, 1);
  const info = native.fdInfo(got[0]);
  t.equal(info.size, size);
  t.equal(info.type, 'file');
  t.equal(info.uid, process.getuid!());
  const { SEAL, SHRINK, GROW } = native.SEALS;
  t.equal(info.seals & (SEAL | SHRINK | GROW), SEAL | SHRINK | GROW);

  const theirs = native.ShmSegment.fromFd(got[0], 'theirs');
  t.same(Buffer.from(theirs.buffer()), pattern(size, 7), 'the receiver reads what the sender wrote');
  // Same pages: a write on one side is seen on the other, even with every fd closed.
  native.closeFd(got[0]);
  b.fds.length = 0;
  new Uint8Array(theirs.buffer())[100] = 0xab;
  t.equal(new Uint8Array(mine.buffer())[100], 0xab);
  theirs.close();
  mine.close();
  t.equal(theirs.closed, true);
  t.throws(() => theirs.buffer(), { code: ErrorCodes.BUFFER_CLOSED });
  t.throws(() => theirs.currentSize(), { code: ErrorCodes.BUFFER_CLOSED });
});

t.test('a sealed memfd refuses to shrink or grow; fromFd refuses what is not sealed', async (t) => {
  const fd = native.memfdCreate('nccld-seal', 8192);
  t.teardown(() => native.closeFd(fd));
  t.equal(native.fdInfo(fd).seals & native.SEALS.SHRINK, native.SEALS.SHRINK);
  t.throws(() => fs.ftruncateSync(fd, 4096), { code: 'EPERM' });
  t.throws(() => fs.ftruncateSync(fd, 16384), { code: 'EPERM' });
  t.equal(native.fdInfo(fd).size, 8192);
  // Writing stays allowed: both sides write their buffers.
  fs.writeSync(fd, Buffer.from('ok'), 0, 2, 0);

  const [s1, s2] = native.socketPair('stream');
  t.teardown(() => (native.closeFd(s1), native.closeFd(s2)));
  const sockInfo = native.fdInfo(s1);
  t.equal(sockInfo.type, 'socket');
  t.equal(sockInfo.seals, -1);
  t.throws(() => native.ShmSegment.fromFd(s1, 'sock'), { code: ErrorCodes.BAD_BUFFER });
  t.throws(() => native.memfdCreate('zero', 0), { code: 'EINVAL' });
});

t.test('reduceSlice works on fromFd segments, checking their (fixed) size', async (t) => {
  const count = 1024;
  const segs = [1, 2].map((k) => {
    const fd = native.memfdCreate(`reduce-${k}`, count * 4);
    const seg = native.ShmSegment.fromFd(fd, `reduce-${k}`);
    native.closeFd(fd);
    new Float32Array(seg.buffer()).fill(k);
    return seg;
  });
  t.teardown(() => segs.forEach((s) => s.close()));
  const F32 = 7;
  const SUM = 0;
  await native.reduceSlice(segs, [0, 0], count, F32, SUM, 0, 1);
  for (const s of segs) t.ok(new Float32Array(s.buffer()).every((v) => v === 3), 'every element summed');
  await t.rejects(native.reduceSlice(segs, [0, 4], count, F32, SUM, 0, 1), { code: ErrorCodes.BUFFER_TOO_SMALL });
});

t.test('frames written while the reader is paused all arrive, in order, after resume', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  b.conn.pause();
  const frames = 2000;
  const frame = (i: number) => {
    const f = Buffer.alloc(100, i & 0xff);
    f.writeUInt32BE(i, 0);
    return f;
  };
  for (let i = 0; i < frames; i++) a.conn.write(frame(i));
  await tick();
  t.equal(b.chunks.length, 0, 'no onData while paused');
  b.conn.resume();
  const all = await b.untilBytes(frames * 100);
  t.equal(all.length, frames * 100);
  let inOrder = true;
  for (let i = 0; i < frames; i++) if (all.readUInt32BE(i * 100) !== i || all[i * 100 + 99] !== (i & 0xff)) inOrder = false;
  t.ok(inOrder, 'every frame, in order');
  t.ok(b.chunks.every((c) => c.length <= 64 * 1024), 'chunks of at most 64 KiB');
});

t.test('a large write to a paused peer queues, then drains after resume', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  b.conn.pause();
  const big = pattern(8 << 20, 3);
  const queued = a.conn.write(big);
  t.ok(queued > 0, 'some of it is queued in user space');
  t.equal(a.conn.writableLength, queued);
  t.ok(queued < big.length, 'the kernel took a first part at once');
  // The queue holds a copy: scribbling on our buffer changes nothing that is sent.
  big.fill(0, big.length - 16);
  await tick();
  t.equal(a.drains, 0);
  t.equal(a.conn.writableLength, queued, 'nothing moves while the peer does not read');

  const drained = a.untilDrain();
  b.conn.resume();
  await drained;
  t.equal(a.drains, 1, 'onDrain once');
  t.equal(a.conn.writableLength, 0);
  const got = await b.untilBytes(8 << 20);
  t.ok(got.equals(pattern(8 << 20, 3)), 'all 8 MiB, intact');
});

t.test('close from inside onData is safe and stops the reads', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  let calls = 0;
  b.hook = () => {
    calls++;
    b.conn.close();
    b.conn.close(); // twice: a no-op
    t.equal(b.conn.fd, -1);
    t.equal(b.closes.length, 0, 'onClose does not fire from inside close()');
  };
  b.conn.pause();
  a.conn.write(pattern(1 << 20, 1)); // more than one read's worth waits for b
  b.conn.resume();
  t.equal(await b.closed, null);
  await tick();
  t.equal(calls, 1, 'no onData after close');
  t.same(b.closes, [null], 'onClose exactly once');
  t.throws(() => b.conn.write(Buffer.from('x')), { code: ErrorCodes.CLOSED });
  // a had bytes unread by b when b closed: for a that is a reset, reported once.
  const aErr = await a.closed;
  t.ok(aErr === 'ECONNRESET' || aErr === 'EPIPE' || aErr === null, `a closed (${aErr})`);
  t.equal(a.closes.length, 1);
});

t.test('onClose fires once, with null, when the peer closes; never synchronously', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  a.conn.write(Buffer.from('last words'));
  a.conn.end();
  t.equal(a.closes.length, 0, 'end() does not call onClose synchronously');
  t.throws(() => a.conn.write(Buffer.from('more')), { code: ErrorCodes.CLOSED }, 'write after end');
  t.equal(await b.closed, null);
  t.equal(b.bytes().toString(), 'last words', 'every byte before the end is delivered');
  t.equal(await a.closed, null);
  await tick();
  t.same(a.closes, [null]);
  t.same(b.closes, [null]);
  t.equal(b.conn.fd, -1);
  t.equal(b.conn.writableLength, 0);
  b.conn.end(); // after close: no-ops
  b.conn.pause();
  b.conn.resume();
});

t.test('end() with a queue flushes it before closing', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  b.conn.pause();
  a.conn.write(pattern(2 << 20, 9));
  t.ok(a.conn.writableLength > 0);
  a.conn.end();
  await tick();
  t.equal(a.closes.length, 0, 'still flushing');
  b.conn.resume();
  t.equal(await a.closed, null);
  t.equal(await b.closed, null);
  t.ok(b.bytes().equals(pattern(2 << 20, 9)));
});

t.test('fds sent with a queued write arrive with its first byte', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  b.conn.pause();
  const filler = pattern(1 << 20, 5);
  a.conn.write(filler);
  const fd = native.memfdCreate('queued', 4096);
  const seg = native.ShmSegment.fromFd(fd, 'queued');
  new Uint8Array(seg.buffer()).fill(0x5a);
  seg.close();
  t.ok(a.conn.write(Buffer.from('FD'), [fd]) > 0, 'the write with the fd is queued');
  native.closeFd(fd); // the queue holds a dup
  t.throws(() => native.fdInfo(fd), { code: 'EBADF' });
  b.conn.resume();
  await b.untilBytes(filler.length + 2);
  const withFds = b.chunks.map((c, i) => ({ c, fds: b.fds[i] })).filter((x) => x.fds.length > 0);
  t.equal(withFds.length, 1, 'one chunk carries fds');
  t.equal(withFds[0].c.subarray(-2).toString(), 'FD', 'the chunk holding the write first byte');
  t.equal(withFds[0].fds.length, 1);
  const theirs = native.ShmSegment.fromFd(withFds[0].fds[0], 'theirs');
  t.ok(Buffer.from(theirs.buffer()).equals(Buffer.alloc(4096, 0x5a)));
  theirs.close();
});

t.test('write checks its arguments', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  t.throws(() => a.conn.write('text' as unknown as Uint8Array), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => a.conn.write(Buffer.alloc(0), [0]), { code: ErrorCodes.INVALID_ARG }, 'fds need a byte');
  t.throws(() => a.conn.write(Buffer.from('x'), new Array(17).fill(0)), { code: ErrorCodes.INVALID_ARG });
  const [x, y] = native.socketPair('stream');
  native.closeFd(x);
  native.closeFd(y);
  t.throws(() => a.conn.write(Buffer.from('x'), [x]), { code: 'EBADF' }, 'a closed fd is refused, not sent');
  t.equal(a.conn.write(Buffer.alloc(0)), 0);
  t.equal(a.closes.length, 0, 'the connection lives on');
  a.conn.write(Buffer.from('fine'));
  t.equal((await b.untilBytes(4)).toString(), 'fine');
});

t.test('a write to a peer that is gone closes with an error, on a later turn', async (t) => {
  const [a, b] = connectedPair();
  cleanup(t, a, b);
  b.conn.close();
  await b.closed;
  a.conn.pause(); // a would notice the end only when reading or writing
  t.equal(a.conn.write(Buffer.from('anyone?')), 0);
  t.equal(a.closes.length, 0);
  t.equal(await a.closed, 'EPIPE');
  t.same(a.closes, ['EPIPE']);
});

t.test('adopt refuses what is not a Unix stream socket, and leaves the fd to the caller', async (t) => {
  const handlers = { onData() {}, onDrain() {}, onClose() {} };
  const [p, q] = native.socketPair('seqpacket');
  const memfd = native.memfdCreate('not-a-socket', 4096);
  t.teardown(() => [p, q, memfd].forEach((fd) => native.closeFd(fd)));
  t.throws(() => native.UnixConnection.adopt(p, handlers), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.UnixConnection.adopt(memfd, handlers), { code: 'ENOTSOCK' });
  t.throws(() => native.UnixConnection.adopt(p, { onData() {} } as never), { code: ErrorCodes.INVALID_ARG });
  t.equal(native.fdInfo(p).type, 'socket', 'still open');
  const Ctor = native.UnixConnection as unknown as new () => unknown;
  t.throws(() => new Ctor(), { code: ErrorCodes.INVALID_ARG });
});

t.test('sendFds and recvFds over a seqpacket pair', async (t) => {
  const [a, b] = native.socketPair('seqpacket');
  const memfd = native.memfdCreate('seq', 4096);
  t.teardown(() => [a, b, memfd].forEach((fd) => native.closeFd(fd)));
  t.equal(native.recvFds(b, 100), null, 'nothing waiting');
  native.sendFds(a, Buffer.from('hello'), [memfd, memfd]);
  native.sendFds(a, Buffer.from('no fds'), []);
  const m1 = native.recvFds(b, 100)!;
  t.equal(m1.data.toString(), 'hello');
  t.equal(m1.fds.length, 2);
  t.equal(m1.truncated, false);
  t.equal(m1.fdsTruncated, false);
  for (const fd of m1.fds) {
    t.equal(native.fdInfo(fd).size, 4096);
    native.closeFd(fd);
  }
  const m2 = native.recvFds(b, 3)!;
  t.equal(m2.data.toString(), 'no ', 'message boundaries kept; the tail past maxBytes is lost');
  t.equal(m2.truncated, true);
  t.same(m2.fds, []);

  const dup = native.dupFd(memfd);
  t.not(dup, memfd);
  t.equal(native.fdInfo(dup).size, 4096);
  native.closeFd(dup);
  t.throws(() => native.closeFd(dup), { code: 'EBADF' });
  t.throws(() => native.sendFds(a, Buffer.alloc(0), []), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.sendFds(a, Buffer.from('x'), new Array(17).fill(memfd)), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.recvFds(b, 0), { code: ErrorCodes.INVALID_ARG });
  t.throws(() => native.socketPair('dgram' as never), { code: ErrorCodes.INVALID_ARG });

  // Fill a's send buffer: EAGAIN is thrown, not waited for.
  let err: { code?: string } | undefined;
  try {
    for (let i = 0; i < 100000; i++) native.sendFds(a, Buffer.alloc(1024), []);
  } catch (e) {
    err = e as { code?: string };
  }
  t.equal(err?.code, 'EAGAIN');
});

t.test('sendFds on a stream socket reports a partial send as EAGAIN with bytesSent', async (t) => {
  const [a, b] = native.socketPair('stream');
  t.teardown(() => [a, b].forEach((fd) => native.closeFd(fd)));
  let err: { code?: string; bytesSent?: number } | undefined;
  try {
    native.sendFds(a, Buffer.alloc(16 << 20), []);
  } catch (e) {
    err = e as typeof err;
  }
  t.equal(err?.code, 'EAGAIN');
  t.ok(err!.bytesSent! > 0 && err!.bytesSent! < 16 << 20);
});

t.test('raiseFdLimit sets the soft limit to the hard one', async (t) => {
  const lim = native.raiseFdLimit();
  t.equal(lim.soft, lim.hard);
  t.ok(lim.soft > 0);
});

t.test('every NCCLD_ERR_ code the native side throws is in ErrorCodes', async (t) => {
  const throwing: [string, () => unknown][] = [
    ['fromFd without args', () => (native.ShmSegment.fromFd as (...a: unknown[]) => unknown)()],
    ['fromFd of a socket', () => {
      const [x, y] = native.socketPair('stream');
      try {
        return native.ShmSegment.fromFd(x, 's');
      } finally {
        native.closeFd(x);
        native.closeFd(y);
      }
    }],
    ['memfdCreate(-1)', () => native.memfdCreate('x', -1)],
    ['fdInfo("x")', () => native.fdInfo('x' as never)],
    ['closeFd(1.5)', () => native.closeFd(1.5)],
    ['shmUnlink(1)', () => native.shmUnlink(1 as never)],
    ['peerCredentials(-1)', () => native.peerCredentials(-1)],
    ['sliceBounds', () => native.sliceBounds(1, 3, 0, 1)],
    ['adopt()', () => (native.UnixConnection.adopt as (...a: unknown[]) => unknown)()],
    ['closed connection', () => {
      const [x, y] = native.socketPair('stream');
      native.closeFd(y);
      const c = native.UnixConnection.adopt(x, { onData() {}, onDrain() {}, onClose() {} });
      c.close();
      return c.write(Buffer.from('x'));
    }],
    ['closed segment', () => {
      const fd = native.memfdCreate('c', 4096);
      const s = native.ShmSegment.fromFd(fd, 'c');
      native.closeFd(fd);
      s.close();
      return s.buffer();
    }],
  ];
  const seen = new Set<string>();
  for (const [what, fn] of throwing) {
    let code: unknown;
    try {
      fn();
    } catch (e) {
      code = (e as { code?: unknown }).code;
    }
    t.type(code, 'string', `${what} throws with a code`);
    if (typeof code === 'string' && code.startsWith('NCCLD_ERR_')) {
      seen.add(code);
      t.ok(known.has(code), `${what}: ${code} is in ErrorCodes`);
    }
  }
  t.same([...seen].sort(), [ErrorCodes.BAD_BUFFER, ErrorCodes.BUFFER_CLOSED, ErrorCodes.CLOSED, ErrorCodes.INVALID_ARG].sort());
  await tick(); // let the closed connection's onClose run
});
