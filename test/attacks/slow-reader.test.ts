// Finding: "A client that never reads its replies grows the daemon by ~10 MB/s (3.8 GB in 6
// minutes) and starves everyone else; parked partial frames hold up to 1 MiB per connection; the
// in-flight limit was per connection, so a few dozen connections fill the global queue and every
// other client gets BUSY; one large release stalls the event loop for tens of ms."
//
// Each attack runs against a real daemon started with --reply-backlog-bytes 65536
// --slow-reader-ms 1000 --max-in-flight 32, from a child process (so the attacker's own work does
// not slow the well-behaved client, which runs in this process), while the daemon's RSS is
// sampled from /proc. Bounds asserted: the daemon's RSS grows by less than 64 MiB during any attack.
import t, { type Test } from 'tap';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { connect, ErrorCodes, HostBuffer } from '../../dist/client/index.js';
import { encodeFrame } from '../../dist/shared/framing.js';
import { runForReport } from '../helpers/child.js';
import { alive, debugCommand, ROOT, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient, type GoodReport } from '../helpers/good-client.js';
import { debugJson, rss, status } from '../helpers/inspect.js';
import { rawConnect } from '../helpers/raw.js';

const MiB = 1 << 20;
const RSS_BOUND = 64 * MiB;

/** Samples a process's RSS every 50 ms until stopped; the peak and the last sample. */
function sampleRss(pid: number) {
  let peak = rss(pid);
  let last = peak;
  const timer = setInterval(() => {
    try {
      last = rss(pid);
      peak = Math.max(peak, last);
    } catch {
      // gone
    }
  }, 50);
  return {
    stop: () => (clearInterval(timer), { peak, last }),
  };
}

const mb = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const signed = (b: number) => `${b < 0 ? '-' : '+'}${mb(Math.abs(b))}`;
const frameUrl = JSON.stringify(pathToFileURL(path.join(ROOT, 'dist/shared/framing.js')).href);
const clientUrl = JSON.stringify(pathToFileURL(path.join(ROOT, 'dist/client/index.js')).href);

/** Runs an attacker script (ESM source) as a child process; resolves with the JSON it prints last. */
function runAttacker<T>(source: string, env: Record<string, string>): Promise<T> {
  return runForReport<T>('attacker', ['--input-type=module', '-e', source], { env, timeoutMs: 60_000 });
}

