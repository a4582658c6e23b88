// Attack: exhaust the daemon's file descriptors with idle connections, then kill a device process,
// so that the rebuild cannot fork its replacement (EMFILE). Before protocol 2 the rebuild waited on
// a spawn that never settled: the world stayed `rebuilding` with a dead rank, every request timed
// out, and SIGTERM no longer stopped the daemon. Now each attempt fails, is logged and counted,
// attempts back off, the budget ends in `failed` (which `rebuild` undoes once descriptors are free)
// or a later attempt succeeds on its own, and SIGTERM ends it all. A good client runs throughout.
import t, { type Test } from 'tap';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { connect } from '../../dist/client/index.js';
import { FrameDecoder, type Message } from '../../dist/shared/framing.js';
import { checkedAllReduce } from '../helpers/buffers.js';
import { alive, debugCommand, startDaemon, until, type RunningDaemon } from '../helpers/daemon.js';
import { startGoodClient, type GoodClient } from '../helpers/good-client.js';
import { debugSession, fdCount } from '../helpers/inspect.js';

/** The daemon's descriptor limit: what it starts with (about 25) leaves room for ~35 connections. */
const FD_LIMIT = 64;
const BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 5000];
/** What a good client may see while the world has no rank 0: the break, then waiting or failure. */
const OUTAGE_CODES = ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_ABORTED', 'NCCLD_ERR_TIMEOUT', 'NCCLD_ERR_WORLD_FAILED', 'NCCLD_ERR_NOT_READY'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Log = Record<string, unknown>;

type LimitedDaemon = RunningDaemon & {
  /** Every device process pid the daemon ever logged as forked. */
  devicePids(): number[];
};

/**
 * startDaemon through bash, so that `ulimit -n` holds the daemon, and its device processes, to
 * `fdLimit` descriptors; on teardown, SIGKILL for the daemon and any device process left.
 */
async function startLimitedDaemon(t: Test, fdLimit: number, args: string[]): Promise<LimitedDaemon> {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', ...args], { shell: `ulimit -n ${fdLimit}`, timeoutMs: 20_000 });
  t.teardown(async () => {
    if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
    await d.exited;
    for (const pid of pidsOf(d.logs)) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(d.dir, { recursive: true, force: true });
  });
  return { ...d, devicePids: () => pidsOf(d.logs) };
}

function pidsOf(logs: Log[]): number[] {
  return logs.filter((l) => l.msg === 'device process forked' && typeof l.devicePid === 'number').map((l) => l.devicePid as number);
}

interface Conn {
  socket: net.Socket;
  frames: Message[];
  bytes: number;
  closed: boolean;
}

function openConn(socketPath: string): Promise<Conn> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    const c: Conn = { socket, frames: [], bytes: 0, closed: false };
    const decoder = new FrameDecoder(1 << 20);
    socket.on('data', (chunk) => {
      c.bytes += chunk.length;
      for (const f of decoder.push(chunk)) if ('message' in f) c.frames.push(f.message);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      c.closed = true;
      resolve(c); // refused before it even connected
    });
    socket.on('connect', () => resolve(c));
  });
}

/**
 * Opens idle connections (they never say hello; the hello deadline is long) in batches until the
 * daemon refuses some: its accept or its dup of the new descriptor failed for want of descriptors.
 */
async function exhaustDescriptors(socketPath: string): Promise<{ idle: Conn[]; refused: Conn[] }> {
  const all: Conn[] = [];
  for (let batch = 0; batch < 40; batch++) {
    all.push(...(await Promise.all(Array.from({ length: 8 }, () => openConn(socketPath)))));
    await sleep(150);
    if (all.some((c) => c.closed || c.bytes > 0)) break;
  }
  // A refusal with a reply closes at once from our side; one the kernel queued closes with the trick.
  await sleep(500);
  const refused = all.filter((c) => c.closed || c.bytes > 0);
  return { idle: all.filter((c) => !refused.includes(c)), refused };
}

function checkRefusals(t: Test, refused: Conn[]): void {
  t.ok(refused.length > 0, `the daemon ran out of descriptors and refused ${refused.length} connection(s)`);
  const answered = refused.filter((c) => c.frames.length > 0);
  const quiet = refused.filter((c) => c.frames.length === 0);
  t.ok(refused.every((c) => c.closed), 'every refused connection was closed');
  t.ok(
    answered.every((c) => c.frames.length === 1 && c.frames[0].type === 'error' && c.frames[0].id === null && c.frames[0].code === 'NCCLD_ERR_RESOURCE_EXHAUSTED'),
    `a refusal that is answered says NCCLD_ERR_RESOURCE_EXHAUSTED (id null): ${JSON.stringify(answered.map((c) => c.frames))}`,
  );
  t.ok(quiet.every((c) => c.bytes === 0), 'one that is not answered gets no bytes at all');
  t.comment(`figure: refused at the descriptor limit: ${answered.length} with NCCLD_ERR_RESOURCE_EXHAUSTED, ${quiet.length} closed unanswered`);
}

