// Attacks on stopping: "SIGTERM never finishes while any client keeps an idle connection open",
// and "SIGTERM no longer stopped the daemon" while a rebuild could not finish. Now shutdown ends
// from any world state: queued work may start for --shutdown-grace-ms, the ranks are stopped
// (killed after their own grace), every client is answered and every connection is closed, idle
// ones and ones that never said hello included, and the socket files are removed.
import t, { type Test } from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { connect, type Client } from '../../dist/client/index.js';
import { alive, debugCommand, devicePids, startDaemon, until, type RunningDaemon } from '../helpers/daemon.js';
import { allocFilled } from '../helpers/buffers.js';
import { startGoodClient, type GoodReport } from '../helpers/good-client.js';
import { ops, status } from '../helpers/inspect.js';
import { rawConnect } from '../helpers/raw.js';

/** Every device process the daemon ever forked, from its logs. */
const forkedPids = (d: RunningDaemon) => d.logs.filter((l) => l.msg === 'device process forked').map((l) => l.devicePid as number);

/** SIGTERM; resolves with the exit and how long it took. A daemon still there after `giveUpMs` is SIGKILLed (the test then fails on its exit). */
async function sigterm(d: RunningDaemon, giveUpMs: number): Promise<{ code: number | null; signal: string | null; ms: number }> {
  const t0 = performance.now();
  d.proc.kill('SIGTERM');
  const timer = setTimeout(() => d.proc.kill('SIGKILL'), giveUpMs);
  const { code, signal } = await d.exited;
  clearTimeout(timer);
  return { code, signal, ms: performance.now() - t0 };
}

/** What every stop must leave: exit 0, no device process, no socket file. */
function checkStopped(t: Test, d: RunningDaemon, exit: { code: number | null; signal: string | null; ms: number }, boundMs: number): void {
  t.equal(exit.code, 0, 'exit code 0');
  t.equal(exit.signal, null, 'not killed by a signal');
  t.ok(exit.ms < boundMs, `exited ${exit.ms.toFixed(0)} ms after SIGTERM (bound ${boundMs} ms)`);
  const forked = forkedPids(d);
  t.ok(forked.length > 0, `${forked.length} device processes were forked`);
  t.same(forked.filter(alive), [], 'no device process outlives the daemon');
  t.notOk(existsSync(d.socket), 'the API socket file is removed');
  t.notOk(existsSync(d.debugSocket), 'the debug socket file is removed');
  t.ok(d.logs.some((l) => l.msg === 'nccld stopped'), "the daemon logged 'nccld stopped'");
}

const settled = <T>(p: Promise<T>) =>
  p.then(
    () => 'result',
    (e: { code?: string }) => e.code ?? 'unknown',
  );

function goodClientCheck(t: Test, r: GoodReport, allowed: string[]): void {
  t.ok(r.ok > 0, `the good client was served before the stop (${r.ok} correct AllReduces, p50 ${r.p50.toFixed(2)} ms)`);
  t.equal(r.wrong, 0, 'every result it got was correct');
  t.same(
    Object.keys(r.errors).filter((c) => !allowed.includes(c)),
    [],
    `its errors are only ${allowed.join(', ')} (${JSON.stringify(r.errors)})`,
  );
}

