// Finding 10: "'too many open files' and symlink errors came back as NCCLD_ERR_INTERNAL; client
// names with newlines forge lines in the debug socket's clients; three codes thrown by native
// code were missing from shared/errors.ts; an invalid request id was answered with id: null, and
// DUPLICATE_ID carried the duplicated id, so a client could not match either reply."
//
// Against a real daemon, with a well-behaved client alongside: invalid ids are answered with
// id null and `invalidId` (what was sent); a duplicate id with id null and `duplicateId`, while
// the first request keeps its own reply; a forged client name stays on one line of `clients`;
// every NCCLD_ERR_ code native code can throw is in shared/errors.ts; a daemon out of file
// descriptors answers a registration with RESOURCE_EXHAUSTED. Also: frames that follow a refusal
// in the same write, and a client that disconnects mid-burst, take nothing down (both used to
// crash the daemon: a write on the closed connection threw).
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { connect, ErrorCodes, HostBuffer } from '../../dist/client/index.js';
import { encodeFrame, FrameDecoder, type Message } from '../../dist/shared/framing.js';
import { native } from '../../dist/shared/native.js';
import type { DaemonStatus } from '../../dist/daemon/status.js';
import { alive, debugCommand, ROOT, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient, type GoodReport } from '../helpers/good-client.js';
import { debugJson, debugSession, fdCount, quietFdCount, status } from '../helpers/inspect.js';
import { rawConnect } from '../helpers/raw.js';

/**
 * A raw connection through the native Unix connection, so frames can carry descriptors: what a
 * register request needs, and what a plain Node socket cannot send.
 */
async function fdConnect(socketPath: string) {
  const socket = net.connect(socketPath);
  socket.pause();
  await once(socket, 'connect');
  const fd = native.dupFd((socket as unknown as { _handle: { fd: number } })._handle.fd);
  socket.destroy();
  const decoder = new FrameDecoder(1 << 20);
  const replies: Message[] = [];
  let closedResolve!: () => void;
  const closed = new Promise<void>((r) => (closedResolve = r));
  const conn = native.UnixConnection.adopt(fd, {
    onData: (chunk, fds) => {
      fds.forEach((f) => native.closeFd(f));
      for (const f of decoder.push(chunk)) if ('message' in f) replies.push(f.message);
    },
    onDrain: () => {},
    onClose: () => closedResolve(),
  });
  return {
    replies,
    closed,
    /** Frames in one write; `fds` go with its first byte. */
    send: (msgs: Message[], fds?: number[]) => conn.write(Buffer.concat(msgs.map((m) => encodeFrame(m))), fds),
    waitFor: async (what: string, pred: (m: Message) => boolean, ms = 20_000) => {
      await until(what, () => replies.some(pred), ms);
      return replies.find(pred)!;
    },
    close: () => conn.close(),
  };
}

const fmt = (r: GoodReport) => `${r.ok} ok, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, errors ${JSON.stringify(r.errors)}`;

