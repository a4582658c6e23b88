// Faults for real: device processes killed with SIGKILL, ranks made to hang or crash in a loop,
// the daemon itself killed. Every request ends in a result or an error, within its deadline, and
// the world heals itself. A hung rank is found by the daemon's hang watchdog (--hang-timeout-ms);
// a client's deadline only ends that client's wait.
import t from 'tap';
import { performance } from 'node:perf_hooks';
import { connect, HostBuffer } from '../dist/client/index.js';
import { alive, debugCommand, devicePids, startDaemon, until } from './helpers/daemon.js';
import { allocFilled, check, checkedAllReduce } from './helpers/buffers.js';
import { runLoad } from './helpers/load.js';

const worldState = async (debugSocket: string) => /world: (\w+)/.exec(await debugCommand(debugSocket, 'status'))?.[1];

t.test('kill -9 of a device process under load from 4 clients', async (t) => {
  const timeoutMs = 5000;
  const d = await startDaemon(['--backend', 'host', '--ranks', '4', '--timeout-ms', String(timeoutMs)]);
  t.teardown(() => d.stop());
  const before = await devicePids(d.debugSocket);
  let killedAt = 0;
  const load = runLoad(d.socket, { clients: 4, inFlight: 4, count: 20_000, durationMs: 3000, timeoutMs });
  setTimeout(() => {
    killedAt = Date.now();
    process.kill(before[2], 'SIGKILL');
  }, 800);
  const r = await load;
  t.equal(r.answered, r.sent, `every request was answered: ${r.sent} sent, ${r.ok} ok, errors ${JSON.stringify(r.errors)}`);
  t.equal(r.wrong, 0, 'every successful result is correct');
  // The kill may land mid-collective (that one fails) or between two (none does): both are right.
  t.ok(Object.keys(r.errors).every((c) => ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_ABORTED'].includes(c)), 'any failure says the device was lost', {
    messages: r.messages,
    daemonErrors: d.logs.filter((l) => (l.level as number) >= 50),
  });
  t.ok(r.slowest < timeoutMs + 1000, `no request outlived its deadline (slowest ${r.slowest.toFixed(0)} ms)`);
  const rebuilt = d.logs.find((l) => l.msg === 'world rebuilt');
  t.ok(rebuilt, 'the daemon rebuilt its world');
  const rebuiltAt = Date.parse(rebuilt!.time as string);
  const firstAfter = r.successes.find((s) => s >= rebuiltAt);
  t.ok(firstAfter, 'requests succeeded on the rebuilt world');
  t.comment(
    `figure: kill -9 to the world rebuilt: ${rebuiltAt - killedAt} ms; to the first successful AllReduce on it: ${firstAfter! - killedAt} ms ` +
      `(host backend, 4 ranks, ${Object.values(r.errors).reduce((a, b) => a + b, 0)} request(s) failed)`,
  );
  const after = await devicePids(d.debugSocket);
  t.equal(after.length, 4);
  t.not(after[2], before[2], 'rank 2 runs in a new process');
  t.same([after[0], after[1], after[3]], [before[0], before[1], before[3]], 'the other ranks were kept');
  const status = await debugCommand(d.debugSocket, 'status');
  t.match(status, /world: ready, 4 ranks, generation 2, 1 rebuild/);
  // Found by the collective that was running (the kill landed mid-collective) or by the exit alone.
  t.match(status, new RegExp(`last break: .*device process of rank 2 \\(pid ${before[2]}\\) (died|exited)`));
});

