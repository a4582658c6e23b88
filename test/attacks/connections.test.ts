// Attack: connections that never say hello, and more connections than the daemon will serve, in
// all and from one user. Before protocol 2 none of these was limited or timed out, so any local
// user could take every descriptor the daemon had. Now a connection silent past the hello
// deadline is told NCCLD_ERR_HELLO_TIMEOUT and closed, and one over a limit is told
// NCCLD_ERR_TOO_MANY_CONNECTIONS and closed, while a good client connected before goes on being
// served; `stats` on the debug socket counts each refusal under its code.
import t, { type Test } from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect, type Client } from '../../dist/client/index.js';
import { PROTOCOL_VERSION } from '../../dist/shared/protocol.js';
import { checkedAllReduce } from '../helpers/buffers.js';
import { ROOT, startDaemon, until, type RunningDaemon } from '../helpers/daemon.js';
import { startGoodClient, type GoodClient, type GoodReport } from '../helpers/good-client.js';
import { debugJson } from '../helpers/inspect.js';
import { rawConnect, type RawConnection } from '../helpers/raw.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function servedToGood(d: RunningDaemon): Promise<number> {
  const clients = await debugJson<{ name: string | null; served: number }[]>(d.debugSocket, 'clients');
  return clients.find((c) => c.name === 'good-client')?.served ?? -1;
}

/** Starts a good client and waits until the daemon has served it a few times. */
async function withGoodClient(t: Test, d: RunningDaemon) {
  const good: GoodClient = await startGoodClient(d.socket, { count: 4096 });
  let report: GoodReport | null = null;
  const stop = async () => (report ??= await good.stop());
  t.teardown(stop);
  await until('the good client to be served', async () => (await servedToGood(d)) >= 10);
  return { good, stop };
}

/** The good client served at least `n` more replies from now (while the attack goes on). */
async function keepsServing(d: RunningDaemon, n = 50): Promise<void> {
  const from = await servedToGood(d);
  await until(`the good client to be served ${n} more times`, async () => (await servedToGood(d)) >= from + n, 10_000);
}

function checkGood(t: Test, r: GoodReport, label: string): void {
  t.equal(r.wrong, 0, `${label}: no wrong result`);
  t.same(r.errors, {}, `${label}: no error`);
  t.ok(r.ok > 0, `${label}: served`);
  t.comment(`figure: ${label}: good client ${r.ok} ok, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms`);
}

const isError = (code: string) => (m: { type?: unknown; code?: unknown }) => m.type === 'error' && m.code === code;

t.test('a connection that never says hello is told NCCLD_ERR_HELLO_TIMEOUT and closed', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--hello-timeout-ms', '300']);
  t.teardown(() => d.stop());
  const { stop } = await withGoodClient(t, d);

  const t0 = performance.now();
  const silent = await Promise.all(Array.from({ length: 20 }, () => rawConnect(d.socket)));
  t.teardown(() => silent.forEach((c) => c.socket.destroy()));
  // One that says hello late, but in time, is kept: the deadline is for the hello only.
  const late = await rawConnect(d.socket);
  t.teardown(() => late.socket.destroy());
  await sleep(150);
  late.sendMessage({ type: 'hello', protocol: PROTOCOL_VERSION });
  t.equal((await late.next((m) => m.type === 'hello')).protocol, PROTOCOL_VERSION, 'a hello at 150 ms is answered');

  const first = await silent[0].next(isError('NCCLD_ERR_HELLO_TIMEOUT'), 5000);
  const refusedMs = performance.now() - t0;
  t.equal(first.id, null, 'the refusal carries id null');
  t.match(first.message, /no hello within 300 ms/);
  await Promise.all(silent.map((c) => c.closed));
  const closedMs = performance.now() - t0;
  t.ok(silent.every((c) => c.replies.length === 1 && c.replies[0].code === 'NCCLD_ERR_HELLO_TIMEOUT'), 'each silent connection got exactly that reply, then was closed');
  t.ok(refusedMs >= 290 && closedMs < 2000, `refused at ${refusedMs.toFixed(0)} ms, all 20 closed by ${closedMs.toFixed(0)} ms (deadline 300 ms)`);
  t.comment(`figure: hello deadline 300 ms: first refusal at ${refusedMs.toFixed(0)} ms, 20 silent connections closed by ${closedMs.toFixed(0)} ms`);

  await sleep(400);
  t.notOk(late.socket.destroyed || late.replies.some((m) => m.type === 'error'), 'the connection that said hello is still open, with no error');
  const status = await debugJson(d.debugSocket, 'status');
  t.equal(status.clients, 2, 'only the good client and the late one remain');
  t.equal(status.world.state, 'ready');
  await keepsServing(d);
  const stats = await debugJson(d.debugSocket, 'stats');
  t.equal(stats.errors.NCCLD_ERR_HELLO_TIMEOUT, 20, 'stats counts 20 hello timeouts');
  t.match(stats.limits.find((l: { name: string }) => l.name === 'hello-timeout-ms'), { limit: 300, refused: 20 });
  checkGood(t, await stop(), 'hello timeouts');
});

