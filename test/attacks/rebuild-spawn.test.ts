// Attack: kill a device process while the daemon cannot fork its replacement. Before protocol 2 the
// rebuild waited on a spawn that never settled: the world stayed `rebuilding` with a dead rank,
// every request timed out, and SIGTERM no longer stopped the daemon. Now each attempt fails, is
// logged and counted, attempts back off, the budget ends in `failed` (which `rebuild` undoes once
// forks work again) or a later attempt succeeds on its own, and SIGTERM ends it all. A good client
// runs throughout.
//
// The fork fails for want of processes: the daemon runs as user nobody, and once it and its ranks
// are up its soft RLIMIT_NPROC is lowered to exactly the tasks (threads count) that remain once
// rank 0 is killed, so the fork of its replacement fails with EAGAIN. Descriptor exhaustion
// (`ulimit -n` and idle connections) no longer makes it fail: the daemon keeps a few descriptors in
// reserve for fork; the last scenario checks that it rebuilds then, and leaks nothing.
import t, { type Test } from 'tap';
import { chownSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { connect } from '../../dist/client/index.js';
import { FrameDecoder, type Message } from '../../dist/shared/framing.js';
import { checkedAllReduce } from '../helpers/buffers.js';
import { ROOT, alive, debugCommand, startDaemon, until, type RunningDaemon, type StartOptions } from '../helpers/daemon.js';
import { startGoodClient, type GoodClient } from '../helpers/good-client.js';
import { debugSession, fdCount, quietFdCount } from '../helpers/inspect.js';

/** The descriptor limit of the reserve scenario: what the daemon holds serving one client (about 45) leaves room for ~20 connections. */
const FD_LIMIT = 64;
const BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 5000];
/** What a good client may see while the world has no rank 0: the break, then waiting or failure. */
const OUTAGE_CODES = ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_ABORTED', 'NCCLD_ERR_TIMEOUT', 'NCCLD_ERR_WORLD_FAILED', 'NCCLD_ERR_NOT_READY'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Log = Record<string, unknown>;
type Debug = <T = Record<string, any>>(line: string) => Promise<T>;

const idOf = (flag: '-u' | '-g', fallback: number) => {
  try {
    return Number(execFileSync('id', [flag, 'nobody'], { encoding: 'utf8' }).trim());
  } catch {
    return fallback;
  }
};
const NOBODY = idOf('-u', 65534);
const NOGROUP = idOf('-g', 65534);

