// Finding: "Device processes run out of descriptors when one client names tens of thousands of
// segments; every other client then gets NCCLD_ERR_INTERNAL." Protocol 2: a client process may
// register --max-buffers buffers (over all its connections), all clients --max-buffers-total;
// device processes keep a mapping per buffer and close its descriptor at once. The attackers run
// in child processes (the limit is per client process, from SO_PEERCRED); the well-behaved
// client runs in this process, registering new buffers and running collectives throughout.
import t from 'tap';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { ErrorCodes, HostBuffer } from '../../dist/client/index.js';
import { alive, ROOT, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient } from '../helpers/good-client.js';
import { debugJson, fdCount, quietFdCount, status } from '../helpers/inspect.js';

const MAX_BUFFERS = 500;
const MAX_TOTAL = 1000;

/**
 * The attacker: registers small buffers, many at once, until refused; then a burst more; then
 * the same from a second connection. Prints one JSON line, holds everything until stdin closes.
 */
const ATTACKER = `
import { connect, HostBuffer } from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'dist/client/index.js')).href)};
const socket = process.env.ATTACK_SOCKET;
const codes = {};
const keep = [];
const count = (e) => { codes[e.code] = (codes[e.code] ?? 0) + 1; };
async function burst(c, n) {
  const bufs = Array.from({ length: n }, () => HostBuffer.alloc(4096));
  keep.push(...bufs);
  const got = await Promise.allSettled(bufs.map((b) => c.register(b)));
  let ok = 0;
  for (const g of got) g.status === 'fulfilled' ? ok++ : count(g.reason);
  return ok;
}
const t0 = Date.now();
const c1 = await connect(socket, { name: 'fd-attacker' });
let registered = 0;
for (let round = 0; round < 40; round++) {
  const ok = await burst(c1, 100);
  registered += ok;
  if (ok < 100) break;
}
const c2 = await connect(socket, { name: 'fd-attacker-2nd' });
const secondConnection = await burst(c2, 50);
const c3 = await connect(socket, { name: 'fd-attacker-3rd' });
const thirdConnection = await burst(c3, 50);
console.log(JSON.stringify({ registered, secondConnection, thirdConnection, codes, ms: Date.now() - t0 }));
process.stdin.resume();
process.stdin.on('end', async () => {
  await Promise.all([c1.close(), c2.close(), c3.close()]);
  for (const b of keep) b.free();
  process.exit(0);
});
`;

interface AttackReport {
  registered: number;
  secondConnection: number;
  thirdConnection: number;
  codes: Record<string, number>;
  ms: number;
}

function startAttacker(socket: string): { proc: ChildProcess; report: Promise<AttackReport> } {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', ATTACKER], {
    env: { ...process.env, ATTACK_SOCKET: socket },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (c) => (err += c));
  const report = new Promise<AttackReport>((resolve, reject) => {
    proc.stdout!.on('data', (c) => {
      out += c;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as AttackReport);
    });
    proc.once('exit', (code) => reject(new Error(`attacker exited (${code}) before reporting: ${err}`)));
  });
  return { proc, report };
}

function stopAttacker(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  const gone = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.stdin!.end();
  const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  return gone.finally(() => clearTimeout(kill));
}