t.test('SIGTERM with an idle client, a connection that never said hello, and a client with collectives in flight', async (t) => {
  const graceMs = 500;
  // A long hello deadline: the silent connection must be closed by the stop, not by that.
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--hello-timeout-ms', '60000', '--shutdown-grace-ms', String(graceMs)]);
  t.teardown(() => d.stop());
  const good = await startGoodClient(d.socket);
  const idleClient = await connect(d.socket, { name: 'idle' });
  const idleClosed = new Promise<void>((r) => idleClient.once('close', () => r()));
  const silent = await rawConnect(d.socket);
  const busy = await connect(d.socket, { name: 'busy' });
  const count = 4 << 20; // 16 MiB per rank: milliseconds each
  const set = allocFilled(2, 'f32', 'max', count, 3);
  t.teardown(() => set.buffers.forEach((b) => b.free()));
  const handles = await Promise.all(set.buffers.map((b) => busy.register(b)));
  await new Promise((r) => setTimeout(r, 200));
  t.equal((await status(d.debugSocket)).clients, 4, 'four connections open');

  const n = 500;
  const replies = Array.from({ length: n }, () => settled(busy.allReduce({ buffers: handles, dtype: 'f32', op: 'max', count, timeoutMs: 30_000 })));
  await until('collectives to be queued and running', async () => {
    const s = await status(d.debugSocket);
    return s.requests.running > 0 && s.requests.waiting > 0;
  });
  const bound = 8000;
  const exit = await sigterm(d, bound + 2000);
  checkStopped(t, d, exit, bound);

  const codes = await Promise.all(replies);
  const tally: Record<string, number> = {};
  for (const c of codes) tally[c] = (tally[c] ?? 0) + 1;
  t.same(
    Object.keys(tally).filter((c) => c !== 'result' && c !== 'NCCLD_ERR_SHUTTING_DOWN'),
    [],
    `each of the ${n} collectives in flight got a reply, a result or SHUTTING_DOWN, none dropped: ${JSON.stringify(tally)}`,
  );
  t.ok((tally.result ?? 0) > 0, 'those already started finished');
  const timeout = <T>(p: Promise<T>, what: string) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]).then((ok) => t.ok(ok, what));
  await timeout(idleClosed, 'the idle client connection was closed');
  await timeout(silent.closed, 'the connection that never said hello was closed');
  t.same(silent.replies, [], 'and it was sent nothing');
  const report = await good.stop();
  goodClientCheck(t, report, ['NCCLD_ERR_SHUTTING_DOWN', 'NCCLD_ERR_CONNECTION_CLOSED']);
  t.comment(
    `figure: SIGTERM with idle + hello-less + busy connections: exit ${exit.code} after ${exit.ms.toFixed(0)} ms (shutdown grace ${graceMs} ms); ` +
      `${n} pipelined 16 MiB collectives: ${JSON.stringify(tally)}; good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`,
  );
});

t.test('SIGTERM while the world rebuilds and cannot finish (a crash loop with a large restart budget)', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--restart-limit', '1000', '--shutdown-grace-ms', '500']);
  t.teardown(() => d.stop());
  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 200));
  t.match(await debugCommand(d.debugSocket, 'inject 0 crash-loop'), /every restart/);
  // The good client's next collective crashes rank 0; every restart of it crashes again. After
  // the 6th failed attempt the rebuild backs off for 3.2 s: SIGTERM must cut that short.
  await until('six failed rebuild attempts', () => d.logs.filter((l) => l.msg === 'world rebuild attempt failed').length >= 6, 20_000);
  const s = await status(d.debugSocket);
  t.equal(s.world.state, 'rebuilding', 'the world is still rebuilding');
  const attempts = d.logs.filter((l) => l.msg === 'world rebuild attempt failed').length;
  const bound = 2000;
  const exit = await sigterm(d, bound + 2000);
  checkStopped(t, d, exit, bound);
  const report = await good.stop();
  goodClientCheck(t, report, ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_SHUTTING_DOWN', 'NCCLD_ERR_CONNECTION_CLOSED']);
  t.ok((report.errors.NCCLD_ERR_SHUTTING_DOWN ?? 0) >= 1, 'its collective waiting for the rebuild was answered SHUTTING_DOWN, not dropped');
  t.comment(`figure: SIGTERM during a rebuild that cannot finish (after ${attempts} failed attempts): exit ${exit.code} after ${exit.ms.toFixed(0)} ms; ${forkedPids(d).length} device processes forked, none left`);
});

t.test('SIGTERM on a failed world', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--restart-limit', '1', '--shutdown-grace-ms', '500']);
  t.teardown(() => d.stop());
  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 200));
  await debugCommand(d.debugSocket, 'inject 1 crash-loop');
  await until('the world to fail', async () => (await status(d.debugSocket)).world.state === 'failed', 15_000);
  const bound = 3000;
  const exit = await sigterm(d, bound + 2000);
  checkStopped(t, d, exit, bound);
  const report = await good.stop();
  goodClientCheck(t, report, ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_WORLD_FAILED', 'NCCLD_ERR_SHUTTING_DOWN', 'NCCLD_ERR_CONNECTION_CLOSED']);
  t.comment(`figure: SIGTERM on a failed world: exit ${exit.code} after ${exit.ms.toFixed(0)} ms`);
});

/** Runs a good client for a while, then stops it: the world served before the rank got stuck. */
async function servedBefore(t: Test, d: RunningDaemon): Promise<GoodReport> {
  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 300));
  const report = await good.stop();
  goodClientCheck(t, report, []);
  return report;
}

/** Buffers registered while every rank still answers. */
async function registered(client: Client) {
  const set = allocFilled(2, 'f32', 'sum', 1000, 9);
  await Promise.all(set.buffers.map((b) => client.register(b)));
  return set;
}

