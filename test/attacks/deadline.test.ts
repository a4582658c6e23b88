// Attack: a client's deadline used to break the world. A collective that missed its client's
// timeoutMs while it ran was treated as a rank failure: the ranks were killed and the world
// rebuilt, so a handful of requests with a tiny deadline spent the restart budget in under a
// second. Now the client's deadline ends the client's wait only; the hang watchdog alone breaks
// the world. Each test runs a well-behaved client alongside and checks that it stayed served.
import t, { type Test } from 'tap';
import { performance } from 'node:perf_hooks';
import { connect, type Client } from '../../dist/client/index.js';
import type { OpRecord } from '../../dist/daemon/flight-recorder.js';
import { alive, debugCommand, devicePids, startDaemon, until } from '../helpers/daemon.js';
import { allocFilled, check, checkedAllReduce } from '../helpers/buffers.js';
import { startGoodClient, type GoodReport } from '../helpers/good-client.js';
import { ops, status } from '../helpers/inspect.js';

const idle = async (debugSocket: string) => {
  const s = await status(debugSocket);
  return s.requests.running === 0 && s.requests.waiting === 0;
};

function goodClientServed(t: Test, r: GoodReport, what: string, allowed: string[] = []): void {
  t.ok(r.ok > 0, `${what}: the good client was served (${r.ok} correct AllReduces, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms)`);
  t.equal(r.wrong, 0, `${what}: every result the good client got was correct`);
  const unexpected = Object.keys(r.errors).filter((c) => !allowed.includes(c));
  t.same(unexpected, [], `${what}: the good client saw no errors${allowed.length ? ` but ${allowed.join(', ')}` : ''} (${JSON.stringify(r.errors)})`);
}

const errCode = (e: unknown) => (e as { code?: string }).code ?? String(e);

t.test('hundreds of AllReduces with timeoutMs 1 over 8 MiB buffers: each ends, the world is never rebuilt', async (t) => {
  // The default restart budget (5 in 60 s): under the old behaviour, 6 collectives that ran past
  // their deadline failed the world for everyone.
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const before = await status(d.debugSocket);
  const pidsBefore = await devicePids(d.debugSocket);
  t.equal(before.world.state, 'ready');

  const attacker = await connect(d.socket, { name: 'attacker' });
  t.teardown(() => attacker.close());
  const count = 2 << 20; // 2 Mi f32 = 8 MiB per rank: milliseconds of work per collective
  const sets = [0, 1].map((s) => allocFilled(2, 'f32', 'sum', count, 10 + s));
  t.teardown(() => sets.forEach((s) => s.buffers.forEach((b) => b.free())));
  const handles = await Promise.all(sets.map((s) => Promise.all(s.buffers.map((b) => attacker.register(b)))));

  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 50));
  const tally = { sent: 0, ok: 0, ranPastDeadline: 0, expiredQueued: 0, other: {} as Record<string, number> };
  const t0 = performance.now();
  // Bursts of 8, pipelined, with a short breath between bursts so the ranks are sometimes idle
  // when a burst arrives: then its first collective runs and misses its deadline on the ranks.
  for (let burst = 0; burst < 48; burst++) {
    const replies = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => {
        tally.sent++;
        return attacker.allReduce({ buffers: handles[i % 2], dtype: 'f32', op: 'sum', count, timeoutMs: 1 });
      }),
    );
    for (const r of replies) {
      if (r.status === 'fulfilled') tally.ok++;
      else if (errCode(r.reason) === 'NCCLD_ERR_TIMEOUT') {
        const e = r.reason as { message: string; details?: { seq?: number } };
        if (typeof e.details?.seq === 'number' && /still runs to its end/.test(e.message)) tally.ranPastDeadline++;
        else if (/never ran/.test(e.message)) tally.expiredQueued++;
        else tally.other[`TIMEOUT: ${e.message}`] = (tally.other[`TIMEOUT: ${e.message}`] ?? 0) + 1;
      } else tally.other[errCode(r.reason)] = (tally.other[errCode(r.reason)] ?? 0) + 1;
    }
    await new Promise((r) => setTimeout(r, burst % 2 ? 15 : 0));
  }
  const attackMs = performance.now() - t0;
  const report = await good.stop();

  t.equal(tally.ok + tally.ranPastDeadline + tally.expiredQueued, tally.sent, `each of ${tally.sent} requests ended with a result or NCCLD_ERR_TIMEOUT (others: ${JSON.stringify(tally.other)})`);
  t.ok(tally.ranPastDeadline >= 6, `at least 6 collectives missed their deadline while on the ranks (${tally.ranPastDeadline}): more than the restart budget`);
  goodClientServed(t, report, 'during the attack');

  await until('the collectives still on the ranks to end', () => idle(d.debugSocket), 20_000);
  const after = await status(d.debugSocket);
  t.equal(after.world.state, 'ready', 'the world is ready');
  t.equal(after.world.rebuilds, 0, 'the world was never rebuilt');
  t.equal(after.world.generation, before.world.generation, 'same generation');
  t.equal(after.world.lastBreak, null, 'nothing broke it');
  const pidsAfter = await devicePids(d.debugSocket);
  t.same(pidsAfter, pidsBefore, 'the same device processes serve');
  t.ok(pidsAfter.every(alive), 'and they are alive');
  t.ok(after.ranks.every((r) => r.state === 'ready'), 'every rank is ready');
  t.equal((await checkedAllReduce(attacker, 'f32', 'sum', 4096, 99)).mismatches, 0, 'and the world still reduces correctly');
  t.comment(
    `figure: ${tally.sent} AllReduces (8 MiB per rank, timeoutMs 1) in ${attackMs.toFixed(0)} ms: ${tally.ranPastDeadline} timed out on the ranks, ` +
      `${tally.expiredQueued} in the queue, ${tally.ok} finished in time; rebuilds ${after.world.rebuilds}, world ${after.world.state}; ` +
      `good client meanwhile: ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, wrong ${report.wrong}`,
  );
});