t.test('registrations racing the death of a rank end in a number or DEVICE_LOST, and the numbers work on the rebuilt world', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const pids = await devicePids(d.debugSocket);
  const bufs = Array.from({ length: 150 }, () => HostBuffer.alloc(4096));
  t.teardown(() => bufs.forEach((b) => b.free()));
  const regs = bufs.map((b) => client.register(b));
  process.kill(pids[2], 'SIGKILL');
  const settled = await Promise.allSettled(regs);
  const codes: Record<string, number> = {};
  for (const s of settled) {
    const k = s.status === 'fulfilled' ? 'ok' : (s.reason as { code: string }).code;
    codes[k] = (codes[k] ?? 0) + 1;
  }
  t.ok(Object.keys(codes).every((k) => k === 'ok' || k === 'NCCLD_ERR_DEVICE_LOST'), `a number or DEVICE_LOST: ${JSON.stringify(codes)}`);
  await until('the world to be rebuilt', async () => (await worldState(d.debugSocket)) === 'ready' && (await devicePids(d.debugSocket))[2] !== pids[2]);
  // Buffers registered before, during and after the death are mapped into the new rank 2 too.
  const good = bufs.filter((_, i) => settled[i].status === 'fulfilled');
  const later = Array.from({ length: 4 }, () => HostBuffer.alloc(4096));
  t.teardown(() => later.forEach((b) => b.free()));
  for (const set of [good.slice(0, 4), good.slice(-4), later]) {
    if (set.length < 4) continue;
    set.forEach((b, r) => b.view('f32').fill(r + 1));
    await client.allReduce({ buffers: set, dtype: 'f32', op: 'sum', count: 1024 });
    t.same(set.map((b) => [b.view('f32')[0], b.view('f32')[1023]]), set.map(() => [10, 10]), 'a collective on registered buffers is right on every rank');
  }
});

t.test('a hung rank: the hang watchdog fails its collective with NCCLD_ERR_TIMEOUT naming it, then the world heals', async (t) => {
  const hangMs = 1500;
  const d = await startDaemon(['--backend', 'host', '--ranks', '3', '--enable-fault-injection', '--hang-timeout-ms', String(hangMs)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const hungPid = (await devicePids(d.debugSocket))[1];
  t.match(await debugCommand(d.debugSocket, 'inject 1 hang'), /rank 1: the next collective will hang\nOK/);
  const err = await client.allReduce({ buffers: [], dtype: 'f32', op: 'sum', count: 0, timeoutMs: 10_000 }).catch((e) => e);
  t.equal(err.code, 'NCCLD_ERR_BUFFER_COUNT', 'bad requests are still refused before they reach a rank');
  // The client's deadline is well past the hang threshold: the watchdog is what ends it.
  const t0 = performance.now();
  const res = await checkedAllReduce(client, 'f32', 'sum', 1000, 1, { timeoutMs: 10_000 }).catch((e) => e);
  const elapsed = performance.now() - t0;
  t.match(res, { code: 'NCCLD_ERR_TIMEOUT', message: /had not finished on rank 1 after the hang threshold of 1500 ms; the world was rebuilt/, details: { ranks: [1] } });
  t.ok(elapsed >= hangMs - 100 && elapsed < hangMs + 1500, `failed at the hang threshold (${elapsed.toFixed(0)} ms for ${hangMs} ms; the watchdog looks every ${hangMs / 4} ms)`);
  t.comment(`figure: hung rank to its timeout error: ${elapsed.toFixed(0)} ms (hang threshold ${hangMs} ms)`);
  const ok = await checkedAllReduce(client, 'f32', 'sum', 1000, 2);
  t.equal(ok.mismatches, 0, 'the world serves again');
  t.notOk(alive(hungPid), 'the hung process was killed');
  t.not((await devicePids(d.debugSocket))[1], hungPid, 'and replaced');
  const status = await debugCommand(d.debugSocket, 'status');
  t.match(status, /world: ready, 3 ranks, generation 2, 1 rebuild\n/);
  t.match(status, /last break: hang watchdog: collective seq 1 \(allreduce f32 sum, 1000 elements\) not finished on rank 1 after 1500 ms/);
});

t.test('a client deadline before the hang threshold: TIMEOUT then, the world untouched until the watchdog, no request left hanging', async (t) => {
  const hangMs = 2500;
  const d = await startDaemon(['--backend', 'host', '--ranks', '3', '--enable-fault-injection', '--hang-timeout-ms', String(hangMs)]);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const hungPid = (await devicePids(d.debugSocket))[1];
  await debugCommand(d.debugSocket, 'inject 1 hang');
  const hung = allocFilled(3, 'f32', 'sum', 1000, 1);
  const next = allocFilled(3, 'f32', 'sum', 1000, 2);
  t.teardown(() => [...hung.buffers, ...next.buffers].forEach((b) => b.free()));
  for (const b of [...hung.buffers, ...next.buffers]) await client.register(b);
  const t0 = performance.now();
  const first = client.allReduce({ buffers: hung.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 800 }).catch((e) => e);
  // Sent behind it with a deadline past the threshold: it waits out the hang and the rebuild.
  const behind = client.allReduce({ buffers: next.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 20_000 });
  const err = await first;
  const elapsed = performance.now() - t0;
  t.match(err, { code: 'NCCLD_ERR_TIMEOUT', message: /deadline passed while collective seq 1 ran; it still runs to its end/, details: { seq: 1 } });
  t.ok(elapsed >= 750 && elapsed < 1500, `answered at its own deadline (${elapsed.toFixed(0)} ms for 800 ms)`);
  const during = await debugCommand(d.debugSocket, 'status');
  t.match(during, /world: ready, 3 ranks, generation 1, 0 rebuilds\n/, 'the client\'s deadline broke nothing');
  t.match(during, /requests: .* 1 running, 1 waiting/, 'the collective still runs; the next one waits for it');
  t.ok(alive(hungPid), 'the hung rank is left alone until the hang threshold');
  // The watchdog ends the hung collective; the one behind runs on the rebuilt world.
  await t.resolves(behind, 'the collective sent behind it completes');
  const waited = performance.now() - t0;
  t.ok(waited >= hangMs - 100 && waited < 20_000, `after the hang threshold and the rebuild (${waited.toFixed(0)} ms)`);
  t.equal(check(next.buffers, next.inputs, 'f32', 'sum', 1000).mismatches, 0, 'with the right result');
  t.notOk(alive(hungPid), 'the hung process was killed');
  const status = await debugCommand(d.debugSocket, 'status');
  t.match(status, /world: ready, 3 ranks, generation 2, 1 rebuild\n/);
  t.match(status, /last break: hang watchdog: collective seq 1 .*not finished on rank 1 after 2500 ms/);
  t.match(await debugCommand(d.debugSocket, 'ops'), /1 +1\/\d+ +allreduce f32 sum +4000 +failed .*NCCLD_ERR_TIMEOUT: collective seq 1 had not finished on rank 1/, 'the flight recorder has why it failed');
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 3)).mismatches, 0, 'serving again');
});