/** Whether user nobody can read `file` (through sh, which drops tap's NODE_OPTIONS). */
function nobodyCanRead(file: string): boolean {
  const args = ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(file)}, 4)`];
  return spawnSync('/bin/sh', args, { uid: NOBODY, gid: NOGROUP }).status === 0;
}

const skipNproc =
  process.getuid?.() !== 0
    ? 'needs root, to run the daemon as user nobody'
    : spawnSync('prlimit', ['--version']).status !== 0
      ? 'needs prlimit (util-linux)'
      : !nobodyCanRead(path.join(ROOT, 'dist/daemon/main.js')) || !nobodyCanRead(path.join(ROOT, 'build/Release/nccld.node'))
        ? `user nobody cannot read ${ROOT}/dist or ${ROOT}/build`
        : false;
// The SDK talks only to a daemon run by root, by us, or by a uid we trust.
if (!skipNproc) process.env.NCCLD_TRUSTED_UIDS = String(NOBODY);

type TestDaemon = RunningDaemon & {
  /** Every device process pid the daemon ever logged as forked. */
  devicePids(): number[];
};

/** startDaemon with two host ranks; on teardown, SIGKILL for the daemon and any device process left. */
async function startTestDaemon(t: Test, args: string[], opts: StartOptions & { rmDir?: string }): Promise<TestDaemon> {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', ...args], { timeoutMs: 20_000, ...opts });
  t.teardown(async () => {
    if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
    await d.exited;
    for (const pid of pidsOf(d.logs)) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(d.dir, { recursive: true, force: true });
    if (opts.rmDir) rmSync(opts.rmDir, { recursive: true, force: true });
  });
  return { ...d, devicePids: () => pidsOf(d.logs) };
}

/**
 * The daemon as user nobody (RLIMIT_NPROC does not hold root back), its sockets in a directory of
 * nobody's (the daemon refuses one of another user), without tap's NODE_OPTIONS and coverage
 * directory, which nobody could not write to.
 */
async function startNobodyDaemon(t: Test, args: string[]): Promise<TestDaemon> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-nproc-')); // mode 0700
  chownSync(dir, NOBODY, NOGROUP);
  return startTestDaemon(t, args, {
    paths: { socket: path.join(dir, 'api.sock'), debugSocket: path.join(dir, 'debug.sock') },
    user: { uid: NOBODY, gid: NOGROUP },
    shell: 'unset NODE_OPTIONS NODE_V8_COVERAGE',
    rmDir: dir,
  });
}

function pidsOf(logs: Log[]): number[] {
  return logs.filter((l) => l.msg === 'device process forked' && typeof l.devicePid === 'number').map((l) => l.devicePid as number);
}

/** A process's tasks: RLIMIT_NPROC counts every thread of the user, not processes. */
function threadsOf(pid: number): number {
  return Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/** Every task whose real uid is `uid`: what fork() and pthread_create() check against RLIMIT_NPROC. */
function tasksOfUid(uid: number): number {
  let n = 0;
  for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      const st = readFileSync(`/proc/${pid}/status`, 'utf8');
      if (Number(/^Uid:\s+(\d+)/m.exec(st)?.[1]) === uid) n += Number(/^Threads:\s+(\d+)/m.exec(st)?.[1] ?? 0);
    } catch {
      // gone meanwhile
    }
  }
  return n;
}

function nprocLimits(pid: number): { soft: string; hard: string } {
  const m = /^Max processes\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  return { soft: m[1], hard: m[2] };
}

/**
 * Sets the soft RLIMIT_NPROC of nobody's daemon, its hard one unchanged ('hard': back up to it).
 * prlimit runs as nobody: a process may change the limits of its own user's, the soft one up to
 * the hard one, while root may touch another user's only with CAP_SYS_RESOURCE, which root in a
 * container may lack (as it does on the machine this was written on).
 */
function setNproc(pid: number, soft: number | 'hard'): void {
  const value = soft === 'hard' ? nprocLimits(pid).hard : String(soft);
  execFileSync('prlimit', ['--pid', String(pid), `--nproc=${value}:`], { uid: NOBODY, gid: NOGROUP, stdio: 'pipe' });
  if (nprocLimits(pid).soft !== value) throw new Error(`soft RLIMIT_NPROC of ${pid} is ${nprocLimits(pid).soft}, not ${value}`);
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
async function servedToGood(debug: Debug): Promise<number> {
  const clients = await debug<{ name: string | null; served: number }[]>('clients');
  return clients.find((c) => c.name === 'good-client')?.served ?? -1;
}

/** A daemon of nobody's serving a good client; then forks are made to fail and rank 0 is killed. */
async function setUp(t: Test, args: string[]) {
  const d = await startNobodyDaemon(t, ['--hello-timeout-ms', '600000', ...args]);
  const pid = d.proc.pid!; // bash exec'd the daemon: its pid is the one spawned
  const good: GoodClient = await startGoodClient(d.socket, { count: 4096, timeoutMs: 20_000 });
  t.teardown(() => good.stop());
  const debug: Debug = await debugSession(t, d.debugSocket);
  await until('the good client to be served', async () => (await servedToGood(debug)) >= 20);
  const status = await debug('status');
  t.equal(status.world.state, 'ready');
  const [rank0, rank1] = status.ranks.map((r: { pid: number }) => r.pid);
  const fdsBefore = await quietFdCount(pid);
  // What uid nobody runs now: the daemon's threads and both ranks'. Once rank 0 is gone the daemon
  // and rank 1 remain: a soft limit of exactly that lets everything run on, and the fork of rank
  // 0's replacement (one task more) fails with EAGAIN. Other processes of nobody's only add to it.
  const tasks = tasksOfUid(NOBODY);
  const threads = { daemon: threadsOf(pid), rank0: threadsOf(rank0), rank1: threadsOf(rank1) };
  const limit = threads.daemon + threads.rank1;
  const hard = nprocLimits(pid).hard;
  setNproc(pid, limit);
  t.comment(`figure: uid nobody runs ${tasks} tasks (daemon ${threads.daemon} threads, ranks ${threads.rank0} + ${threads.rank1}); daemon's soft RLIMIT_NPROC lowered to ${limit} (hard ${hard})`);
  const killedAt = Date.now();
  process.kill(rank0, 'SIGKILL');
  const stopGood = () => good.stop();
  /** Forks work again: the soft limit back up to the hard one. */
  const allowForks = () => setNproc(pid, 'hard');
  return { d, pid, debug, rank0, killedAt, stopGood, fdsBefore, allowForks };
}

