// The SDK's side of every collective and of groups, with no daemon support beyond what exists:
// verify.ts's references against hand-computed cases and, with rank-buffers.ts's layouts, against
// the host kernels; and the requests the SDK sends (shapes, argument checks, call order) to a
// scripted stand-in daemon.
import t, { type Test } from 'tap';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, HostBuffer, ErrorCodes, type Client } from '../dist/client/index.js';
import { collectiveInputs, collectiveReference, inPlaceOffsets, type Reference } from '../dist/client/verify.js';
import { checkRank, fillRank, readValues, writeValues, type RankBuffer, type RankPair } from '../dist/client/rank-buffers.js';
import { COLLECTIVES, collectiveElements, type CollectiveName } from '../dist/shared/protocol.js';
import { DTYPES, type DType } from '../dist/shared/dtypes.js';
import { FrameDecoder, encodeFrame, type Message } from '../dist/shared/framing.js';
import { native } from '../dist/shared/native.js';

const F = (...x: number[]) => Float64Array.from(x);
const values = (refs: (Reference | null)[]) => refs.map((r) => (r === null ? null : Array.from(r.expected)));

t.test('references: hand-computed, 2 and 3 ranks, every collective', async (t) => {
  // Two ranks, count 2: allreduce, broadcast and reduce take 2 elements; the per-block ones 2 × 2.
  const a = [F(1, 2), F(10, 20)];
  const k = { dtype: 'i32' as DType, op: 'sum' as const, count: 2, root: 1 };
  t.same(values(collectiveReference('allreduce', a, k)), [[11, 22], [11, 22]]);
  t.same(values(collectiveReference('broadcast', a, k)), [[10, 20], [10, 20]], 'the root (1) sends');
  t.same(values(collectiveReference('reduce', a, k)), [null, [11, 22]], 'only the root is written');
  t.same(values(collectiveReference('reduce', a, { ...k, inPlace: true })), [[1, 2], [11, 22]], 'in place, the others keep their input');
  t.same(values(collectiveReference('reduce', a, { ...k, op: 'max', root: 0 })), [[10, 20], null]);
  t.same(values(collectiveReference('allgather', a, k)), [[1, 2, 10, 20], [1, 2, 10, 20]]);
  const b = [F(1, 2, 3, 4), F(10, 20, 30, 40)];
  t.same(values(collectiveReference('reducescatter', b, k)), [[11, 22], [33, 44]], 'rank r: block r reduced');
  t.same(values(collectiveReference('reducescatter', b, { ...k, op: 'prod' })), [[10, 40], [90, 160]]);
  t.same(values(collectiveReference('alltoall', b, k)), [[1, 2, 10, 20], [3, 4, 30, 40]], "block j of rank r's recv is block r of rank j's send");
  t.same(values(collectiveReference('barrier', [new Float64Array(0), new Float64Array(0)], k)), [null, null]);

  // Three ranks, count 1, integer avg truncates toward zero.
  const c = [F(-7), F(0), F(1)];
  const avg = { dtype: 'i32' as DType, op: 'avg' as const, count: 1 };
  t.same(values(collectiveReference('allreduce', c, avg)), [[-2], [-2], [-2]]);
  const d = [F(1, 2, 3), F(4, 5, 6), F(7, 8, 9)];
  t.same(values(collectiveReference('reducescatter', d, { ...avg, op: 'min' })), [[1], [2], [3]]);
  t.same(values(collectiveReference('alltoall', d, avg)), [[1, 4, 7], [2, 5, 8], [3, 6, 9]], 'a transpose');
  t.same(values(collectiveReference('allgather', [F(5), F(6), F(7)], avg)), [[5, 6, 7], [5, 6, 7], [5, 6, 7]]);
  t.same(values(collectiveReference('broadcast', [F(5), F(6), F(7)], { ...avg, root: 2 })), [[7], [7], [7]]);

  // Integers and moved elements are exact; float reductions get reference()'s tolerance.
  for (const r of collectiveReference('allreduce', c, avg)) t.same(Array.from(r!.allowed), [0]);
  for (const r of collectiveReference('allgather', [F(0.5), F(0.25)], { dtype: 'f32', count: 1 })) t.same(Array.from(r!.allowed), [0, 0]);
  const fsum = collectiveReference('reducescatter', [F(0.5, 1), F(0.25, 2)], { dtype: 'f16', op: 'sum', count: 1 });
  t.same(values(fsum), [[0.75], [3]]);
  t.ok(fsum.every((r) => r!.allowed[0] > 0), 'a float sum may carry rounding error');
});