t.test('a crash loop spends the restart budget; status explains; rebuild recovers', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--restart-limit', '3', '--timeout-ms', '3000']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  t.match(await debugCommand(d.debugSocket, 'inject 0 crash-loop'), /every restart/);
  await t.rejects(checkedAllReduce(client, 'f32', 'sum', 100, 1), { code: 'NCCLD_ERR_DEVICE_LOST' });
  await until('the world to fail', async () => (await worldState(d.debugSocket)) === 'failed');
  await t.rejects(checkedAllReduce(client, 'f32', 'sum', 100, 2), {
    code: 'NCCLD_ERR_WORLD_FAILED',
    message: /restart budget spent \(3 rebuilds in 60000 ms\)/,
  });
  const status = await debugCommand(d.debugSocket, 'status');
  t.match(status, /world: failed/);
  t.match(status, /failure: restart budget spent/);
  t.match(await debugCommand(d.debugSocket, 'rebuild'), /world failed/, 'rebuild while the fault is still there fails again');
  t.match(await debugCommand(d.debugSocket, 'inject 0 clear', 'rebuild'), /no fault at its next start\nOK\nworld ready, generation \d+\nOK/);
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 3)).mismatches, 0, 'serving again');
});

t.test('an injected failure fails that collective only', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  await debugCommand(d.debugSocket, 'inject 1 fail');
  await t.rejects(checkedAllReduce(client, 'f32', 'sum', 100, 1), { message: /rank 1: .*injected failure/ });
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 2)).mismatches, 0);
  t.match(await debugCommand(d.debugSocket, 'status'), /generation 1, 0 rebuilds/, 'no rebuild was needed');
});