t.test('protocol errors get replies a client can match, and hurt no one', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const pids = (await status(d.debugSocket)).ranks.map((r) => r.pid!);
  const good = await startGoodClient(d.socket);
  let report: GoodReport | null = null;
  t.teardown(async () => {
    report ??= await good.stop();
  });

  await t.test('invalid request ids: id null, and invalidId echoing a number or string', async (t) => {
    const c = await rawConnect(d.socket);
    t.teardown(() => c.socket.destroy());
    c.sendMessage({ type: 'hello', protocol: 2, client: 'bad-ids' });
    await c.next((m) => m.type === 'hello');
    const cases: [string, unknown, unknown][] = [
      ['a string', 'seven', 'seven'],
      ['a numeric string', '7', '7'],
      ['negative', -1, -1],
      ['2**32', 2 ** 32, 2 ** 32],
      ['2**53 + 2 (a uint64)', 2 ** 53 + 2, 2 ** 53 + 2],
      ['a float', 1.5, 1.5],
      ['Infinity', Infinity, Infinity],
      ['null', null, null],
      ['true', true, null],
      ['an array', [1], null],
      ['a map', { id: 1 }, null],
    ];
    for (const [what, id, shown] of cases) {
      for (const type of ['allreduce', 'release', 'register', 'nonsense']) {
        c.sendMessage({ type, id, buffers: [1, 2], dtype: 'f32', op: 'sum', count: 1 });
        const reply = await c.next((m) => m.type === 'error');
        t.match(reply, { id: null, code: ErrorCodes.BAD_REQUEST }, `${type} with ${what} as id: id null`);
        t.same(reply.invalidId, shown, `${type} with ${what} as id: invalidId ${JSON.stringify(shown)}`);
      }
    }
    c.sendMessage({ type: 'allreduce', dtype: 'f32', op: 'sum', count: 1, buffers: [1, 2] });
    const missing = await c.next((m) => m.type === 'error');
    t.match(missing, { id: null, code: ErrorCodes.BAD_REQUEST, invalidId: null }, 'a missing id: id null, invalidId null');
    // The edges of the valid range are answered under their own id.
    for (const id of [0, 2 ** 32 - 1]) {
      c.sendMessage({ type: 'allreduce', id, dtype: 'f32', op: 'sum', count: 1, buffers: [1, 2] });
      t.match(await c.next((m) => m.type === 'error'), { id, code: ErrorCodes.NO_SUCH_BUFFER }, `id ${id} is valid and matched`);
    }
  });

  await t.test('a duplicate id while the first is in flight: id null and duplicateId; the first keeps its reply', async (t) => {
    const c = await fdConnect(d.socket);
    t.teardown(() => c.close());
    c.send([{ type: 'hello', protocol: 2, client: 'dup-ids' }]);
    await c.waitFor('hello', (m) => m.type === 'hello');
    const count = 8 << 20; // 32 MiB of f32 per rank: the first is still running when the second arrives
    const handles: number[] = [];
    for (let r = 0; r < 2; r++) {
      const fd = native.memfdCreate(`dup-${r}`, count * 4);
      c.send([{ type: 'register', id: 100 + r }], [fd]);
      native.closeFd(fd);
      const reply = await c.waitFor(`register ${r}`, (m) => m.id === 100 + r);
      t.equal(reply.type, 'result', `buffer ${r} registered`);
      handles.push(reply.buffer as number);
    }
    const slow = { type: 'allreduce', id: 7, dtype: 'f32', op: 'sum', count, buffers: handles };
    // Both in one write: the second is read while the first runs.
    c.send([slow, slow, { ...slow, type: 'release', buffers: [handles[0]] }]);
    await c.waitFor('the first request’s result', (m) => m.type === 'result' && m.id === 7);
    const dups = c.replies.filter((m) => m.code === ErrorCodes.DUPLICATE_ID);
    t.equal(dups.length, 2, 'the second allreduce and the release under id 7 were refused');
    t.ok(dups.every((m) => m.id === null && m.duplicateId === 7), 'each with id null and duplicateId 7');
    t.equal(c.replies.filter((m) => m.id === 7).length, 1, 'id 7 got exactly one reply: its own result');
    // Once answered, the id is free again.
    c.send([{ ...slow, count: 1 }]);
    await until('id 7 answered again', () => c.replies.filter((m) => m.type === 'result' && m.id === 7).length === 2);
    t.pass('the id was reusable once answered');

    // Two registrations under one id in one write, each with its memfd: one registered, one refused, no descriptor kept.
    const daemonFds = await quietFdCount(d.proc.pid!);
    const fdA = native.memfdCreate('dup-a', 4096);
    const fdB = native.memfdCreate('dup-b', 4096);
    c.send([{ type: 'register', id: 9 }], [fdA]);
    c.send([{ type: 'register', id: 9 }], [fdB]);
    native.closeFd(fdA);
    native.closeFd(fdB);
    await c.waitFor('register 9', (m) => m.type === 'result' && m.id === 9);
    await c.waitFor('duplicate register 9', (m) => m.duplicateId === 9);
    t.equal(c.replies.filter((m) => m.id === 9).length, 1, 'one reply under id 9');
    await until('the refused descriptor closed', () => fdCount(d.proc.pid!) <= daemonFds + 1, 3_000).catch(() => {});
    t.equal(fdCount(d.proc.pid!), daemonFds + 1, 'the daemon kept one descriptor: the registered one');
  });

  await t.test('frames after a refusal in the same write, and a client gone mid-burst, take nothing down', async (t) => {
    const daemonPid = d.proc.pid!;
    // A bad version refuses the connection; the frames after it in the same write are dropped.
    const c = await rawConnect(d.socket);
    c.send(Buffer.concat([encodeFrame({ type: 'hello', protocol: 1 }), encodeFrame({ type: 'hello', protocol: 1 }), encodeFrame({ type: 'hello', protocol: 2 })]));
    await c.closed;
    t.equal(c.replies.length, 1, 'one reply (the refusal), then the close');
    t.match(c.replies[0], { code: ErrorCodes.VERSION, id: null });
    // Past the maximum frame size, with more frames behind it.
    const big = Buffer.alloc(4);
    big.writeUInt32BE(1 << 20);
    const c2 = await rawConnect(d.socket);
    c2.send(Buffer.concat([encodeFrame({ type: 'hello', protocol: 2 }), big, encodeFrame({ type: 'hello', protocol: 2 })]));
    await c2.closed;
    t.same(c2.replies.map((m) => m.code ?? m.type), ['hello', ErrorCodes.FRAME_TOO_LARGE], 'hello, FRAME_TOO_LARGE, then the close');
    // Thousands of requests, and the client gone before the replies: a reply's write fails mid-chunk.
    for (let k = 0; k < 10; k++) {
      const s = net.connect(d.socket);
      s.on('error', () => {});
      await once(s, 'connect');
      const frames = [encodeFrame({ type: 'hello', protocol: 2 })];
      for (let i = 0; i < 3000; i++) frames.push(encodeFrame({ type: 'allreduce', id: i, dtype: 'f32', op: 'sum', count: 1, buffers: [1, 2] }));
      s.end(Buffer.concat(frames));
      s.destroy();
    }
    await new Promise((r) => setTimeout(r, 500));
    t.ok(alive(daemonPid), 'the daemon is alive');
    const s = await status(d.debugSocket);
    t.equal(s.world.state, 'ready');
  });

  await t.test('a client name with newlines stays on one line of the debug socket', async (t) => {
    const forged = 'client 99 root-shell 1 0 0 0 0 0s';
    const name = `evil\nOK\n${forged}\r\n\u001b[2J\u0085\u0000end`;
    const evil = await connect(d.socket, { name });
    t.teardown(() => evil.close());
    const out = await debugCommand(d.debugSocket, 'clients');
    const lines = out.split('\n').filter((l) => l !== '');
    const sessions = await debugJson<{ name: string | null }[]>(d.debugSocket, 'clients');
    t.equal(lines.length, 1 + sessions.length + 1, `a header, one line per client (${sessions.length}), and OK`);
    t.equal(lines.filter((l) => l === 'OK').length, 1, 'one OK line, the last');
    t.equal(lines.at(-1), 'OK');
    t.notOk(lines.some((l) => l.startsWith('client 99')), 'no forged line');
    t.notOk(/[\r\u001b\u0085\u0000]/.test(out), 'no raw control character');
    const evilLine = lines.find((l) => l.includes('evil'));
    t.match(evilLine, /evil\\x0aOK\\x0aclient 99/, 'the newlines are shown escaped');
    t.ok(sessions.some((s) => s.name === name), 'format json gives the name exactly, safely quoted');
  });

  await t.test('every NCCLD_ERR_ code the native addon can throw is in shared/errors.ts', async (t) => {
    const known = new Set<string>(Object.values(ErrorCodes));
    const header = fs.readFileSync(path.join(ROOT, 'build/generated/error_codes.h'), 'utf8');
    const generated = new Map([...header.matchAll(/constexpr const char\* (kErr\w+) = "(NCCLD_ERR_[A-Z_]+)";/g)].map((m) => [m[1], m[2]]));
    t.same([...generated.values()].sort(), [...known].sort(), 'the generated header holds exactly the codes of shared/errors.ts');
    // Every code named in native code: through a generated constant, or spelled out.
    const sources: string[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(cc|h|cpp|hpp)$/.test(e.name)) sources.push(p);
      }
    };
    walk(path.join(ROOT, 'native'));
    const used = new Set<string>();
    for (const file of sources) {
      // Comments may name codes loosely; code may not.
      const code = fs.readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
      for (const m of code.matchAll(/\bkErr[A-Z]\w*/g)) {
        t.ok(generated.has(m[0]), `${path.relative(ROOT, file)}: ${m[0]} is generated from shared/errors.ts`);
        used.add(generated.get(m[0]) ?? m[0]);
      }
      for (const m of code.matchAll(/"(NCCLD_ERR_[A-Z_]*)"/g)) used.add(m[1]);
    }
    t.ok(used.size >= 5, `native code uses ${used.size} codes: ${[...used].join(', ')}`);
    for (const code of used) t.ok(known.has(code), `${code} is in ErrorCodes`);
    // And what the addon actually throws when misused: one of ours, or an errno name.
    const calls: [string, () => unknown][] = [
      ['memfdCreate()', () => (native.memfdCreate as unknown as () => number)()],
      ['memfdCreate(0)', () => native.memfdCreate('x', 0)],
      ['fdInfo(-1)', () => native.fdInfo(-1)],
      ['fdInfo(closed)', () => native.fdInfo(1_000_000)],
      ['closeFd("x")', () => native.closeFd('x' as unknown as number)],
      ['dupFd(-5)', () => native.dupFd(-5)],
      ['socketPair("dgram")', () => native.socketPair('dgram' as 'stream')],
      ['sendFds(bad)', () => native.sendFds(-1, Buffer.from('x'), [])],
      ['recvFds(bad)', () => native.recvFds(-1, 16)],
      ['ShmSegment.fromFd(-1)', () => native.ShmSegment.fromFd(-1, 'x')],
      ['ShmSegment.open("")', () => native.ShmSegment.open('')],
      ['peerCredentials(-1)', () => native.peerCredentials(-1)],
      ['UnixConnection.adopt(-1)', () => native.UnixConnection.adopt(-1, { onData() {}, onDrain() {}, onClose() {} })],
      ['sliceBounds()', () => (native.sliceBounds as unknown as () => void)()],
      ['sdNotify(1)', () => native.sdNotify(1 as unknown as string)],
    ];
    for (const [what, call] of calls) {
      let code: unknown = 'no error';
      try {
        call();
      } catch (err) {
        code = (err as { code?: unknown }).code;
      }
      t.ok(typeof code === 'string' && (known.has(code) || /^E[A-Z0-9]+$/.test(code)), `${what} throws ${String(code)}: ours or an errno name`);
    }
    const seg = native.ShmSegment.fromFd(native.memfdCreate('closed', 4096), 'closed');
    seg.close();
    t.throws(() => seg.buffer(), { code: ErrorCodes.BUFFER_CLOSED }, 'a closed segment: BUFFER_CLOSED');
    await t.rejects(native.reduceSlice([seg], [0], 1, 7, 0, 0, 1), { code: ErrorCodes.BUFFER_CLOSED }, 'reduceSlice on it: BUFFER_CLOSED');
  });

  report ??= await good.stop();
  t.comment(`good client: ${fmt(report)}`);
  t.ok(report.ok > 10, 'the good client was served throughout');
  t.equal(report.wrong, 0);
  t.same(report.errors, {});
  const end = await status(d.debugSocket);
  t.equal(end.world.state, 'ready');
  t.equal(end.world.rebuilds, 0);
  t.same(end.ranks.map((r) => r.pid), pids, 'the same device processes');
  const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
  t.comment(`daemon errors by code: ${JSON.stringify(stats.errors)}`);
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'no INTERNAL error');
});