t.test('in-place layout: allgather reads block r, reducescatter writes block r, the rest start at 0', async (t) => {
  for (const c of COLLECTIVES) {
    const want = { input: c === 'allgather' ? 6 : 0, result: c === 'reducescatter' ? 6 : 0 };
    t.same(inPlaceOffsets(c, 3, 2), want, c);
  }
  t.same(collectiveInputs('reducescatter', 'f32', 'sum', 3, 5, 1).map((v) => v.length), [15, 15, 15], 'inputs fill the send buffer');
  t.same(collectiveInputs('allgather', 'f32', 'sum', 3, 5, 1).map((v) => v.length), [5, 5, 5]);
});

// The host backend's kernels (through the addon's test hook) over HostBuffers laid out by
// rank-buffers.ts (fillRank) and checked by it (checkRank) against the references: what ncclctl
// does around a collective, with the kernel in the daemon's place.
t.test('references and buffer layouts agree with the host kernels, in and out of place', async (t) => {
  let seed = 1;
  for (const c of COLLECTIVES.filter((x) => x !== 'barrier')) {
    for (const dtype of ['f32', 'bf16', 'i64', 'u8'] as DType[]) {
      for (const n of [1, 2, 3]) {
        for (const inPlace of c === 'alltoall' ? [false] : [false, true]) {
          const count = 37;
          const k = { dtype, op: 'sum' as const, count, root: n - 1, inPlace };
          const elem = DTYPES[dtype].bytes;
          const e = collectiveElements(c, count, n);
          const inputs = collectiveInputs(c, dtype, 'sum', n, count, seed++);
          const prior = collectiveInputs('broadcast', dtype, 'sum', n, e.recv, seed++);
          const pairs: RankPair[] = inputs.map(() => ({
            send: HostBuffer.alloc(Math.max(e.send, inPlace ? e.recv : 0) * elem),
            recv: inPlace ? undefined : HostBuffer.alloc(e.recv * elem),
          }));
          pairs.forEach((p, r) => fillRank(c, k, r, p, inputs[r], prior[r]));
          // NCCL's in-place pairs: allgather's send is block r of its recv, reducescatter's recv block r of its send.
          const bytes = (b: RankBuffer) => (b as HostBuffer).view('u8');
          const block = (b: RankBuffer, r: number) => bytes(b).subarray(r * count * elem, (r + 1) * count * elem);
          const sends = pairs.map((p, r) => (!p.recv && c === 'allgather' ? block(p.send, r) : bytes(p.send)));
          const recvs = pairs.map((p, r) => (p.recv ? bytes(p.recv) : c === 'reducescatter' ? block(p.send, r) : bytes(p.send)));
          native.hostCollective(COLLECTIVES.indexOf(c), DTYPES[dtype].nccl, 0, count, k.root, sends, recvs);
          const refs = collectiveReference(c, inputs, k);
          const bad = pairs.map((p, r) => checkRank(c, k, r, p, refs[r], prior[r]).mismatches);
          if (bad.some((x) => x > 0)) t.fail(`${c} ${dtype} n=${n}${inPlace ? ' in place' : ''}: mismatches ${bad}`);
          // A wrong element is caught: the last one of the last rank's result.
          const last = pairs[n - 1];
          const at = inPlace ? inPlaceOffsets(c, count, n - 1).result : 0;
          const len = refs[n - 1]?.expected.length ?? prior[n - 1].length;
          const target = last.recv ?? last.send;
          writeValues(target, dtype, 1, F(readValues(target, dtype, 1, at + len - 1)[0] + 1), at + len - 1);
          if (checkRank(c, k, n - 1, last, refs[n - 1], prior[n - 1]).mismatches !== 1) t.fail(`${c} ${dtype} n=${n}: a wrong element went unseen`);
          for (const p of pairs) for (const b of [p.send, p.recv]) (b as HostBuffer | undefined)?.free();
        }
      }
    }
    t.pass(c);
  }
});