t.test('connection N+1 is told NCCLD_ERR_TOO_MANY_CONNECTIONS and closed; the good client is served', async (t) => {
  const max = 4;
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-connections', String(max)]);
  t.teardown(() => d.stop());
  const { stop } = await withGoodClient(t, d);
  // The good client is one; fill the rest with connections that said hello.
  const held: RawConnection[] = [];
  t.teardown(() => held.forEach((c) => c.socket.destroy()));
  for (let i = 1; i < max; i++) {
    const c = await rawConnect(d.socket);
    held.push(c);
    c.sendMessage({ type: 'hello', protocol: PROTOCOL_VERSION });
    await c.next((m) => m.type === 'hello');
  }
  const extra = await rawConnect(d.socket);
  const refusal = await extra.next(isError('NCCLD_ERR_TOO_MANY_CONNECTIONS'), 3000);
  t.equal(refusal.id, null, 'the refusal carries id null');
  t.match(refusal.message, /serves 4 connections, its limit/);
  await extra.closed;
  t.pass('and the connection was closed');
  // The SDK hands the same refusal to its caller.
  await t.rejects(connect(d.socket, { timeoutMs: 3000 }), { code: 'NCCLD_ERR_TOO_MANY_CONNECTIONS' }, 'connect() rejects with it');

  // A flood over the limit: every one refused and closed; the good client goes on.
  const t0 = performance.now();
  const flood = await Promise.all(Array.from({ length: 50 }, () => rawConnect(d.socket)));
  t.teardown(() => flood.forEach((c) => c.socket.destroy()));
  await Promise.all(flood.map((c) => c.closed));
  t.ok(flood.every((c) => c.replies.length === 1 && c.replies[0].code === 'NCCLD_ERR_TOO_MANY_CONNECTIONS'), '50 more: each refused and closed');
  t.comment(`figure: 50 connections over max-connections ${max} refused and closed in ${(performance.now() - t0).toFixed(0)} ms`);
  await keepsServing(d);
  t.equal((await debugJson(d.debugSocket, 'status')).clients, max, 'the daemon serves exactly its limit');

  // A place freed is a place taken: the next client is served.
  held.pop()!.socket.destroy();
  await until('the daemon to see the close', async () => (await debugJson(d.debugSocket, 'status')).clients < max);
  const next: Client = await connect(d.socket, { name: 'next' });
  t.teardown(() => next.close());
  t.equal((await checkedAllReduce(next, 'f32', 'sum', 1000, 3)).mismatches, 0, 'a client taking the freed place is served correctly');

  const stats = await debugJson(d.debugSocket, 'stats');
  t.equal(stats.errors.NCCLD_ERR_TOO_MANY_CONNECTIONS, 52, 'stats counts the 52 refusals under NCCLD_ERR_TOO_MANY_CONNECTIONS');
  t.match(stats.limits.find((l: { name: string }) => l.name === 'max-connections'), { limit: max, inUse: max, refused: 52 });
  t.equal((await debugJson(d.debugSocket, 'status')).world.state, 'ready');
  checkGood(t, await stop(), 'max-connections');
});

// Per-uid: root is not limited, so the extra connections are opened as user nobody.
const NOBODY = (() => {
  try {
    return Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim());
  } catch {
    return 65534;
  }
})();

/** Node as user nobody, through sh, which drops NODE_OPTIONS (tap's coverage hooks could not write their files as nobody). */
function nodeAsNobody(args: string[]) {
  return spawn('/bin/sh', ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, ...args], { uid: NOBODY, gid: NOBODY, stdio: ['pipe', 'pipe', 'pipe'] });
}