function attemptsFailed(logs: Log[]): Log[] {
  return logs.filter((l) => l.msg === 'world rebuild attempt failed');
}

const timeOf = (l: Log) => (typeof l.time === 'number' ? l.time : Date.parse(String(l.time)));

/** The good client's count of replies served, as the daemon keeps it. */
async function servedToGood(debug: <T>(line: string) => Promise<T>): Promise<number> {
  const clients = await debug<{ name: string | null; served: number }[]>('clients');
  return clients.find((c) => c.name === 'good-client')?.served ?? -1;
}

async function setUp(t: Test, args: string[]) {
  const d = await startLimitedDaemon(t, FD_LIMIT, ['--max-connections', String(FD_LIMIT * 4), '--hello-timeout-ms', '600000', ...args]);
  const good: GoodClient = await startGoodClient(d.socket, { count: 4096, timeoutMs: 20_000 });
  t.teardown(() => good.stop());
  // Opened before the descriptors run out: a new debug connection could not be accepted then.
  const debug = await debugSession(t, d.debugSocket);
  await until('the good client to be served', async () => (await servedToGood(debug)) >= 20);
  const fdsBefore = fdCount(d.proc.pid!); // bash exec'd the daemon: its pid is the one spawned
  const { idle, refused } = await exhaustDescriptors(d.socket);
  t.teardown(() => idle.forEach((c) => c.socket.destroy()));
  checkRefusals(t, refused);
  const status = await debug('status');
  t.equal(status.world.state, 'ready', `the world is still ready with ${idle.length} idle connections holding the descriptors`);
  const served0 = await servedToGood(debug);
  await until('the good client to be served at the limit', async () => (await servedToGood(debug)) >= served0 + 20);
  const rank0 = status.ranks[0].pid as number;
  const killedAt = Date.now();
  process.kill(rank0, 'SIGKILL');
  const stopGood = () => good.stop();
  return { d, debug, idle, rank0, killedAt, stopGood, fdsBefore };
}

/** Every failed attempt names the spawn error; consecutive attempts are at least the backoff apart. */
function checkAttempts(t: Test, logs: Log[], min: number): number[] {
  const failed = attemptsFailed(logs);
  t.ok(failed.length >= min, `${failed.length} rebuild attempts failed`);
  t.ok(
    failed.every((l) => /cannot start its device process: spawn .* EMFILE|cannot make its descriptor channel.*EMFILE|too many open files/i.test(String(l.err))),
    `each says the spawn ran out of descriptors: ${JSON.stringify(failed[0]?.err)}`,
  );
  const gaps = failed.slice(1).map((l, i) => timeOf(l) - timeOf(failed[i]));
  t.ok(
    gaps.every((g, i) => g >= BACKOFF_MS[i] - 5),
    `attempts back off: ${gaps.join(', ')} ms apart (at least ${BACKOFF_MS.slice(0, gaps.length).join(', ')})`,
  );
  return gaps;
}

t.test('a rebuild that cannot fork fails its attempts, backs off, fails the world; `rebuild` brings it back', async (t) => {
  const { d, debug, idle, killedAt, stopGood } = await setUp(t, ['--restart-limit', '5']);
  await until('the world to fail', async () => (await debug('status')).world.state === 'failed', 20_000);
  const failedAt = Date.now();
  const status = await debug('status');
  t.match(status.world.failure, /restart budget spent \(5 rebuilds in 60000 ms\); last: rebuild failed: rank 0: .*EMFILE/, 'the failure says why');
  t.equal(status.world.rebuilds, 5, 'every attempt was counted');
  t.equal(status.ranks[0].state, 'exited', 'rank 0 has no process');
  const gaps = checkAttempts(t, d.logs, 5);
  const fail = d.logs.find((l) => l.msg === 'world failed')!;
  t.comment(`figure: kill -9 to world failed: ${timeOf(fail) - killedAt} ms over 5 attempts ${gaps.join('/')} ms apart (fd limit ${FD_LIMIT})`);
  t.ok(timeOf(fail) - killedAt < 10_000, 'the world did not hang in rebuilding');

  // Descriptors freed: `rebuild` on the debug socket brings the world back.
  for (const c of idle) c.socket.destroy();
  await sleep(200);
  const r0 = Date.now();
  const rebuilt = await debug<{ result: string; state: string }>('rebuild');
  t.equal(rebuilt.state, 'ready', `rebuild: ${rebuilt.result}`);
  t.comment(`figure: 'rebuild' after the descriptors were freed: ready in ${Date.now() - r0} ms (world failed for ${r0 - failedAt} ms)`);
  const served = await servedToGood(debug);
  await until('the good client to be served again', async () => (await servedToGood(debug)) >= served + 50);
  // New connections are accepted again: a second client gets correct results, and so does the debug socket.
  const other = await connect(d.socket, { name: 'after' });
  t.teardown(() => other.close());
  t.equal((await checkedAllReduce(other, 'f32', 'sum', 10_000, 5)).mismatches, 0, 'a new client is served correctly');
  t.match(await debugCommand(d.debugSocket, 'status'), /world: ready, 2 ranks/);
  const stats = await debug<{ errors: Record<string, number> }>('stats');
  const report = await stopGood();
  t.equal(report.wrong, 0, 'the good client never saw a wrong result');
  t.ok(Object.keys(report.errors).every((c) => OUTAGE_CODES.includes(c)), `its errors are the outage's: ${JSON.stringify(report.errors)}`);
  t.comment(`figure: good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}; daemon errors ${JSON.stringify(stats.errors)}`);
  t.equal(await stopDaemon(d), 0);
});