t.test('fault injection is off unless asked for', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '1']);
  t.teardown(() => d.stop());
  t.match(await debugCommand(d.debugSocket, 'inject 0 crash'), /^ERROR: fault injection is off/);
});

t.test('SIGKILL of the daemon: no device process outlives it, hung ones included', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '3', '--enable-fault-injection']);
  const pids = await devicePids(d.debugSocket);
  await debugCommand(d.debugSocket, 'inject 0 hang');
  const client = await connect(d.socket);
  const pending = client.allReduce({ buffers: [], dtype: 'f32', op: 'sum', count: 1 }).catch((e) => e);
  const hanging = checkedAllReduce(client, 'f32', 'sum', 100, 1).catch((e) => e);
  await new Promise((r) => setTimeout(r, 200));
  const t0 = performance.now();
  d.proc.kill('SIGKILL');
  await until('every device process to be gone', () => pids.every((p) => !alive(p)), 5000);
  t.pass(`all ${pids.length} device processes gone ${(performance.now() - t0).toFixed(0)} ms after the daemon's SIGKILL`);
  t.match(await hanging, { code: 'NCCLD_ERR_CONNECTION_CLOSED' }, 'the SDK rejected the pending request');
  await pending;
  await d.stop();
});

t.test('the SDK reconnects to a daemon that came back', async (t) => {
  const d1 = await startDaemon(['--backend', 'host', '--ranks', '2']);
  const client = await connect(d1.socket);
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 1)).mismatches, 0);
  const closed = new Promise((r) => client.once('close', r));
  d1.proc.kill('SIGKILL');
  await closed;
  await t.rejects(client.allReduce({ buffers: [], dtype: 'f32', op: 'sum', count: 1 }), { code: 'NCCLD_ERR_CONNECTION_CLOSED' });
  const d2 = await startDaemon(['--backend', 'host', '--ranks', '2'], { paths: { socket: d1.socket, debugSocket: d1.debugSocket } });
  t.teardown(() => d2.stop());
  await client.reconnect();
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 2)).mismatches, 0, 'the same Client works again');
  await client.close();
  await d1.stop();
});

t.test('a collective still queued at its deadline fails then and never runs', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--hang-timeout-ms', '1500']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  await debugCommand(d.debugSocket, 'inject 0 hang');
  const first = allocFilled(2, 'f32', 'sum', 1000, 1);
  const queued = allocFilled(2, 'f32', 'sum', 1000, 2);
  t.teardown(() => [...first.buffers, ...queued.buffers].forEach((b) => b.free()));
  const before = queued.buffers.map((b) => Float32Array.from(b.view('f32', 0, 1000)));
  for (const b of [...first.buffers, ...queued.buffers]) await client.register(b);
  const t0 = performance.now();
  // The host backend runs one collective at a time: the second waits behind the hung first.
  const hung = client.allReduce({ buffers: first.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 3000 }).catch((e) => e);
  const behind = client.allReduce({ buffers: queued.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 600 }).catch((e) => e);
  const err = await behind;
  const waited = performance.now() - t0;
  t.match(err, { code: 'NCCLD_ERR_TIMEOUT', message: /waited for the ranks .*; it never ran/ });
  t.ok(waited >= 550 && waited < 1500, `failed at its own deadline (${waited.toFixed(0)} ms for 600 ms)`);
  t.match(await hung, { code: 'NCCLD_ERR_TIMEOUT', details: { ranks: [0] } }, 'the hung one is ended by the hang watchdog, before its own deadline');
  t.ok(performance.now() - t0 < 3000, 'before its own 3000 ms deadline');
  // Once the world is back, the queued collective must still not have run.
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 100, 3)).mismatches, 0, 'serving again');
  queued.buffers.forEach((b, r) => t.same(Array.from(b.view('f32', 0, 1000)), Array.from(before[r]), `rank ${r}'s queued buffer was never touched`));
  t.match(await debugCommand(d.debugSocket, 'ops'), /allreduce f32 sum +4000 +failed +- +queued .*NCCLD_ERR_TIMEOUT: the deadline passed while the collective waited for the ranks .*it never ran/, 'the flight recorder shows it never started');
});