/**
 * Every failed attempt names the spawn's EAGAIN; each was logged as one device process that could
 * not be started; consecutive attempts are at least the backoff apart.
 */
function checkAttempts(t: Test, logs: Log[], min: number): number[] {
  const failed = attemptsFailed(logs);
  t.ok(failed.length >= min, `${failed.length} rebuild attempts failed`);
  t.ok(
    failed.every((l) => /^rank 0: cannot start its device process: spawn .* EAGAIN$/.test(String(l.err))),
    `each says the fork of rank 0 failed with EAGAIN: ${JSON.stringify(failed[0]?.err)}`,
  );
  const notStarted = logs.filter((l) => l.msg === 'device process could not be started').length;
  t.equal(notStarted, failed.length, `each failed spawn was handled once: ${notStarted} logged as not started, ${failed.length} attempts failed`);
  const gaps = failed.slice(1).map((l, i) => timeOf(l) - timeOf(failed[i]));
  t.ok(
    gaps.every((g, i) => g >= BACKOFF_MS[i] - 5),
    `attempts back off: ${gaps.join(', ')} ms apart (at least ${BACKOFF_MS.slice(0, gaps.length).join(', ')})`,
  );
  return gaps;
}

t.test('a rebuild that cannot fork fails its attempts, backs off, fails the world; `rebuild` brings it back', { skip: skipNproc }, async (t) => {
  const { d, debug, killedAt, stopGood, allowForks } = await setUp(t, ['--restart-limit', '5']);
  await until('the world to fail', async () => (await debug('status')).world.state === 'failed', 20_000);
  const failedAt = Date.now();
  const status = await debug('status');
  t.match(status.world.failure, /restart budget spent \(5 rebuilds in 60000 ms\); last: rebuild failed: rank 0: cannot start its device process: spawn .* EAGAIN/, 'the failure says why');
  t.equal(status.world.rebuilds, 5, 'every attempt was counted');
  t.equal(status.ranks[0].state, 'exited', 'rank 0 has no process');
  t.equal(status.ranks[1].state, 'ready', 'rank 1 still runs');
  const gaps = checkAttempts(t, d.logs, 5);
  const fail = d.logs.find((l) => l.msg === 'world failed')!;
  t.comment(`figure: kill -9 to world failed: ${timeOf(fail) - killedAt} ms over 5 attempts ${gaps.join('/')} ms apart (EAGAIN)`);
  t.ok(timeOf(fail) - killedAt < 10_000, 'the world did not hang in rebuilding');
  t.equal(d.proc.exitCode, null, 'the daemon runs on');

  // Forks work again: `rebuild` on the debug socket brings the world back.
  allowForks();
  const r0 = Date.now();
  const rebuilt = await debug<{ result: string; state: string }>('rebuild');
  t.equal(rebuilt.state, 'ready', `rebuild: ${rebuilt.result}`);
  t.comment(`figure: 'rebuild' after the process limit was raised: ready in ${Date.now() - r0} ms (world failed for ${r0 - failedAt} ms)`);
  const after = await debug('status');
  t.ok(after.ranks.every((r: { state: string }) => r.state === 'ready'), 'both ranks are up');
  const served = await servedToGood(debug);
  await until('the good client to be served again', async () => (await servedToGood(debug)) >= served + 50);
  // A second client gets correct results, and so does a new debug connection.
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

t.test('with budget left, the attempt after forks work again succeeds on its own', { skip: skipNproc }, async (t) => {
  const { d, pid, debug, killedAt, stopGood, fdsBefore, allowForks } = await setUp(t, ['--restart-limit', '100']);
  await until('three failed attempts', () => attemptsFailed(d.logs).length >= 3, 10_000);
  const mid = await debug('status');
  t.equal(mid.world.state, 'rebuilding', 'the world is rebuilding, not hung: it keeps trying');
  t.ok(mid.world.rebuilds >= 3, `status counts the attempts: ${mid.world.rebuilds} rebuilds`);
  t.match(mid.world.lastBreak, /rebuild failed: rank 0: .*EAGAIN/, 'and says why the last one failed');
  const allowedAt = Date.now();
  allowForks();
  await until('the world to be rebuilt', () => d.logs.some((l) => l.msg === 'world rebuilt'), 10_000);
  const rebuilt = d.logs.find((l) => l.msg === 'world rebuilt')!;
  const status = await debug('status');
  t.equal(status.world.state, 'ready');
  t.ok(status.ranks.every((r: { state: string }) => r.state === 'ready'), 'both ranks are up');
  const fails = attemptsFailed(d.logs).length;
  t.equal(status.world.rebuilds, fails + 1, `every attempt was counted (${fails} failed, 1 succeeded)`);
  t.notOk(d.logs.some((l) => l.msg === 'world failed'), 'the world never failed');
  const gaps = checkAttempts(t, d.logs, 3);
  t.comment(`figure: ${fails} attempts failed, ${gaps.join('/')} ms apart; limit raised to world rebuilt: ${timeOf(rebuilt) - allowedAt} ms; kill -9 to rebuilt: ${timeOf(rebuilt) - killedAt} ms`);
  const served = await servedToGood(debug);
  await until('the good client to be served again', async () => (await servedToGood(debug)) >= served + 50);
  // The failed spawns left no descriptor behind: the new rank 0 holds what the old one did.
  const fdsAfter = await quietFdCount(pid);
  t.equal(fdsAfter, fdsBefore, `the daemon holds ${fdsAfter} descriptors, as before the kill (${fdsBefore}): none leaked by ${fails} failed spawns`);
  const report = await stopGood();
  t.equal(report.wrong, 0, 'the good client never saw a wrong result');
  t.ok(Object.keys(report.errors).every((c) => OUTAGE_CODES.includes(c)), `its errors are the outage's: ${JSON.stringify(report.errors)}`);
  t.comment(`figure: descriptors ${fdsBefore} before, ${fdsAfter} after; good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`);
  t.equal(await stopDaemon(d), 0);
});

t.test('SIGTERM during the failing rebuild exits promptly, code 0, no device process left', { skip: skipNproc }, async (t) => {
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
  checkAttempts(t, d.logs, 4);
  t.comment(`figure: SIGTERM during a failing rebuild (${attemptsFailed(d.logs).length} attempts failed, EAGAIN): exited in ${ms} ms`);
  await until('every device process to be gone', () => !pids.some(alive), 2000).catch(() => {});
  t.same(pids.filter(alive), [], `no device process is left of ${pids.join(', ')}`);
  t.ok(d.logs.some((l) => l.msg === 'world stopped'), 'the world was stopped');
});

// The daemon's reserve: descriptors it gives fork() and takes back right after. Without it a fork
// at the descriptor limit failed with EMFILE, and Node leaked its channel's socket pair each time.
t.test('out of descriptors, a killed rank is rebuilt anyway, from the reserve, and nothing leaks', async (t) => {
  const d = await startTestDaemon(t, ['--max-connections', String(FD_LIMIT * 4), '--hello-timeout-ms', '600000', '--restart-limit', '5'], { shell: `ulimit -n ${FD_LIMIT}` });
  const pid = d.proc.pid!;
  const good: GoodClient = await startGoodClient(d.socket, { count: 4096, timeoutMs: 20_000 });
  t.teardown(() => good.stop());
  // Opened before the descriptors run out: a new debug connection could not be accepted then.
  const debug: Debug = await debugSession(t, d.debugSocket);
  await until('the good client to be served', async () => (await servedToGood(debug)) >= 20);
  const fdsBefore = await quietFdCount(pid);
  const { idle, refused } = await exhaustDescriptors(d.socket);
  t.teardown(() => idle.forEach((c) => c.socket.destroy()));
  checkRefusals(t, refused);
  const status = await debug('status');
  t.equal(status.world.state, 'ready', `the world is still ready with ${idle.length} idle connections holding the descriptors`);
  const served0 = await servedToGood(debug);
  await until('the good client to be served at the limit', async () => (await servedToGood(debug)) >= served0 + 20);
  const fdsAtLimit = fdCount(pid);

  const killedAt = Date.now();
  process.kill(status.ranks[0].pid, 'SIGKILL');
  await until('the world to be rebuilt', () => d.logs.some((l) => l.msg === 'world rebuilt' || l.msg === 'world failed'), 10_000);
  const rebuilt = d.logs.find((l) => l.msg === 'world rebuilt');
  t.ok(rebuilt, 'the world was rebuilt');
  t.same(attemptsFailed(d.logs).map((l) => l.err), [], 'no attempt failed');
  const after = await debug('status');
  t.equal(after.world.state, 'ready');
  t.equal(after.world.rebuilds, 1, 'one rebuild');
  t.ok(after.ranks.every((r: { state: string }) => r.state === 'ready'), 'both ranks are up');
  t.not(after.ranks[0].pid, status.ranks[0].pid, 'rank 0 is a new process');
  const served = await servedToGood(debug);
  await until('the good client to be served again', async () => (await servedToGood(debug)) >= served + 50);
  const fdsRebuilt = fdCount(pid);
  t.ok(fdsRebuilt <= fdsAtLimit, `at the limit the daemon holds ${fdsRebuilt} descriptors, as before the kill (${fdsAtLimit})`);

  // The idle connections gone, the daemon holds what it held before the attack: nothing leaked.
  for (const c of idle) c.socket.destroy();
  let fdsAfter = await quietFdCount(pid);
  await until('the idle connections to be let go', async () => (fdsAfter = await quietFdCount(pid)) <= fdsBefore, 5000).catch(() => {});
  t.equal(fdsAfter, fdsBefore, `the daemon holds ${fdsAfter} descriptors, as before the attack (${fdsBefore})`);
  const other = await connect(d.socket, { name: 'after' });
  t.teardown(() => other.close());
  t.equal((await checkedAllReduce(other, 'f32', 'sum', 10_000, 5)).mismatches, 0, 'a new client is served correctly');
  const report = await good.stop();
  t.equal(report.wrong, 0, 'the good client never saw a wrong result');
  t.ok(Object.keys(report.errors).every((c) => OUTAGE_CODES.includes(c)), `its errors are the outage's: ${JSON.stringify(report.errors)}`);
  t.comment(
    `figure: at the descriptor limit (${FD_LIMIT}, ${idle.length} idle connections): kill -9 to world rebuilt in ${timeOf(rebuilt!) - killedAt} ms, 1 attempt; ` +
      `descriptors ${fdsBefore} before the attack, ${fdsAtLimit} at the limit, ${fdsRebuilt} after the rebuild, ${fdsAfter} once the idle connections closed; ` +
      `good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`,
  );
  t.equal(await stopDaemon(d), 0);
});

async function stopDaemon(d: TestDaemon): Promise<number | null> {
  d.proc.kill('SIGTERM');
  const pids = d.devicePids();
  const { code } = await d.exited;
  await until('device processes gone', () => !pids.some(alive), 2000).catch(() => {});
  return pids.some(alive) ? -1 : code;
}
