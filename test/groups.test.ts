// Groups on the host backend, over the raw protocol: forming, matching each member's k-th
// collective, disagreement, members that go away, and the stall inspector. Real daemon, real
// device processes, real client processes where one has to die.
import t from 'tap';
import { spawn } from 'node:child_process';
import { connect, HostBuffer, type Client } from '../dist/client/index.js';
import { ErrorCodes } from '../dist/shared/errors.js';
import { debugCommand, startDaemon, until, ROOT } from './helpers/daemon.js';

type Reply = Record<string, unknown>;
const settle = (p: Promise<Reply>) => p.then((r) => ({ ok: r }), (e: { code: string; message: string; details?: Reply }) => ({ err: e }));

async function members(socket: string, n: number): Promise<Client[]> {
  return Promise.all(Array.from({ length: n }, () => connect(socket)));
}

/** Each member joins `name` on its device; resolves with each one's group number. */
async function join(cs: Client[], name: string, devices: number[], timeoutMs = 5000): Promise<number[]> {
  const replies = await Promise.all(cs.map((c, r) => c.request({ type: 'join', group: name, size: cs.length, rank: r, device: devices[r], timeoutMs })));
  return replies.map((x) => x.group as number);
}

t.test('groups: forming, collectives over a subset of the world, two groups at once', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const a = await members(d.socket, 2);
  const b = await members(d.socket, 2);
  t.teardown(() => Promise.all([...a, ...b].map((c) => c.close())));
  const count = 1000;
  const bufs = [...a, ...b].map(() => HostBuffer.alloc(count * 4));
  const ids = await Promise.all([...a, ...b].map((c, i) => c.register(bufs[i])));

  const [ga, gb] = await Promise.all([join(a, 'even', [0, 2]), join(b, 'odd', [3, 1])]);
  const joined = await a[0].request({ type: 'join', group: 'even', size: 2, rank: 0, device: 1 }).catch((e) => e);
  t.equal(joined.code, ErrorCodes.GROUP_RANK_TAKEN, 'a formed group takes no more members');

  const listing = await debugCommand(d.debugSocket, 'groups');
  t.match(listing, /group "even" \(#\d+\): live, size 2, 0 collectives done/, 'groups lists the group');
  t.match(listing, /rank 1: pid \d+, device 2/, 'with each member and its device');
  t.match(listing, /group "odd" .*\n.*rank 0: pid \d+, device 3/, 'and the other group');

  // Both groups run 40 AllReduces each at the same time, each member with its own buffer.
  const rounds = 40;
  const run = async (cs: Client[], g: number[], base: number, off: number) => {
    for (let k = 0; k < rounds; k++) {
      cs.forEach((_, r) => bufs[off + r].view('f32').fill(base + r + k));
      const replies = await Promise.all(cs.map((c, r) => c.request({ type: 'collective', group: g[r], collective: 'allreduce', dtype: 'f32', op: 'sum', count, send: ids[off + r] })));
      const seqs = new Set(replies.map((x) => x.seq));
      if (seqs.size !== 1) throw new Error(`members got different seqs: ${[...seqs]}`);
      const want = 2 * (base + k) + 1;
      for (let r = 0; r < cs.length; r++) {
        const v = bufs[off + r].view('f32');
        if (v[0] !== want || v[count - 1] !== want) throw new Error(`round ${k}: rank ${r} holds ${v[0]}, not ${want}`);
      }
    }
    return rounds;
  };
  const [doneA, doneB] = await Promise.all([run(a, ga, 1, 0), run(b, gb, 100, 2)]);
  t.equal(doneA + doneB, 2 * rounds, 'both groups made progress at once, every result right');
  t.match(await debugCommand(d.debugSocket, 'groups'), new RegExp(`group "even" .*live, size 2, ${rounds} collectives done`), 'collectives done are counted');
  t.match(await debugCommand(d.debugSocket, 'ops'), /allreduce f32 sum/, 'ops shows group collectives');

  // The single-client form runs alongside, over all four ranks.
  const all = await connect(d.socket);
  t.teardown(() => all.close());
  const own = Array.from({ length: 4 }, () => HostBuffer.alloc(64));
  const ownIds = await Promise.all(own.map((x) => all.register(x)));
  own.forEach((x, r) => x.view('i32').fill(r));
  await all.request({ type: 'collective', collective: 'allreduce', dtype: 'i32', op: 'sum', count: 16, send: ownIds });
  t.same(own.map((x) => x.view('i32')[15]), [6, 6, 6, 6], 'a single client\'s collective over the whole world still works');

  // leave: the reply comes once the communicator is freed; the group is gone for everyone.
  t.equal((await a[1].request({ type: 'leave', group: ga[1] })).type, 'result', 'leave answers once the group is dissolved');
  const after = await settle(a[0].request({ type: 'collective', group: ga[0], collective: 'barrier' }));
  t.equal(after.err?.code, ErrorCodes.PEER_LOST, 'the other member is told its peer left');
  t.match(after.err?.message, /rank 1 .* left/, 'naming the rank');
  await a[0].request({ type: 'leave', group: ga[0] });
  t.notMatch(await debugCommand(d.debugSocket, 'groups'), /"even"/, 'a group left by everyone leaves nothing behind');
  t.equal((await join(a, 'even', [1, 0])).length, 2, 'and its name can form a new group');
});

t.test('groups: refusals, a join that times out, disagreement', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '3']);
  t.teardown(() => d.stop());
  const cs = await members(d.socket, 3);
  t.teardown(() => Promise.all(cs.map((c) => c.close())));
  const first = settle(cs[0].request({ type: 'join', group: 'g', size: 2, rank: 0, device: 0, timeoutMs: 3000 }));
  await until('the first member to be waiting', async () => /group "g" .*forming/.test(await debugCommand(d.debugSocket, 'groups')));
  const codes = await Promise.all([
    settle(cs[1].request({ type: 'join', group: 'g', size: 2, rank: 0, device: 1 })),
    settle(cs[1].request({ type: 'join', group: 'g', size: 3, rank: 1, device: 1 })),
    settle(cs[1].request({ type: 'join', group: 'g', size: 2, rank: 1, device: 0 })),
    settle(cs[1].request({ type: 'join', group: 'h', size: 4, rank: 1, device: 0 })),
    settle(cs[1].request({ type: 'join', group: 'h', size: 2, rank: 1, device: 3 })),
  ]);
  t.same(
    codes.map((x) => x.err?.code),
    [ErrorCodes.GROUP_RANK_TAKEN, ErrorCodes.GROUP_SIZE, ErrorCodes.GROUP_DEVICE_TAKEN, ErrorCodes.GROUP_SIZE, ErrorCodes.WRONG_DEVICE],
    'a taken rank, another size, a taken device, more ranks than the world, no such device',
  );
  const timedOut = await first;
  t.equal(timedOut.err?.code, ErrorCodes.TIMEOUT, 'a join whose peers never come times out');
  t.match(timedOut.err?.message, /rank 1 never joined/, 'naming who never came');
  t.equal(await debugCommand(d.debugSocket, 'groups'), 'no groups\nOK\n', 'nothing is left behind');

  // Disagreement fails that collective for every member, names ranks and fields; the next one runs.
  const two = cs.slice(0, 2);
  const g = await join(two, 'g', [0, 1]);
  const bufs = two.map(() => HostBuffer.alloc(4096));
  const ids = await Promise.all(two.map((c, r) => c.register(bufs[r])));
  const send = (r: number, fields: Reply) => settle(two[r].request({ type: 'collective', group: g[r], send: ids[r], ...fields }));
  const bad = await Promise.all([
    send(0, { collective: 'broadcast', dtype: 'f32', count: 16, root: 0 }),
    send(1, { collective: 'broadcast', dtype: 'i32', count: 16, root: 1 }),
  ]);
  for (const [r, x] of bad.entries()) {
    t.equal(x.err?.code, ErrorCodes.MISMATCH, `rank ${r} gets MISMATCH`);
    t.match(x.err?.message, /dtype \(rank 0: "f32", rank 1: "i32"\).*root \(rank 0: 0, rank 1: 1\)/, 'the message names the fields and each rank\'s value');
    t.same(x.err?.details?.mismatch, { dtype: ['f32', 'i32'], root: [0, 1] }, 'and so does mismatch');
  }
  bufs[0].view('u8').fill(7);
  const good = await Promise.all([send(0, { collective: 'broadcast', dtype: 'u8', count: 4096, root: 0 }), send(1, { collective: 'broadcast', dtype: 'u8', count: 4096, root: 0 })]);
  t.ok(good.every((x) => x.ok), 'the next collective runs');
  t.equal(bufs[1].view('u8')[4095], 7, 'and broadcast the root\'s bytes');
  const badRoot = await send(0, { collective: 'reduce', dtype: 'u8', op: 'sum', count: 1, root: 2 });
  t.equal(badRoot.err?.code, ErrorCodes.BAD_REQUEST, 'a root outside the group is refused at once');
  const noGroup = await settle(cs[2].request({ type: 'collective', group: g[0], collective: 'barrier' }));
  t.equal(noGroup.err?.code, ErrorCodes.NO_SUCH_GROUP, 'another connection cannot use the group\'s number');
});