const skipPerUid =
  process.getuid?.() !== 0
    ? 'needs root, to connect as another user'
    : spawnSync('/bin/sh', ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(path.join(ROOT, 'dist/client/index.js'))}, 4)`], { uid: NOBODY, gid: NOBODY }).status !== 0
      ? `user nobody cannot read ${ROOT}/dist`
      : false;

t.test('per-uid limit: a user over it is told NCCLD_ERR_TOO_MANY_CONNECTIONS; root is exempt and served', { skip: skipPerUid }, async (t) => {
  const perUid = 2;
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-connections-per-uid', String(perUid), '--socket-mode', '666']);
  t.teardown(() => d.stop());
  chmodSync(d.dir, 0o755); // so that nobody can reach the socket
  const { stop } = await withGoodClient(t, d);

  // As nobody: perUid + 1 connections held open; then, told so on stdin, one closed, one more opened.
  const script = `
    import { connect } from ${JSON.stringify(path.join(ROOT, 'dist/client/index.js'))};
    import readline from 'node:readline';
    const open = () => connect(${JSON.stringify(d.socket)}, { name: 'nobody', timeoutMs: 5000 }).then(
      (c) => ({ c, r: { ok: true, worldSize: c.worldSize } }),
      (e) => ({ c: null, r: { ok: false, code: e.code, message: e.message } }));
    const held = [];
    for (let i = 0; i < ${perUid + 1}; i++) held.push(await open());
    console.log(JSON.stringify(held.map((h) => h.r)));
    for await (const line of readline.createInterface({ input: process.stdin })) {
      if (line === 'close') {
        await held.shift().c.close();
        console.log('[]');
      } else if (line === 'open') {
        held.push(await open());
        console.log(JSON.stringify([held.at(-1).r]));
      } else break;
    }
    for (const h of held) await h.c?.close();`;
  const child = nodeAsNobody(['--input-type=module', '-e', script]);
  t.teardown(() => void child.kill('SIGKILL'));
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  const lines: string[] = [];
  let partial = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    partial += c;
    let nl;
    while ((nl = partial.indexOf('\n')) >= 0) {
      lines.push(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await until('nobody to connect', () => lines.length >= 1 || child.exitCode !== null, 15_000);
  t.equal(stderr, '', 'the nobody client printed no error');
  const results = JSON.parse(lines[0]);
  t.match(results.slice(0, perUid), Array(perUid).fill({ ok: true, worldSize: 2 }), `nobody's first ${perUid} connections are served`);
  t.match(results[perUid], { ok: false, code: 'NCCLD_ERR_TOO_MANY_CONNECTIONS', message: new RegExp(`uid ${NOBODY} has ${perUid} connections open, the limit per user`) }, 'the next is refused');

  const clients = await debugJson<{ uid: number | null }[]>(d.debugSocket, 'clients');
  t.equal(clients.filter((c) => c.uid === NOBODY).length, perUid, `the daemon holds ${perUid} of nobody's connections`);
  // Root is exempt: more connections than the per-uid limit, each served.
  const mine: Client[] = [];
  t.teardown(() => Promise.all(mine.map((c) => c.close())));
  for (let i = 0; i < perUid + 2; i++) mine.push(await connect(d.socket, { name: `root-${i}` }));
  const checks = await Promise.all(mine.map((c, i) => checkedAllReduce(c, 'f32', 'sum', 1000, 10 + i)));
  t.ok(checks.every((r) => r.mismatches === 0), `root holds ${perUid + 3} connections (the good client's too), each served correctly`);

  const stats = await debugJson(d.debugSocket, 'stats');
  t.equal(stats.errors.NCCLD_ERR_TOO_MANY_CONNECTIONS, 1, 'stats counts the refusal under NCCLD_ERR_TOO_MANY_CONNECTIONS');
  t.match(stats.limits.find((l: { name: string }) => l.name === 'max-connections-per-uid'), { limit: perUid, inUse: perUid, refused: 1 }, 'and under the per-uid limit');
  t.match(stats.limits.find((l: { name: string }) => l.name === 'max-connections'), { refused: 0 }, 'not under the total limit, which was never reached');

  // A place freed for nobody is nobody's again (once the daemon has seen the close: a connect
  // racing it may still be counted against the old connection).
  child.stdin!.write('close\n');
  await until('nobody to close one', () => lines.length >= 2 || child.exitCode !== null, 15_000);
  await until('the daemon to see it', async () => (await debugJson<{ uid: number | null }[]>(d.debugSocket, 'clients')).filter((c) => c.uid === NOBODY).length < perUid);
  child.stdin!.write('open\n');
  await until('nobody to connect again', () => lines.length >= 3 || child.exitCode !== null, 15_000);
  t.match(JSON.parse(lines[2]), [{ ok: true }], 'after closing one, nobody connects again');
  child.stdin!.end();
  t.equal(await exited, 0, 'the nobody client exited cleanly');
  await keepsServing(d);
  t.equal((await debugJson(d.debugSocket, 'status')).world.state, 'ready');
  checkGood(t, await stop(), 'per-uid limit');
});