t.test('a daemon out of file descriptors answers a registration with RESOURCE_EXHAUSTED', async (t) => {
  const FD_LIMIT = 128;
  // The daemon raises its soft limit to the hard one: lower both (bash's ulimit -n does).
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-buffers', '10000'], { shell: `ulimit -n ${FD_LIMIT}` });
  t.teardown(() => d.stop());
  const { proc, socket } = d;
  t.equal(proc.exitCode, null, 'the daemon started');
  const limits = fs.readFileSync(`/proc/${proc.pid}/limits`, 'utf8');
  t.match(limits, new RegExp(`Max open files\\s+${FD_LIMIT}\\s+${FD_LIMIT}`), `its descriptor limit is ${FD_LIMIT}`);

  // A debug connection opened now, kept open: a new one cannot be accepted once descriptors run out.
  const ask = await debugSession(t, d.debugSocket);
  const pids = (await ask<DaemonStatus>('status')).ranks.map((r) => r.pid!);

  const good = await startGoodClient(socket);
  let report: GoodReport | null = null;
  t.teardown(async () => {
    report ??= await good.stop();
  });
  const attacker = await connect(socket, { name: 'fd-exhauster' });
  t.teardown(() => attacker.close());
  const protocolErrors: string[] = [];
  attacker.on('protocolError', (e: { code: string }) => protocolErrors.push(e.code));
  const codes: Record<string, number> = {};
  const kept: { buf: HostBuffer; handle: number }[] = [];
  const spare: HostBuffer[] = [];
  t.teardown(() => [...kept.map((k) => k.buf), ...spare].forEach((b) => b.free()));
  for (let i = 0; i < FD_LIMIT + 20; i++) {
    const buf = HostBuffer.alloc(4096);
    try {
      kept.push({ buf, handle: await attacker.register(buf) });
    } catch (err) {
      spare.push(buf);
      const code = (err as { code: string }).code;
      codes[code] = (codes[code] ?? 0) + 1;
    }
  }
  t.comment(`with a limit of ${FD_LIMIT} descriptors: ${kept.length} registered, then ${JSON.stringify(codes)}; connection-level errors ${JSON.stringify(protocolErrors)}`);
  t.ok(kept.length > FD_LIMIT / 2, `registrations succeeded until the descriptors ran out (${kept.length})`);
  t.ok((codes[ErrorCodes.RESOURCE_EXHAUSTED] ?? 0) >= 10, 'then RESOURCE_EXHAUSTED');
  t.same(Object.keys(codes), [ErrorCodes.RESOURCE_EXHAUSTED], 'and nothing else: not BAD_REQUEST, not INTERNAL');
  t.same(protocolErrors, [], 'no connection-level error either');

  // A new connection now: the daemon cannot take it; it is closed, promptly, and nothing else happens.
  const t0 = Date.now();
  const late = await connect(socket, { timeoutMs: 5_000 }).then(
    (c) => (void c.close(), 'connected'),
    (err: { code: string }) => err.code,
  );
  t.comment(`a new connection while out of descriptors: ${late} after ${Date.now() - t0} ms`);
  t.ok([ErrorCodes.RESOURCE_EXHAUSTED, ErrorCodes.CONNECTION_CLOSED, 'connected'].includes(late), 'refused (or, if a descriptor was free, served), never left hanging');
  t.ok(alive(proc.pid!), 'the daemon is alive');

  // The good client, connected before, is still served on its registered buffers.
  const before = (await ask<{ collectives: number }>('stats')).collectives;
  await until('the good client still runs collectives', async () => (await ask<{ collectives: number }>('stats')).collectives > before + 10, 10_000);
  t.pass('collectives on registered buffers still run');

  // Released buffers give descriptors back: registration works again.
  await attacker.release(kept.splice(0, 8).map((k) => k.handle));
  const again = spare.pop()!;
  const h = await attacker.register(again);
  t.ok(h > 0, 'a registration succeeds once descriptors are free again');
  kept.push({ buf: again, handle: h });

  report ??= await good.stop();
  t.comment(`good client: ${fmt(report)}`);
  t.ok(report.ok > 10);
  t.equal(report.wrong, 0);
  t.same(report.errors, {});
  const s = await ask<DaemonStatus>('status');
  t.equal(s.world.state, 'ready');
  t.equal(s.world.rebuilds, 0);
  t.same(s.ranks.map((r) => r.pid), pids, 'the same device processes');
  const stats = await ask<{ errors: Record<string, number> }>('stats');
  t.comment(`daemon errors by code: ${JSON.stringify(stats.errors)}`);
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'no INTERNAL error');
  t.notOk(stats.errors[ErrorCodes.BAD_REQUEST], 'no BAD_REQUEST error');
});