t.test('groups: a member killed mid-collective, and a stalled member', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--stall-warn-ms', '300']);
  t.teardown(() => d.stop());
  const me = await connect(d.socket);
  t.teardown(() => me.close());
  // The peer is a real process: it joins as rank 1, sends one collective, then waits to be killed.
  const peer = spawn(process.execPath, ['--input-type=module', '-e', `
    import { connect } from ${JSON.stringify(`${ROOT}/dist/client/index.js`)};
    const c = await connect(${JSON.stringify(d.socket)});
    const r = await c.request({ type: 'join', group: 'k', size: 2, rank: 1, device: 1, timeoutMs: 10000 });
    c.request({ type: 'collective', group: r.group, collective: 'barrier' }).catch(() => {});
    console.log('joined');
    setInterval(() => {}, 1000);
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => peer.kill('SIGKILL'));
  const [mine] = await Promise.all([
    me.request({ type: 'join', group: 'k', size: 2, rank: 0, device: 0, timeoutMs: 10000 }),
    new Promise((resolve) => peer.stdout!.once('data', resolve)),
  ]);
  const g = mine.group as number;
  // Collective 0: the peer sent its barrier; ours completes it.
  t.ok((await me.request({ type: 'collective', group: g, collective: 'barrier' })).seq, 'the first barrier ran with both members');
  // Collective 1: only we send it. The stall inspector notices the missing rank.
  const pending = settle(me.request({ type: 'collective', group: g, collective: 'barrier', timeoutMs: 20000 }));
  await until('the stall warning', () => d.logs.some((l) => l.group === 'k' && Array.isArray(l.missingRanks)), 5000);
  const warning = d.logs.find((l) => l.group === 'k' && Array.isArray(l.missingRanks))!;
  t.same(warning.missingRanks, [1], 'the warning names the missing rank');
  t.equal(warning.collective, 1, 'and the collective');
  t.match(await debugCommand(d.debugSocket, 'groups'), /waiting: collective 1 sent by rank 0 since .*; missing rank 1/, 'groups shows who sent what and since when');
  peer.kill('SIGKILL');
  const lost = await pending;
  t.equal(lost.err?.code, ErrorCodes.PEER_LOST, 'the peer\'s death fails our waiting collective with PEER_LOST');
  t.match(lost.err?.message, /rank 1 \(pid \d+\) disconnected/, 'naming the rank');
  t.match(await debugCommand(d.debugSocket, 'groups'), /group "k" .*dissolved/, 'the group is dissolved');
  await me.request({ type: 'leave', group: g });
  t.equal(await debugCommand(d.debugSocket, 'groups'), 'no groups\nOK\n', 'and gone once we leave too');
});

t.test('groups: a world that breaks dissolves every group; members join again once it is back', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection']);
  t.teardown(() => d.stop());
  const cs = await members(d.socket, 2);
  t.teardown(() => Promise.all(cs.map((c) => c.close())));
  const g = await join(cs, 'w', [0, 1]);
  await debugCommand(d.debugSocket, 'inject 1 crash');
  // The crash fires on this barrier: it fails for both members.
  const broken = await Promise.all(cs.map((c, r) => settle(c.request({ type: 'collective', group: g[r], collective: 'barrier' }))));
  t.ok(broken.every((x) => x.err), `the collective the rank died under fails for every member (${broken.map((x) => x.err?.code).join(', ')})`);
  await until('the world to be rebuilt', async () => /world: ready/.test(await debugCommand(d.debugSocket, 'status')));
  const after = await settle(cs[0].request({ type: 'collective', group: g[0], collective: 'barrier' }));
  t.equal(after.err?.code, ErrorCodes.ABORTED, 'the group was dissolved by the break');
  t.match(after.err?.message, /the world broke/, 'and says so');
  await Promise.all(cs.map((c, r) => c.request({ type: 'leave', group: g[r] })));
  const again = await join(cs, 'w', [0, 1]);
  const done = await Promise.all(cs.map((c, r) => c.request({ type: 'collective', group: again[r], collective: 'barrier' })));
  t.ok(done.every((x) => typeof x.seq === 'number'), 'a group formed again on the rebuilt world runs');
});