t.test('with budget left, the attempt after the descriptors are freed succeeds on its own', async (t) => {
  const { d, debug, idle, killedAt, stopGood, fdsBefore } = await setUp(t, ['--restart-limit', '100']);
  await until('three failed attempts', () => attemptsFailed(d.logs).length >= 3, 10_000);
  const mid = await debug('status');
  t.equal(mid.world.state, 'rebuilding', 'the world is rebuilding, not hung: it keeps trying');
  t.ok(mid.world.rebuilds >= 3, `status counts the attempts: ${mid.world.rebuilds} rebuilds`);
  t.match(mid.world.lastBreak, /rebuild failed: rank 0: .*EMFILE/, 'and says why the last one failed');
  const freedAt = Date.now();
  for (const c of idle) c.socket.destroy();
  await until('the world to be rebuilt', () => d.logs.some((l) => l.msg === 'world rebuilt'), 10_000);
  const rebuilt = d.logs.find((l) => l.msg === 'world rebuilt')!;
  const status = await debug('status');
  t.equal(status.world.state, 'ready');
  t.ok(status.ranks.every((r: { state: string }) => r.state === 'ready'), 'both ranks are up');
  const fails = attemptsFailed(d.logs).length;
  t.equal(status.world.rebuilds, fails + 1, `every attempt was counted (${fails} failed, 1 succeeded)`);
  t.notOk(d.logs.some((l) => l.msg === 'world failed'), 'the world never failed');
  const gaps = checkAttempts(t, d.logs, 3);
  t.comment(`figure: attempts ${gaps.join('/')} ms apart; descriptors freed to world rebuilt: ${timeOf(rebuilt) - freedAt} ms; kill -9 to rebuilt: ${timeOf(rebuilt) - killedAt} ms`);
  const served = await servedToGood(debug);
  await until('the good client to be served again', async () => (await servedToGood(debug)) >= served + 50);
  // The failed spawns left no descriptor behind: back to what it held before the attack.
  await until('the refused connections to be let go', () => fdCount(d.proc.pid!) <= fdsBefore, 3000).catch(() => {});
  t.ok(fdCount(d.proc.pid!) <= fdsBefore, `the daemon holds ${fdCount(d.proc.pid!)} descriptors, as before the attack (${fdsBefore}): none leaked by ${fails} failed spawns`);
  const report = await stopGood();
  t.equal(report.wrong, 0, 'the good client never saw a wrong result');
  t.ok(Object.keys(report.errors).every((c) => OUTAGE_CODES.includes(c)), `its errors are the outage's: ${JSON.stringify(report.errors)}`);
  t.comment(`figure: good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`);
  t.equal(await stopDaemon(d), 0);
});

t.test('SIGTERM during the failing rebuild exits promptly, code 0, no device process left', async (t) => {
  const { d, debug } = await setUp(t, ['--restart-limit', '100']);
  // After the fourth failure the next attempt is 800 ms away: SIGTERM must not wait for it.
  await until('four failed attempts', () => attemptsFailed(d.logs).length >= 4, 10_000);
  t.equal((await debug('status')).world.state, 'rebuilding');
  const pids = d.devicePids();
  t.ok(pids.some(alive), 'rank 1 still runs');
  const t0 = Date.now();
  d.proc.kill('SIGTERM');
  const { code, signal } = await d.exited;
  const ms = Date.now() - t0;
  t.equal(code, 0, `exit code 0 (signal ${signal})`);
  t.ok(ms < 3000, `exited in ${ms} ms`);
  t.comment(`figure: SIGTERM during a failing rebuild (${attemptsFailed(d.logs).length} attempts failed): exited in ${ms} ms`);
  await until('every device process to be gone', () => !pids.some(alive), 2000).catch(() => {});
  t.same(pids.filter(alive), [], `no device process is left of ${pids.join(', ')}`);
  t.ok(d.logs.some((l) => l.msg === 'world stopped'), 'the world was stopped');
});

async function stopDaemon(d: LimitedDaemon): Promise<number | null> {
  d.proc.kill('SIGTERM');
  const pids = d.devicePids();
  const { code } = await d.exited;
  await until('device processes gone', () => !pids.some(alive), 2000).catch(() => {});
  return pids.some(alive) ? -1 : code;
}