/** Debug-socket round trips back to back, until stopped: how responsive the daemon's event loop stays. */
async function loopProbe(debugSocket: string) {
  const s = net.connect(debugSocket);
  s.setEncoding('utf8');
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  let buf = '';
  s.on('data', (c: string) => (buf += c));
  s.write('keepalive\n');
  let running = true;
  const rtts: number[] = [];
  const loop = (async () => {
    while (running) {
      const from = buf.length;
      const t0 = performance.now();
      s.write('help\n');
      while (!buf.slice(from).includes('\nOK\n')) await new Promise((r) => setImmediate(r));
      rtts.push(performance.now() - t0);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      s.destroy();
      rtts.sort((a, b) => a - b);
      return { p50: rtts[rtts.length >> 1] ?? NaN, max: rtts.at(-1) ?? NaN, count: rtts.length };
    },
  };
}

/** Good client's figures, for the closing note. */
const fmt = (r: GoodReport) => `${r.ok} ok, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, errors ${JSON.stringify(r.errors)}`;

/** A good client stopped by the test or, if the test failed before that, by its teardown. */
async function goodFor(t: Test, socket: string) {
  const g = await startGoodClient(socket);
  let report: Promise<GoodReport> | null = null;
  const stop = () => (report ??= g.stop());
  t.teardown(stop);
  return { client: g.client, stop };
}

/** Runs the good client alone for `ms`: what it sees with no attack. */
async function baseline(socket: string, ms: number): Promise<GoodReport> {
  const g = await startGoodClient(socket);
  await new Promise((r) => setTimeout(r, ms));
  return g.stop();
}

// (a) Never reads: sends requests that each get an error reply (allreduce naming buffers it never
// registered), as fast as the socket takes them, never reading a byte; reconnects when cut off.
const NEVER_READS = `
import net from 'node:net';
import { once } from 'node:events';
import { encodeFrame } from ${frameUrl};
const socket = process.env.ATTACK_SOCKET;
const stopAt = Date.now() + Number(process.env.ATTACK_MS);
const batch = [];
for (let i = 0; i < 512; i++) batch.push(encodeFrame({ type: 'allreduce', id: i, dtype: 'f32', op: 'sum', count: 1, buffers: [1000 + i, 2000 + i] }));
const burst = Buffer.concat(batch);
const hello = encodeFrame({ type: 'hello', protocol: 2, client: 'never-reads' });
const report = { connections: 0, disconnects: 0, bytesSent: 0, disconnectMs: [] };
while (Date.now() < stopAt) {
  const s = net.connect(socket);
  s.on('error', () => {});
  await once(s, 'connect');
  s.pause();
  report.connections++;
  const t0 = Date.now();
  let closed = false;
  const gone = new Promise((r) => s.once('close', r)).then(() => (closed = true));
  s.write(hello);
  while (!closed && Date.now() < stopAt) {
    report.bytesSent += burst.length;
    if (!s.write(burst)) await Promise.race([once(s, 'drain').catch(() => {}), gone, new Promise((r) => setTimeout(r, 200))]);
  }
  if (closed) {
    report.disconnects++;
    report.disconnectMs.push(Date.now() - t0);
  }
  s.destroy();
}
console.log(JSON.stringify(report));
`;

// (b) 50 connections of one process, each keeping 4 collectives in flight, retrying BUSY at once.
const MANY_CONNECTIONS = `
import { connect, HostBuffer } from ${clientUrl};
const socket = process.env.ATTACK_SOCKET;
const count = Number(process.env.ATTACK_COUNT);
const clients = await Promise.all(Array.from({ length: 50 }, (_, i) => connect(socket, { name: 'pipeliner-' + i })));
const report = { ok: 0, codes: {}, maxInFlight: 0 };
let inFlight = 0;
const slots = [];
for (const c of clients) {
  const bufs = [HostBuffer.alloc(count * 4), HostBuffer.alloc(count * 4)];
  await Promise.all(bufs.map((b) => c.register(b)));
  for (let k = 0; k < 4; k++) slots.push({ c, bufs });
}
console.error('attack starts');
const stopAt = Date.now() + Number(process.env.ATTACK_MS);
await Promise.all(slots.map(async ({ c, bufs }) => {
  while (Date.now() < stopAt) {
    inFlight++;
    report.maxInFlight = Math.max(report.maxInFlight, inFlight);
    try {
      await c.allReduce({ buffers: bufs, dtype: 'f32', op: 'sum', count, timeoutMs: 30000 });
      report.ok++;
    } catch (e) {
      report.codes[e.code] = (report.codes[e.code] ?? 0) + 1;
      await new Promise((r) => setImmediate(r));
    } finally {
      inFlight--;
    }
  }
}));
await Promise.all(clients.map((c) => c.close()));
console.log(JSON.stringify(report));
`;

t.test('clients that do not read, pipeline, or park half frames cannot grow the daemon or starve others', async (t) => {
  const d = await startDaemon([
    '--backend', 'host', '--ranks', '2',
    '--reply-backlog-bytes', '65536', '--slow-reader-ms', '1000', '--max-in-flight', '32',
  ]);
  t.teardown(() => d.stop());
  const daemonPid = d.proc.pid!;
  const pids = (await status(d.debugSocket)).ranks.map((r) => r.pid!);
  // Also warms the daemon up: its heap grows to its working size (~+60 MiB) in the first seconds
  // of load, attack or not; RSS is compared from there.
  const quiet = await baseline(d.socket, 4_000);
  t.comment(`good client alone, no attack (4 s, warming the daemon up): ${fmt(quiet)}; daemon RSS then ${mb(rss(daemonPid))}`);

  await t.test('(a) a client that never reads its replies is cut off; the daemon does not grow', async (t) => {
    const rss0 = rss(daemonPid);
    const sampler = sampleRss(daemonPid);
    const good = await goodFor(t, d.socket);
    const attack = await runAttacker<{ connections: number; disconnects: number; bytesSent: number; disconnectMs: number[] }>(NEVER_READS, {
      ATTACK_SOCKET: d.socket,
      ATTACK_MS: '5000',
    });
    const report = await good.stop();
    const { peak, last } = sampler.stop();
    const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
    t.comment(`attacker: ${attack.connections} connections, ${mb(attack.bytesSent)} of requests written, ${attack.disconnects} disconnects after ${attack.disconnectMs.join(', ')} ms`);
    t.comment(`daemon RSS: ${mb(rss0)} before, peak ${mb(peak)} (${signed(peak - rss0)}), ${mb(last)} at the end; SLOW_READER ${stats.errors[ErrorCodes.SLOW_READER] ?? 0}`);
    t.comment(`good client during the attack: ${fmt(report)}`);
    t.ok(attack.disconnects >= 1, 'the attacker was disconnected');
    t.ok(attack.disconnects >= attack.connections - 1, 'every connection of it but perhaps the last was cut off');
    t.ok(Math.max(...attack.disconnectMs) < 5_000, `each within seconds (slowest ${Math.max(...attack.disconnectMs)} ms)`);
    t.ok((stats.errors[ErrorCodes.SLOW_READER] ?? 0) >= attack.disconnects, 'stats count each as NCCLD_ERR_SLOW_READER');
    t.ok(peak - rss0 < RSS_BOUND, `daemon RSS grew by ${mb(peak - rss0)}, under ${mb(RSS_BOUND)}`);
    t.ok(report.ok >= 50, 'the good client was served throughout');
    t.equal(report.wrong, 0);
    t.same(report.errors, {});
    t.ok(report.p50 < Math.max(50, 20 * quiet.p50), `its p50 stayed reasonable (${report.p50.toFixed(2)} ms vs ${quiet.p50.toFixed(2)} ms alone)`);
  });

  await t.test('(b) 50 connections of one process: its unfinished requests are capped at 32, others keep fair turns', async (t) => {
    const count = 1 << 20; // 4 MiB per buffer: each collective takes the ranks a few ms
    // The cost of one collective of the attacker's size, alone.
    const solo = await connect(d.socket, { name: 'solo' });
    const sb = [HostBuffer.alloc(count * 4), HostBuffer.alloc(count * 4)];
    const soloMs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      await solo.allReduce({ buffers: sb, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
      soloMs.push(performance.now() - t0);
    }
    await solo.close();
    sb.forEach((b) => b.free());
    soloMs.sort((a, b) => a - b);
    const unit = soloMs[10];

    const rss0 = rss(daemonPid);
    const sampler = sampleRss(daemonPid);
    const attackDone = runAttacker<{ ok: number; codes: Record<string, number>; maxInFlight: number }>(MANY_CONNECTIONS, {
      ATTACK_SOCKET: d.socket,
      ATTACK_COUNT: String(count),
      ATTACK_MS: '5000',
    });
    // The good client joins once the attacker's collectives run.
    await until('the attack runs', async () => {
      const ops = await debugJson<{ inFlight: unknown[] }>(d.debugSocket, 'ops 0');
      return ops.inFlight.length >= 16;
    }, 30_000);
    const good = await goodFor(t, d.socket);
    // From the flight recorder: how long each collective waited for the ranks (queued to started).
    const waits = new Map<string, { name: string; wait: number }>();
    const limits: number[] = [];
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 250));
      const ops = await debugJson<{ recent: { client: number; clientName: string; requestId: number; queuedAt: number; startedAt: number | null }[] }>(d.debugSocket, 'ops 256');
      for (const o of ops.recent) if (o.startedAt !== null) waits.set(`${o.client}/${o.requestId}/${o.queuedAt}`, { name: o.clientName, wait: o.startedAt - o.queuedAt });
      const clients = await debugJson<{ pid: number; inFlight: number }[]>(d.debugSocket, 'clients');
      limits.push(clients.filter((c) => c.pid !== process.pid).reduce((n, c) => n + c.inFlight, 0));
    }
    const report = await good.stop();
    const median = (xs: number[]) => (xs.sort((a, b) => a - b), xs[Math.floor(xs.length / 2)] ?? NaN);
    const goodWaits = [...waits.values()].filter((w) => w.name === 'good-client').map((w) => w.wait);
    const attackWaits = [...waits.values()].filter((w) => w.name.startsWith('pipeliner')).map((w) => w.wait);
    const goodWait = median(goodWaits);
    const attackWait = median(attackWaits);
    const attack = await attackDone;
    const { peak } = sampler.stop();
    t.comment(`one collective of ${mb(count * 4)} per rank, alone: p50 ${unit.toFixed(2)} ms`);
    t.comment(`attacker (50 connections × 4 pipelined): ${attack.ok} ok, ${JSON.stringify(attack.codes)}; its unfinished requests seen by the daemon: ${limits.join(', ')}`);
    t.comment(`good client during the attack: ${fmt(report)}; daemon RSS ${signed(peak - rss0)}`);
    t.comment(`waits for the ranks (flight recorder): good client median ${goodWait} ms over ${goodWaits.length}, attacker median ${attackWait} ms over ${attackWaits.length}`);
    t.ok((attack.codes[ErrorCodes.BUSY] ?? 0) > 0, 'the attacker got BUSY for requests past its 32');
    t.same(Object.keys(attack.codes).filter((c) => c !== ErrorCodes.BUSY), [], 'and no other error');
    t.ok(attack.ok > 0, 'its admitted requests ran');
    t.ok(limits.every((n) => n <= 32), `its requests in flight never exceeded 32 over all its connections (${Math.max(...limits)})`);
    t.ok(report.ok >= 20, 'the good client was served');
    t.notOk(report.errors[ErrorCodes.BUSY], 'it never got BUSY');
    t.same(report.errors, {});
    t.equal(report.wrong, 0);
    // Fair turns: the good client's collective waits for the one on the ranks and perhaps the
    // attacker's next, not for the ~31 the attacker keeps queued (which is what the attacker waits).
    t.ok(goodWaits.length >= 10 && attackWaits.length >= 10, 'the flight recorder saw both');
    t.ok(goodWait * 4 <= attackWait, `the good client waited far less for its turn (${goodWait} ms) than the attacker's queue (${attackWait} ms)`);
    t.ok(report.p50 < 250, `its p50 stayed reasonable (${report.p50.toFixed(2)} ms)`);
    t.ok(peak - rss0 < RSS_BOUND, `daemon RSS grew by ${mb(peak - rss0)}`);
  });

  await t.test('(c) many connections parking half a frame each, or trickling one a byte per write: memory bounded, others served', async (t) => {
    const conns = 250;
    const tricklers = 200;
    const length = 60 << 10;
    const rss0 = rss(daemonPid);
    const sampler = sampleRss(daemonPid);
    const good = await goodFor(t, d.socket);
    const sockets: net.Socket[] = [];
    t.teardown(() => sockets.forEach((s) => s.destroy()));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(length);
    const half = Buffer.alloc(length / 2, 0x91);
    for (let i = 0; i < conns; i++) {
      const c = await rawConnect(d.socket);
      sockets.push(c.socket);
      c.sendMessage({ type: 'hello', protocol: 2, client: `half-${i}` });
      c.send(Buffer.concat([head, half]));
    }
    await new Promise((r) => setTimeout(r, 300));
    const parked = rss(daemonPid);
    // Each trickler sends its frame a byte at a time, one write per millisecond or so: each byte
    // reaches the daemon in a read of its own.
    const trickle: net.Socket[] = [];
    for (let i = 0; i < tricklers; i++) {
      const c = await rawConnect(d.socket);
      sockets.push(c.socket);
      trickle.push(c.socket);
      c.sendMessage({ type: 'hello', protocol: 2, client: `trickle-${i}` });
      c.send(head);
    }
    const stopAt = Date.now() + 4_000;
    let trickled = 0;
    const one = Buffer.from([0x91]);
    while (Date.now() < stopAt && trickled < 3_000) {
      for (const s of trickle) s.write(one);
      trickled++;
      await new Promise((r) => setTimeout(r, 1));
    }
    await new Promise((r) => setTimeout(r, 300));
    const during = rss(daemonPid);
    const report = await good.stop();
    const clients = await debugJson<unknown[]>(d.debugSocket, 'clients');
    sockets.forEach((s) => s.destroy());
    await until('the half-frame connections are gone', async () => (await debugJson<unknown[]>(d.debugSocket, 'clients')).length === 0, 10_000).catch(async (err) => {
      t.comment(await debugCommand(d.debugSocket, 'clients'));
      throw err;
    });
    const { peak } = sampler.stop();
    t.comment(`${conns} connections × ${length / 2} bytes of a ${length}-byte frame (${mb(conns * length / 2)} parked): daemon RSS ${signed(parked - rss0)}`);
    t.comment(`then ${tricklers} connections × ${trickled} bytes, one byte per write (${mb(tricklers * trickled)} more parked, in ${tricklers * trickled} writes)`);
    t.comment(`daemon RSS: ${mb(rss0)} before, ${mb(during)} with all parked (${signed(during - rss0)}), peak ${signed(peak - rss0)}, ${mb(rss(daemonPid))} after they left`);
    t.comment(`good client meanwhile: ${fmt(report)}`);
    t.ok(clients.length >= conns + tricklers, `the daemon held all ${conns + tricklers} connections`);
    t.ok(trickled >= 1_000, `each trickler sent ${trickled} bytes`);
    t.ok(peak - rss0 < RSS_BOUND, `daemon RSS grew by ${mb(peak - rss0)}, under ${mb(RSS_BOUND)}`);
    t.ok(report.ok >= 20, 'the good client was served');
    t.same(report.errors, {});
    t.equal(report.wrong, 0);
  });

  await t.test('(d) a release of 1025 buffers is refused; a frame over 64 KiB closes the connection', async (t) => {
    const c = await connect(d.socket, { name: 'releaser' });
    t.teardown(() => c.close());
    const ids = Array.from({ length: 1025 }, (_, i) => i + 1);
    await t.rejects(c.request({ type: 'release', buffers: ids }), { code: ErrorCodes.BAD_REQUEST, message: /1024/ }, 'release naming 1025 buffers');
    await t.rejects(c.request({ type: 'release', buffers: ids.slice(0, 1024) }), { code: ErrorCodes.NO_SUCH_BUFFER }, '1024 is within the limit (none of them registered here)');

    // The largest release allowed, of buffers really registered, while the good client runs.
    const bufs = Array.from({ length: 1024 }, () => HostBuffer.alloc(4096));
    t.teardown(() => bufs.forEach((b) => b.free()));
    // Thirty at a time: this process may have 32 requests unfinished.
    const numbers: number[] = [];
    for (let i = 0; i < bufs.length; i += 30) numbers.push(...(await Promise.all(bufs.slice(i, i + 30).map((b) => c.register(b)))));
    const good = await goodFor(t, d.socket);
    await new Promise((r) => setTimeout(r, 200));
    // How long the daemon's event loop is busy: debug-socket round trips back to back meanwhile.
    const probe = await loopProbe(d.debugSocket);
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    await c.release(numbers);
    const releaseMs = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 200));
    const rtt = await probe.stop();
    const report = await good.stop();
    // The good client's own buffers go once the daemon has seen its connection close.
    await until('every mapping went', async () => (await debugJson<{ mapped: number }[]>(d.debugSocket, 'buffers')).every((m) => m.mapped === 0), 5_000).catch(() => {});
    const mapped = await debugJson<{ mapped: number }[]>(d.debugSocket, 'buffers');
    t.comment(`release of 1024 registered buffers answered in ${releaseMs.toFixed(1)} ms (the reply waits for every rank to unmap them)`);
    t.comment(`debug socket round trips meanwhile: p50 ${rtt.p50.toFixed(2)} ms, max ${rtt.max.toFixed(2)} ms (the longest the daemon's event loop was held)`);
    t.comment(`good client around it: ${fmt(report)}, slowest ${Math.max(...report.latencies).toFixed(1)} ms`);
    t.ok(releaseMs < 500, 'the release was answered promptly');
    t.ok(rtt.max < 100, `the daemon's event loop was never held 100 ms (longest round trip ${rtt.max.toFixed(1)} ms)`);
    t.same(report.errors, {});
    t.equal(report.wrong, 0);
    t.ok(mapped.every((m) => m.mapped === 0), 'and every mapping went');

    const raw = await rawConnect(d.socket);
    raw.sendMessage({ type: 'hello', protocol: 2 });
    await raw.next((m) => m.type === 'hello');
    const big = encodeFrame({ type: 'release', id: 1, buffers: Array.from({ length: 20_000 }, (_, i) => i + 100_000) });
    t.ok(big.length > 65536 + 4, `a frame of ${big.length} bytes`);
    raw.send(big);
    t.match(await raw.next((m) => m.type === 'error'), { code: ErrorCodes.FRAME_TOO_LARGE, id: null });
    await raw.closed;
    t.pass('the daemon closed the connection');
  });

  const end = await status(d.debugSocket);
  t.equal(end.world.state, 'ready', 'the world is ready');
  t.equal(end.world.rebuilds, 0, 'and was never rebuilt');
  t.same(end.ranks.map((r) => r.pid), pids, 'with its first device processes');
  t.ok(pids.every(alive));
  const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
  t.comment(`daemon errors by code: ${JSON.stringify(stats.errors)}`);
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'no INTERNAL error');
});