// A stand-in daemon: answers hello, register (after `registerDelayMs`), join, collective and
// leave, and records every request it reads.
interface Fake {
  socket: string;
  requests: Message[];
  registerDelayMs: number;
  close(): void;
}

async function fakeDaemon(t: Test, worldSize = 4): Promise<Fake> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-sdk-'));
  const fake: Fake = { socket: path.join(dir, 'api.sock'), requests: [], registerDelayMs: 0, close: () => {} };
  let nextBuffer = 100;
  let seq = 0;
  const server = net.createServer((s) => {
    const decoder = new FrameDecoder(1 << 20);
    const reply = (m: Message) => s.write(encodeFrame(m));
    s.on('error', () => {});
    s.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        if (!('message' in f)) continue;
        const m = f.message;
        if (m.type === 'hello') {
          const nulls = Array(worldSize).fill(null);
          reply({ type: 'hello', protocol: 2, server: 'nccld', version: 'fake', backend: 'host', worldSize, devices: nulls, deviceUuids: nulls, maxFrameBytes: 65536, maxInFlight: 1024, maxBuffers: 4096, timeoutMs: 30000, maxTimeoutMs: 600000 });
          continue;
        }
        fake.requests.push(m);
        if (m.type === 'register') {
          const buffer = nextBuffer++;
          setTimeout(() => reply({ type: 'result', id: m.id, buffer, bytes: 4096 }), fake.registerDelayMs);
        } else if (m.type === 'join') {
          reply({ type: 'result', id: m.id, group: 7, size: m.size, rank: m.rank, devices: Array.from({ length: m.size as number }, (_, i) => i) });
        } else if (m.type === 'collective') {
          reply({ type: 'result', id: m.id, seq: ++seq });
        } else {
          reply({ type: 'result', id: m.id });
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(fake.socket, resolve));
  fake.close = () => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  };
  t.teardown(() => fake.close());
  return fake;
}

async function fakeClient(t: Test, worldSize = 4): Promise<{ fake: Fake; client: Client }> {
  const fake = await fakeDaemon(t, worldSize);
  const client = await connect(fake.socket);
  t.teardown(() => client.close());
  return { fake, client };
}

const strip = (m: Message) => {
  const { id: _id, ...rest } = m;
  return rest;
};

t.test('one client: each collective sends exactly its fields', async (t) => {
  const { fake, client } = await fakeClient(t, 2);
  const send = [1, { buffer: 2, offset: 64 }];
  const recv = [3, 4];
  t.same(await client.broadcast({ send, recv, dtype: 'u8', count: 16, root: 1 }), { seq: 1 });
  await client.reduce({ send, dtype: 'f32', op: 'max', count: 4, root: 0, timeoutMs: 500 });
  await client.allGather({ send, recv, dtype: 'f32', count: 4 });
  await client.reduceScatter({ send, recv, dtype: 'bf16', op: 'avg', count: 4 });
  await client.allToAll({ send, recv, dtype: 'i64', count: 4 });
  await client.barrier();
  await client.collective({ collective: 'allreduce', send, recv, dtype: 'f64', op: 'sum', count: 2 });
  const slots = [1, { buffer: 2, offset: 64 }];
  t.same(fake.requests.map(strip), [
    { type: 'collective', collective: 'broadcast', dtype: 'u8', count: 16, root: 1, send: slots, recv },
    { type: 'collective', collective: 'reduce', dtype: 'f32', count: 4, op: 'max', root: 0, send: slots, timeoutMs: 500 },
    { type: 'collective', collective: 'allgather', dtype: 'f32', count: 4, send: slots, recv },
    { type: 'collective', collective: 'reducescatter', dtype: 'bf16', count: 4, op: 'avg', send: slots, recv },
    { type: 'collective', collective: 'alltoall', dtype: 'i64', count: 4, send: slots, recv },
    { type: 'collective', collective: 'barrier' },
    { type: 'collective', collective: 'allreduce', dtype: 'f64', count: 2, op: 'sum', send: slots, recv },
  ]);
});

