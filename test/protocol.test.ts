// Hostile and broken clients: each gets an error or a closed connection, never a crash, and a
// well-behaved client on the same daemon notices nothing.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { connect, HostBuffer } from '../dist/client/index.js';
import { startDaemon } from './helpers/daemon.js';
import { rawConnect, rawFdConnect } from './helpers/raw.js';
import { encodeFrame } from '../dist/shared/framing.js';
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION } from '../dist/shared/protocol.js';
import { checkedAllReduce } from './helpers/buffers.js';

const hello = { type: 'hello', protocol: PROTOCOL_VERSION, client: 'raw' };

t.test('broken clients do not disturb the daemon', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-frame-bytes', '65536']);
  t.teardown(() => d.stop());
  const bystander = await connect(d.socket);
  t.teardown(() => bystander.close());
  const stillServing = async (what: string) => {
    const r = await checkedAllReduce(bystander, 'f32', 'sum', 1000, 3);
    t.equal(r.mismatches, 0, `bystander served after ${what}`);
  };

  await t.test('garbage bytes', async (t) => {
    const c = await rawConnect(d.socket);
    c.send(randomBytes(4096));
    // Random bytes make a huge length prefix or a bad body: an error frame, a close, or both.
    await Promise.race([c.closed, c.next((m) => m.type === 'error')]);
    t.pass('answered or closed');
    c.socket.destroy();
    await stillServing('garbage');
  });

  await t.test('a length prefix past the maximum', async (t) => {
    const c = await rawConnect(d.socket);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(65537);
    c.send(head);
    const err = await c.next((m) => m.type === 'error');
    t.match(err, { code: 'NCCLD_ERR_FRAME_TOO_LARGE', id: null });
    await c.closed;
    t.pass('the daemon closed the connection');
    await stillServing('an oversized frame');
  });

  await t.test('a truncated frame, then the client goes away', async (t) => {
    const c = await rawConnect(d.socket);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(1000);
    c.send(Buffer.concat([head, Buffer.alloc(10)]));
    c.socket.end();
    await c.closed;
    t.pass('closed cleanly');
    await stillServing('a truncated frame');
  });

  await t.test('valid MessagePack of the wrong shape', async (t) => {
    const c = await rawConnect(d.socket);
    t.teardown(() => c.socket.destroy());
    for (const body of [Buffer.from([0x93, 1, 2, 3]), Buffer.from([0xa3, 0x61, 0x62, 0x63]), Buffer.from([0xc0])]) {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      c.send(Buffer.concat([head, body]));
    }
    // The stream is still in step: a hello after the bad frames works.
    c.sendMessage(hello);
    const h = await c.next((m) => m.type === 'hello');
    t.equal(h.worldSize, 2);
    t.equal(c.replies.filter((m) => m.code === 'NCCLD_ERR_BAD_FRAME').length, 3, 'three BAD_FRAME errors');
    await stillServing('wrong shapes');
  });

  await t.test('requests before hello, bad versions, unknown types, odd keys', async (t) => {
    const c = await rawConnect(d.socket);
    t.teardown(() => c.socket.destroy());
    c.sendMessage({ type: 'allreduce', id: 1 });
    t.match(await c.next((m) => m.id === 1), { code: 'NCCLD_ERR_HELLO_REQUIRED' });
    c.sendMessage({ type: 'hello', protocol: 'one' });
    t.match(await c.next((m) => m.code === 'NCCLD_ERR_BAD_REQUEST'), { type: 'error' });
    c.sendMessage(hello);
    await c.next((m) => m.type === 'hello');
    c.sendMessage({ type: 'teleport', id: 2 });
    t.match(await c.next((m) => m.id === 2), { code: 'NCCLD_ERR_UNKNOWN_TYPE' });
    // An own key named __proto__ (JSON.parse makes one) must not reach any prototype.
    c.sendMessage(JSON.parse('{"type":"allreduce","id":3,"__proto__":{"polluted":true},"constructor":1}'));
    t.match(await c.next((m) => m.id === 3), { type: 'error' });
    t.equal(({} as { polluted?: boolean }).polluted, undefined);
    // A reply to a request without a usable id carries id null, and what was sent as invalidId.
    c.sendMessage({ type: 'allreduce', id: -5 });
    t.match(await c.next((m) => m.type === 'error' && m.id === null && m.code === 'NCCLD_ERR_BAD_REQUEST'), { message: /id/, invalidId: -5 });
    c.sendMessage({ type: 'release', id: 'seven', buffers: [1] });
    t.match(await c.next((m) => m.type === 'error' && m.id === null), { code: 'NCCLD_ERR_BAD_REQUEST', invalidId: 'seven' });
    c.sendMessage({ type: 'release', id: 2 ** 32, buffers: [1] });
    t.match(await c.next((m) => m.type === 'error' && m.id === null), { code: 'NCCLD_ERR_BAD_REQUEST', invalidId: 2 ** 32 });
    c.sendMessage({ type: 'release', id: { nested: 1 }, buffers: [1] });
    t.match(await c.next((m) => m.type === 'error' && m.id === null), { code: 'NCCLD_ERR_BAD_REQUEST', invalidId: null });
    await stillServing('odd requests');
  });

  await t.test('a protocol version the daemon does not speak', async (t) => {
    // Version 1 named shared-memory segments; this daemon no longer speaks it.
    for (const protocol of [0, MIN_PROTOCOL_VERSION - 1]) {
      const c = await rawConnect(d.socket);
      c.sendMessage({ type: 'hello', protocol });
      t.match(await c.next((m) => m.type === 'error'), { id: null, code: 'NCCLD_ERR_VERSION', supported: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION] }, `protocol ${protocol}`);
      await c.closed;
      t.pass(`closed after the version error (protocol ${protocol})`);
    }
    await stillServing('refused versions');
  });

  await t.test('a newer client is answered in the version both speak', async (t) => {
    const c = await rawConnect(d.socket);
    t.teardown(() => c.socket.destroy());
    c.sendMessage({ type: 'hello', protocol: 99, futureField: { x: 1 } });
    const h = await c.next((m) => m.type === 'hello');
    t.match(h, { protocol: PROTOCOL_VERSION, server: 'nccld', backend: 'host', worldSize: 2, maxFrameBytes: 65536 });
    // What a client needs to stay within the daemon's limits, and to match GPUs (none here).
    t.same([h.devices, h.deviceUuids], [[null, null], [null, null]]);
    t.same([h.maxInFlight, h.maxBuffers, h.timeoutMs, h.maxTimeoutMs], [1024, 4096, 30_000, 600_000], 'the defaults of the limits');
  });

  await t.test('a request id already in flight is refused', async (t) => {
    const c = await rawFdConnect(d.socket);
    t.teardown(() => c.close());
    c.sendMessage(hello);
    await c.next((m) => m.type === 'hello');
    const bufs = [HostBuffer.alloc(1 << 24), HostBuffer.alloc(1 << 24)];
    t.teardown(() => bufs.forEach((b) => b.free()));
    const numbers: number[] = [];
    for (const [i, b] of bufs.entries()) {
      c.sendMessage({ type: 'register', id: 100 + i }, [b.registerRequest().fd]);
      const r = await c.next((m) => m.id === 100 + i);
      t.match(r, { type: 'result', buffer: Number, bytes: 1 << 24 }, `buffer ${i} registered`);
      numbers.push(r.buffer as number);
    }
    const msg = { type: 'allreduce', id: 7, dtype: 'f32', op: 'sum', count: 1 << 22, buffers: numbers };
    // Both frames in one write: the first is still running (16 MiB per rank) when the second is read.
    c.send(Buffer.concat([encodeFrame(msg), encodeFrame(msg)]));
    await c.next((m) => m.type === 'result' && m.id === 7, 30_000);
    // The refusal carries id null (a client could take an error with id 7 for the first request's
    // reply) and names the id it refused.
    const dup = c.replies.filter((m) => m.code === 'NCCLD_ERR_DUPLICATE_ID');
    t.equal(dup.length, 1, 'one DUPLICATE_ID');
    t.match(dup[0], { id: null, duplicateId: 7 });
    t.equal(c.replies.filter((m) => m.id === 7).length, 1, 'one reply with id 7: the result');
    // Once answered, the id is free again.
    c.sendMessage({ ...msg, count: 16 });
    t.match(await c.next((m) => m.id === 7), { type: 'result' }, 'the id can be used again');
  });
});