/** Sends a collective on `set` and waits until it runs and rank 1 has not finished it. */
async function stuckCollective(d: RunningDaemon, client: Client, set: ReturnType<typeof allocFilled>) {
  const reply = client.allReduce({ buffers: set.buffers, dtype: 'f32', op: 'sum', count: 1000, timeoutMs: 60_000 }).then(
    () => ({ code: 'result', message: '' }),
    (e: { code: string; message: string }) => e,
  );
  await until(
    'the collective to be stuck on rank 1',
    async () => (await ops(d.debugSocket, 0)).inFlight.some((o) => o.clientName === 'stuck' && o.state === 'running' && o.ranks[1] === 'pending'),
    30_000,
  );
  return { reply }; // wrapped: an async function returning a promise would wait for it
}

t.test('SIGTERM with a hung rank (injected hang) and a collective stuck on it: out within the shutdown grace', async (t) => {
  const graceMs = 500;
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection', '--hang-timeout-ms', '60000', '--shutdown-grace-ms', String(graceMs)]);
  t.teardown(() => d.stop());
  const before = await servedBefore(t, d);
  const client = await connect(d.socket, { name: 'stuck' });
  const set = await registered(client);
  t.teardown(() => set.buffers.forEach((b) => b.free()));
  await debugCommand(d.debugSocket, 'inject 1 hang');
  const { reply } = await stuckCollective(d, client, set);
  // A good client from here waits behind the stuck collective: it must be answered too.
  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 200));
  const bound = graceMs + 2500;
  const exit = await sigterm(d, bound + 2000);
  checkStopped(t, d, exit, bound);
  const err = await reply;
  t.not(err.code, 'result', 'the stuck collective did not succeed');
  t.not(err.code, 'NCCLD_ERR_CONNECTION_CLOSED', `its client got an error reply, not a dropped connection: ${err.code}: ${err.message}`);
  const after = await good.stop();
  t.equal(after.wrong, 0);
  t.ok((after.errors.NCCLD_ERR_SHUTTING_DOWN ?? 0) >= 1, `the good client's queued collective was answered SHUTTING_DOWN (${JSON.stringify(after.errors)})`);
  t.comment(
    `figure: SIGTERM with an injected hang: exit ${exit.code} after ${exit.ms.toFixed(0)} ms (shutdown grace ${graceMs} ms); stuck collective answered ${err.code}; ` +
      `good client before the hang ${before.ok} ok, p50 ${before.p50.toFixed(2)} ms`,
  );
});

t.test('SIGTERM with a device process that is truly stuck (SIGSTOP): killed after the rank stop grace, no orphan', async (t) => {
  const graceMs = 500;
  const rankGraceMs = 10_000; // World's stop grace for a device process (docs/operations.md: 10 s, then SIGKILL)
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--hang-timeout-ms', '60000', '--shutdown-grace-ms', String(graceMs)]);
  t.teardown(() => d.stop());
  const before = await servedBefore(t, d);
  const pids = await devicePids(d.debugSocket);
  const client = await connect(d.socket, { name: 'stuck' });
  const set = await registered(client);
  t.teardown(() => set.buffers.forEach((b) => b.free()));
  process.kill(pids[1], 'SIGSTOP');
  t.teardown(() => {
    if (alive(pids[1])) process.kill(pids[1], 'SIGKILL');
  });
  // Delivery is asynchronous: the collective must find the process stopped, not finish first.
  await until('the device process to be stopped', () => {
    const stat = readFileSync(`/proc/${pids[1]}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'T';
  });
  const { reply } = await stuckCollective(d, client, set);
  const bound = graceMs + rankGraceMs + 3000;
  const exit = await sigterm(d, bound + 2000);
  checkStopped(t, d, exit, bound);
  t.ok(d.logs.some((l) => l.msg === 'device process did not stop in time; killing it' && l.rank === 1), 'the stuck rank was killed after its grace');
  const err = await reply;
  t.not(err.code, 'result', 'the stuck collective did not succeed');
  t.not(err.code, 'NCCLD_ERR_CONNECTION_CLOSED', `its client got an error reply: ${err.code}: ${err.message}`);
  t.comment(`figure: SIGTERM with a SIGSTOPped device process: exit ${exit.code} after ${exit.ms.toFixed(0)} ms (shutdown grace ${graceMs} ms + rank stop grace ${rankGraceMs} ms); stuck collective answered ${err.code}; good client before ${before.ok} ok`);
});