t.test('one client: bad arguments are refused with the daemon codes, and nothing is sent', async (t) => {
  const { fake, client } = await fakeClient(t, 2);
  const two = [1, 2];
  const base = { send: two, recv: two, dtype: 'f32' as const, count: 4 };
  const cases: [string, Promise<unknown>, string][] = [
    ['unknown collective', client.collective({ ...base, collective: 'gather' as CollectiveName }), ErrorCodes.BAD_REQUEST],
    ['bad dtype', client.allGather({ ...base, dtype: 'f8' as DType }), ErrorCodes.BAD_DTYPE],
    ['reduce without op', client.collective({ ...base, collective: 'reduce', root: 0 }), ErrorCodes.BAD_OP],
    ['negative count', client.allGather({ ...base, count: -1 }), ErrorCodes.BAD_COUNT],
    ['fractional count', client.allToAll({ ...base, count: 1.5 }), ErrorCodes.BAD_COUNT],
    ['one send buffer for two ranks', client.allGather({ ...base, send: [1] }), ErrorCodes.BUFFER_COUNT],
    ['three recv buffers', client.allGather({ ...base, recv: [1, 2, 3] }), ErrorCodes.BUFFER_COUNT],
    ['no root', client.collective({ ...base, collective: 'broadcast' }), ErrorCodes.BAD_REQUEST],
    ['root not a rank', client.broadcast({ ...base, root: 2 }), ErrorCodes.BAD_REQUEST],
    ['alltoall in place', client.collective({ ...base, collective: 'alltoall', recv: undefined }), ErrorCodes.BAD_REQUEST],
    ['zero timeout', client.barrier({ timeoutMs: 0 }), ErrorCodes.BAD_REQUEST],
    ['negative offset', client.allGather({ ...base, send: [1, { buffer: 2, offset: -4 }] }), ErrorCodes.BAD_REQUEST],
    ['group too big', client.joinGroup({ name: 'g', size: 3, rank: 0 }), ErrorCodes.GROUP_SIZE],
    ['rank not below size', client.joinGroup({ name: 'g', size: 2, rank: 2 }), ErrorCodes.BAD_REQUEST],
    ['empty name', client.joinGroup({ name: '', size: 2, rank: 0 }), ErrorCodes.BAD_REQUEST],
    ['long name', client.joinGroup({ name: 'x'.repeat(129), size: 2, rank: 0 }), ErrorCodes.BAD_REQUEST],
    ['device not a world rank', client.joinGroup({ name: 'g', size: 2, rank: 0, device: 2 }), ErrorCodes.WRONG_DEVICE],
  ];
  for (const [what, p, code] of cases) await t.rejects(p, { name: 'NccldError', code }, what);
  t.same(fake.requests, [], 'nothing reached the daemon');
  t.equal(client.requestsInFlight, 0);
  t.same(await client.allGather(base), { seq: 1 }, 'the connection goes on');
});