t.test('a client process that registers buffers until refused exhausts nothing of anyone else', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-buffers', String(MAX_BUFFERS), '--max-buffers-total', String(MAX_TOTAL)]);
  t.teardown(() => d.stop());
  const daemonPid = d.proc.pid!;
  const good = await startGoodClient(d.socket);
  t.teardown(() => good.stop());
  await until('the good client registered its buffers', async () => (await status(d.debugSocket)).registeredBuffers >= 2);
  const start = await status(d.debugSocket);
  const pids = start.ranks.map((r) => r.pid!);
  const rankFds = pids.map(fdCount);
  const daemonFds = await quietFdCount(daemonPid);
  const mapped = async () => (await debugJson<{ mapped: number }[]>(d.debugSocket, 'buffers')).map((s) => s.mapped);
  const baseMapped = await mapped();

  // The good client (this process) registers and releases fresh buffers the whole time.
  const fresh = { ok: 0, errors: {} as Record<string, number>, running: true };
  const churn = (async () => {
    while (fresh.running) {
      const b = [HostBuffer.alloc(4096), HostBuffer.alloc(4096)];
      b[0].view('f32').fill(1);
      b[1].view('f32').fill(2);
      try {
        await good.client.allReduce({ buffers: b, dtype: 'f32', op: 'sum', count: 1024, timeoutMs: 20_000 });
        if (b[0].view('f32')[1023] === 3) fresh.ok++;
        else fresh.errors.wrong = (fresh.errors.wrong ?? 0) + 1;
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'unknown';
        fresh.errors[code] = (fresh.errors[code] ?? 0) + 1;
      }
      await good.client.release(b).catch(() => {});
      b.forEach((x) => x.free());
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const stopChurn = async () => {
    fresh.running = false;
    await churn;
  };
  t.teardown(stopChurn);

  const a1 = startAttacker(d.socket);
  t.teardown(() => stopAttacker(a1.proc));
  const r1 = await a1.report;
  t.comment(`attacker 1: ${JSON.stringify(r1)}`);

  await t.test('one attacker process: refused at its own limit, on every connection', async (t) => {
    t.equal(r1.registered, MAX_BUFFERS, `it registered exactly --max-buffers (${MAX_BUFFERS})`);
    t.equal(r1.secondConnection, 0, 'a second connection from the same process registers nothing more');
    t.equal(r1.thirdConnection, 0, 'nor a third');
    t.same(Object.keys(r1.codes), [ErrorCodes.TOO_MANY_BUFFERS], `every refusal was TOO_MANY_BUFFERS (${JSON.stringify(r1.codes)})`);
    const m = await mapped();
    t.ok(m.every((n, r) => n >= baseMapped[r] + MAX_BUFFERS), `each rank maps its buffers (${m.join(', ')})`);
    const now = pids.map(fdCount);
    t.comment(`device process descriptors: ${rankFds.join(', ')} before, ${now.join(', ')} with ${MAX_BUFFERS} buffers mapped; daemon: ${daemonFds} before, ${fdCount(daemonPid)} now`);
    t.ok(now.every((n, r) => n <= rankFds[r] + 8), 'device processes did not gain a descriptor per buffer (mappings kept, descriptors closed)');
    t.ok(fdCount(daemonPid) >= daemonFds + MAX_BUFFERS, 'the daemon holds one descriptor per registered buffer');
    const okBefore = fresh.ok;
    await until('the good client registered more buffers meanwhile', () => fresh.ok >= okBefore + 5, 10_000);
    t.pass('the good client (another process) still registers new buffers and is served');
  });

  await t.test('a second attacker process fills the daemon-wide limit: new registrations are refused, never INTERNAL', async (t) => {
    // The churn stops first, so the pool's last free slots go to the attacker, not to it.
    await stopChurn();
    const a2 = startAttacker(d.socket);
    t.teardown(() => stopAttacker(a2.proc));
    const r2 = await a2.report;
    t.comment(`attacker 2: ${JSON.stringify(r2)}`);
    t.equal(r2.registered, MAX_TOTAL - MAX_BUFFERS - 2, `it got what the daemon-wide limit left (${r2.registered})`);
    t.same(Object.keys(r2.codes), [ErrorCodes.TOO_MANY_BUFFERS], 'every refusal was TOO_MANY_BUFFERS');
    const s = await status(d.debugSocket);
    t.equal(s.registeredBuffers, MAX_TOTAL, `the daemon holds --max-buffers-total (${s.registeredBuffers})`);
    const extra = HostBuffer.alloc(4096);
    t.teardown(() => extra.free());
    await t.rejects(good.client.register(extra), { code: ErrorCodes.TOO_MANY_BUFFERS }, "the good client's new registration is refused while the pool is full");
    // Collectives on buffers already registered keep running.
    const before = (await debugJson<{ collectives: number }>(d.debugSocket, 'stats')).collectives;
    await until('collectives still run', async () => (await debugJson<{ collectives: number }>(d.debugSocket, 'stats')).collectives > before + 20, 10_000);
    t.pass("the good client's collectives on its registered buffers still run");
    await stopAttacker(a2.proc);
    await until("attacker 2's buffers are released", async () => (await status(d.debugSocket)).registeredBuffers <= MAX_BUFFERS + 2, 10_000);
    const h = await good.client.register(extra);
    t.ok(h > 0, 'the pool is given back when the attacker goes away: the good client registers again');
    await good.client.release([extra]);
  });

  await stopAttacker(a1.proc);
  await until('the attackers\' buffers are all gone', async () => (await status(d.debugSocket)).registeredBuffers <= 4, 10_000);
  await stopChurn();
  const report = await good.stop();
  t.comment(`good client (fixed buffers): ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`);
  t.comment(`good client (fresh buffers each time): ${fresh.ok} ok, errors ${JSON.stringify(fresh.errors)}`);
  t.ok(report.ok > 10, 'the good client was served throughout');
  t.equal(report.wrong, 0, 'every result right');
  t.same(report.errors, {}, 'no error on its registered buffers');
  t.notOk(fresh.errors.wrong, 'every fresh-buffer result right');
  t.same(fresh.errors, {}, 'its fresh registrations (while only attacker 1 ran) all succeeded');
  t.ok(fresh.ok >= 10, 'and there were many');
  const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
  t.comment(`daemon errors by code: ${JSON.stringify(stats.errors)}`);
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'nothing got NCCLD_ERR_INTERNAL');
  t.notOk(stats.errors[ErrorCodes.RESOURCE_EXHAUSTED], 'nor RESOURCE_EXHAUSTED');
  const end = await status(d.debugSocket);
  t.equal(end.world.state, 'ready');
  t.equal(end.world.rebuilds, 0, 'no rebuild');
  t.same(end.ranks.map((r) => r.pid), pids, 'the same device processes');
  t.ok(pids.every(alive));
  await until('every mapping dropped once the clients were gone', async () => (await mapped()).every((n) => n === 0), 5_000);
  t.pass('every mapping dropped once the clients were gone');
  t.ok(pids.every((p, r) => fdCount(p) <= rankFds[r] + 2), 'device process descriptors back where they were');
  await until("the daemon's descriptors back to where they were", () => fdCount(daemonPid) <= daemonFds, 5_000).catch(() => {});
  t.ok(fdCount(daemonPid) <= daemonFds, `the daemon closed every buffer's descriptor (${fdCount(daemonPid)} open, ${daemonFds} at start)`);
});