t.test('a collective whose client timed out still completes; one whose deadline passed in the queue never runs', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const attacker = await connect(d.socket, { name: 'attacker' });
  t.teardown(() => attacker.close());
  const good = await startGoodClient(d.socket, { pauseMs: 5 });
  const count = 2 << 20; // 8 MiB per rank: a few ms on the ranks, far over a 1 ms deadline
  let tries = 0;
  let ran: { seq: number; a: ReturnType<typeof allocFilled>; b: ReturnType<typeof allocFilled>; bBefore: Float32Array[]; bId: number } | null = null;
  // The good client's collective may be on the ranks when ours arrives: then ours waits and
  // expires in the queue. Try until ours reached the ranks before its deadline.
  while (!ran && tries++ < 20) {
    const a = allocFilled(2, 'f32', 'sum', count, 1000 + tries);
    const b = allocFilled(2, 'f32', 'sum', count, 2000 + tries);
    const bBefore = b.buffers.map((x) => Float32Array.from(x.view('f32', 0, count)));
    const ha = await Promise.all(a.buffers.map((x) => attacker.register(x)));
    const hb = await Promise.all(b.buffers.map((x) => attacker.register(x)));
    const bId = 4_000_000_000 + tries;
    // Back to back: B waits behind A (the host backend runs one collective at a time).
    const pa = attacker.allReduce({ buffers: ha, dtype: 'f32', op: 'sum', count, timeoutMs: 1 }).then(
      () => null,
      (e) => e,
    );
    const pb = attacker.request({ type: 'allreduce', dtype: 'f32', op: 'sum', count, buffers: hb, timeoutMs: 1 }, undefined, bId).then(
      () => null,
      (e) => e,
    );
    const [ea, eb] = await Promise.all([pa, pb]);
    if (ea?.code === 'NCCLD_ERR_TIMEOUT' && typeof ea.details?.seq === 'number' && eb?.code === 'NCCLD_ERR_TIMEOUT' && /never ran/.test(eb.message)) {
      ran = { seq: ea.details.seq, a, b, bBefore, bId };
    } else {
      t.comment(`try ${tries}: A ${ea ? ea.message : 'finished in time'}; B ${eb ? eb.message : 'finished'}`);
      await until('idle', () => idle(d.debugSocket));
      await attacker.release([...a.buffers, ...b.buffers]);
      [...a.buffers, ...b.buffers].forEach((x) => x.free());
    }
  }
  if (!ran) throw new Error('never got a collective to time out on the ranks');
  t.teardown(() => [...ran!.a.buffers, ...ran!.b.buffers].forEach((x) => x.free()));
  t.pass(`A (seq ${ran.seq}) got NCCLD_ERR_TIMEOUT while on the ranks; B got it in the queue (try ${tries})`);

  // A's client has its answer; A itself is still on the ranks. Wait for its end there.
  await until(`collective seq ${ran.seq} to end on the ranks`, async () => (await ops(d.debugSocket)).recent.some((o) => o.seq === ran!.seq), 20_000);
  const report = await good.stop();
  const aCheck = check(ran.a.buffers, ran.a.inputs, 'f32', 'sum', count);
  t.equal(aCheck.mismatches, 0, `A ran to its end: its buffers hold the reduced result ${JSON.stringify(aCheck.first)}`);
  ran.b.buffers.forEach((x, r) => {
    const now = x.view('f32', 0, count);
    let differ = 0;
    for (let i = 0; i < count; i++) if (!Object.is(now[i], ran!.bBefore[r][i])) differ++;
    t.equal(differ, 0, `B never ran: rank ${r}'s buffer is untouched`);
  });
  const { recent } = await ops(d.debugSocket);
  const recA = recent.find((o) => o.clientName === 'attacker' && o.seq === ran!.seq);
  const recB = recent.find((o) => o.clientName === 'attacker' && o.requestId === ran!.bId);
  t.match(recA, { state: 'done', ranks: ['done', 'done'], error: null }, 'the flight recorder shows A done on every rank');
  t.match(recB, { state: 'failed', seq: null, startedAt: null, error: /NCCLD_ERR_TIMEOUT: .*never ran/ }, 'and B failed without a seq: it never started');
  const s = await status(d.debugSocket);
  t.match(s.world, { state: 'ready', rebuilds: 0, generation: 1 }, 'the world was not rebuilt');
  goodClientServed(t, report, 'alongside');
  t.comment(`figure: good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms; world ${s.world.state}, rebuilds ${s.world.rebuilds}`);
});