t.test('groups: join, one slot per member, in call order behind registrations, leave', async (t) => {
  const { fake, client } = await fakeClient(t, 4);
  const group = await client.joinGroup({ name: 'trainer', size: 2, rank: 1, timeoutMs: 5000 });
  t.match(group, { name: 'trainer', number: 7, size: 2, rank: 1, devices: [0, 1] });
  t.same(strip(fake.requests[0]), { type: 'join', group: 'trainer', size: 2, rank: 1, device: 1, timeoutMs: 5000 }, 'device defaults to the rank');
  await client.joinGroup({ name: 'other', size: 2, rank: 0, device: 3 });
  t.equal(fake.requests[1].device, 3);

  // The first call's buffer registers slowly; calls after it, on known numbers, wait their turn.
  fake.registerDelayMs = 100;
  const a = HostBuffer.alloc(4096);
  t.teardown(() => a.free());
  const calls = [
    group.allReduce({ send: a, dtype: 'f32', op: 'sum', count: 8 }),
    group.broadcast({ send: 5, recv: { buffer: 6, offset: 8 }, dtype: 'f32', count: 2, root: 0 }),
    group.reduce({ send: 5, recv: 6, dtype: 'i32', op: 'min', count: 2, root: 1 }),
    group.allGather({ send: 5, recv: 6, dtype: 'u8', count: 3 }),
    group.reduceScatter({ send: 5, dtype: 'f16', op: 'prod', count: 3 }),
    group.allToAll({ send: 5, recv: 6, dtype: 'u64', count: 3 }),
    group.barrier(),
    group.leave(),
  ];
  const results = await Promise.all(calls);
  t.same(
    results.slice(0, 7).map((r) => (r as { seq: number }).seq),
    [1, 2, 3, 4, 5, 6, 7],
    'answered in the order sent',
  );
  const sent = fake.requests.slice(2).map(strip);
  t.same(sent, [
    { type: 'register' },
    { type: 'collective', collective: 'allreduce', group: 7, dtype: 'f32', count: 8, op: 'sum', send: 100 },
    { type: 'collective', collective: 'broadcast', group: 7, dtype: 'f32', count: 2, root: 0, send: 5, recv: { buffer: 6, offset: 8 } },
    { type: 'collective', collective: 'reduce', group: 7, dtype: 'i32', count: 2, op: 'min', root: 1, send: 5, recv: 6 },
    { type: 'collective', collective: 'allgather', group: 7, dtype: 'u8', count: 3, send: 5, recv: 6 },
    { type: 'collective', collective: 'reducescatter', group: 7, dtype: 'f16', count: 3, op: 'prod', send: 5 },
    { type: 'collective', collective: 'alltoall', group: 7, dtype: 'u64', count: 3, send: 5, recv: 6 },
    { type: 'collective', collective: 'barrier', group: 7 },
    { type: 'leave', group: 7 },
  ]);

  // Group-relative checks: the root is a rank of the group, one buffer each.
  await t.rejects(group.broadcast({ send: 5, dtype: 'f32', count: 2, root: 2 }), { code: ErrorCodes.BAD_REQUEST });
  await t.rejects(group.allToAll({ send: 5, recv: undefined as unknown as number, dtype: 'f32', count: 2 }), { code: ErrorCodes.BAD_REQUEST });
  await t.rejects(group.collective({ collective: 'allgather', dtype: 'f32', count: 2 }), { code: ErrorCodes.BAD_REQUEST }, 'no send buffer');
  t.equal(fake.requests.length, 2 + sent.length, 'none of those was sent');
  // The registration is reused: the next call takes the fast path with number 100.
  await group.allReduce({ send: a, dtype: 'f32', op: 'sum', count: 8 });
  t.equal(fake.requests.at(-1)!.send, 100);
});

t.test('a failed registration fails its own call only; later calls still go, in order', async (t) => {
  const { fake, client } = await fakeClient(t, 2);
  const group = await client.joinGroup({ name: 'g', size: 2, rank: 0 });
  const freed = HostBuffer.alloc(64);
  freed.free();
  const first = group.allReduce({ send: freed, dtype: 'f32', op: 'sum', count: 1 });
  const second = group.barrier();
  await t.rejects(first, { code: ErrorCodes.BAD_REQUEST }, 'a freed buffer cannot be registered');
  t.same(await second, { seq: 1 });
  t.same(fake.requests.slice(1).map(strip), [{ type: 'collective', collective: 'barrier', group: 7 }]);
});