t.test('the hang watchdog alone breaks the world: a hung rank is rebuilt at the threshold, clients get their own deadlines', async (t) => {
  const hangMs = 1500;
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--hang-timeout-ms', String(hangMs)]);
  t.teardown(() => d.stop());
  const attacker: Client = await connect(d.socket, { name: 'attacker' });
  t.teardown(() => attacker.close());
  const pidsBefore = await devicePids(d.debugSocket);
  t.match(await debugCommand(d.debugSocket, 'inject 1 hang'), /rank 1: the next collective will hang/);
  const hung = allocFilled(2, 'f32', 'sum', 1000, 5);
  t.teardown(() => hung.buffers.forEach((b) => b.free()));
  await Promise.all(hung.buffers.map((b) => attacker.register(b)));
  const t0 = performance.now();
  const submitted = Date.now();
  const pending = attacker.allReduce({ buffers: hung.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 500 }).then(
    () => null,
    (e) => e,
  );
  await until('the collective to be on the ranks', async () => (await ops(d.debugSocket, 0)).inFlight.some((o) => o.clientName === 'attacker' && o.state === 'running'), 5000);
  // Alongside from here: its collectives wait behind the hung one and must be served after the rebuild.
  const good = await startGoodClient(d.socket);
  const err = await pending;
  const waited = performance.now() - t0;
  t.match(err, { code: 'NCCLD_ERR_TIMEOUT', message: /still runs to its end/ }, "the hung collective's client got TIMEOUT at its own deadline");
  t.ok(waited >= 450 && waited < 1200, `at its deadline: ${waited.toFixed(0)} ms for 500 ms`);
  let s = await status(d.debugSocket);
  if (performance.now() - t0 < hangMs) {
    t.match(s.world, { state: 'ready', rebuilds: 0 }, "the client's deadline broke nothing");
  }
  // It stays on the ranks after its client's deadline, until the watchdog ends it.
  let hungRec: OpRecord | undefined;
  await until('the hung collective to end', async () => !!(hungRec = (await ops(d.debugSocket)).recent.find((o) => o.clientName === 'attacker')), 10_000);
  const endedAfter = hungRec!.finishedAt! - submitted;
  t.match(
    hungRec,
    { state: 'failed', ranks: ['done', 'failed'], error: /NCCLD_ERR_TIMEOUT: .*rank 1 after the hang threshold of 1500 ms; the world was rebuilt/ },
    'the flight recorder ends the hung collective with the watchdog, rank 1 failed',
  );
  t.ok(endedAfter >= hangMs - 50, `it was on the ranks until the watchdog: ${endedAfter} ms`);

  await until('the watchdog to rebuild the world', async () => (await status(d.debugSocket)).world.rebuilds >= 1 && (await status(d.debugSocket)).world.state === 'ready', 10_000);
  const broke = d.logs.find((l) => l.msg === 'world broken; rebuilding');
  const rebuilt = d.logs.find((l) => l.msg === 'world rebuilt');
  t.match(broke, { reason: /^hang watchdog: collective seq \d+ .* not finished on rank 1 after 1500 ms/ }, 'the watchdog broke the world, naming rank 1');
  const brokeAfter = Date.parse(broke!.time as string) - submitted;
  const rebuiltAfter = Date.parse(rebuilt!.time as string) - submitted;
  // The watchdog looks every threshold/4 ms: it fires between the threshold and 1.25 × it (plus scheduling).
  t.ok(brokeAfter >= hangMs - 50 && brokeAfter < hangMs * 1.25 + 500, `broken ${brokeAfter} ms after the collective started (threshold ${hangMs} ms)`);
  t.ok(rebuiltAfter < hangMs * 1.25 + 3000, `rebuilt ${rebuiltAfter} ms after`);

  await new Promise((r) => setTimeout(r, 500));
  const report = await good.stop();
  s = await status(d.debugSocket);
  t.match(s.world, { state: 'ready', rebuilds: 1, lastBreak: /hang watchdog/ }, 'one rebuild, by the watchdog');
  const pidsAfter = await devicePids(d.debugSocket);
  t.not(pidsAfter[1], pidsBefore[1], 'the hung rank runs in a new process');
  t.notOk(alive(pidsBefore[1]), 'the hung process was killed');
  t.ok(pidsAfter.every(alive), 'every rank is alive');
  goodClientServed(t, report, 'through the hang and the rebuild');
  t.equal((await checkedAllReduce(attacker, 'f32', 'sum', 1000, 6)).mismatches, 0, 'the attacker is served again too');
  t.comment(
    `figure: hang watchdog (threshold ${hangMs} ms): world broken ${brokeAfter} ms and rebuilt ${rebuiltAfter} ms after the hung collective started; ` +
      `its client's 500 ms deadline answered at ${waited.toFixed(0)} ms; rebuilds ${s.world.rebuilds}, world ${s.world.state}; ` +
      `good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms`,
  );
});
