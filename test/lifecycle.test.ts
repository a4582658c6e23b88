// Starting, inspecting and stopping the daemon as an operator would.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { connect } from '../dist/client/index.js';
import { NCCLD, alive, debugCommand, devicePids, startDaemon, until } from './helpers/daemon.js';
import { allocFilled, check } from './helpers/buffers.js';


t.test('status on the debug socket lists every rank with its pid', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const out = await debugCommand(d.debugSocket, 'status');
  t.match(out, /backend: host/);
  t.match(out, /world: ready, 4 ranks/);
  t.match(out, /requests: 0 served/);
  t.match(out, /\nOK\n$/);
  const pids = await devicePids(d.debugSocket);
  t.equal(pids.length, 4);
  for (const pid of pids) t.ok(alive(pid), `device process ${pid} is alive`);
  t.equal(new Set(pids).size, 4, 'four distinct processes');
  const help = await debugCommand(d.debugSocket, 'help', 'bogus', 'status');
  t.match(help, /commands:[\s\S]*OK\nERROR: unknown command "bogus"; try help\nnccld/, 'unknown command answered with ERROR, connection still usable');
  const long = await debugCommand(d.debugSocket, 'x'.repeat(10_000), 'help');
  t.match(long, /^ERROR: line longer than 4096 bytes\ncommands:/);
});

t.test('the world is ready only after every rank said so', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '3']);
  t.teardown(() => d.stop());
  const readyIdx = d.logs.findIndex((l) => l.msg === 'world ready');
  const rankReady = d.logs.map((l, i) => (l.msg === 'device process ready' ? i : -1)).filter((i) => i >= 0);
  t.equal(rankReady.length, 3, 'three device processes reported ready');
  t.ok(rankReady.every((i) => i < readyIdx), 'before the world was declared ready');
  for (const l of d.logs) t.equal(typeof l.level, 'number', 'every log line is pino JSON');
});

t.test('--backend auto says which backend it chose and why', async (t) => {
  const { gpuUnavailableReason } = await import('../dist/daemon/backend-select.js');
  const reason = gpuUnavailableReason();
  const d = await startDaemon(['--ranks', '2'], { timeoutMs: 120_000 });
  t.teardown(() => d.stop());
  const line = d.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('backend:'));
  t.ok(line, 'a log line names the backend');
  if (reason === null) {
    t.equal(line!.backend, 'nccl', 'GPUs and NCCL are here: nccl');
  } else {
    t.equal(line!.backend, 'host', 'no GPU backend here: host');
    t.match(line!.note, `GPU backend unavailable: ${reason}`, 'and the log says why');
  }
});

t.test('SIGTERM: in-flight requests finish, device processes stop, sockets are removed, exit 0', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  const pids = await devicePids(d.debugSocket);
  const client = await connect(d.socket);
  const runs = Array.from({ length: 30 }, (_, i) => allocFilled(2, 'f32', 'sum', 1 << 20, i));
  // Registered first, so all 30 collectives are sent (and accepted) before the SIGTERM.
  await Promise.all(runs.flatMap((r) => r.buffers.map((b) => client.register(b))));
  const replies = runs.map((r) => client.allReduce({ buffers: r.buffers, dtype: 'f32', op: 'sum', count: 1 << 20 }));
  t.equal(client.requestsInFlight, 30, 'all 30 sent');
  await replies[0];
  d.proc.kill('SIGTERM');
  const settled = await Promise.allSettled(replies);
  const ok = settled.filter((s) => s.status === 'fulfilled').length;
  t.equal(ok, 30, 'every accepted request was finished and answered');
  runs.forEach((r) => t.equal(check(r.buffers, r.inputs, 'f32', 'sum', 1 << 20).mismatches, 0));
  const { code } = await d.exited;
  t.equal(code, 0, 'exit code 0');
  t.notOk(existsSync(d.socket), 'API socket removed');
  t.notOk(existsSync(d.debugSocket), 'debug socket removed');
  for (const pid of pids) t.notOk(alive(pid), `device process ${pid} is gone`);
  await client.close();
  for (const r of runs) for (const b of r.buffers) b.free();
  await d.stop();
});

t.test('a stale socket file is replaced; a live daemon is not', async (t) => {
  const d1 = await startDaemon(['--backend', 'host', '--ranks', '2']);
  const pids = await devicePids(d1.debugSocket);
  // SIGKILL leaves the socket files behind, as any crash would.
  d1.proc.kill('SIGKILL');
  await d1.exited;
  t.teardown(() => rmSync(d1.dir, { recursive: true, force: true }));
  t.ok(existsSync(d1.socket), 'the dead daemon left its socket file');
  await until('its device processes to follow it', () => !pids.some(alive), 5000).catch(() => {});
  t.notOk(pids.some(alive), 'its device processes followed it within seconds');

  const d2 = await startDaemon(['--backend', 'host', '--ranks', '1'], { paths: { socket: d1.socket, debugSocket: d1.debugSocket } });
  t.teardown(() => d2.stop());
  const c = await connect(d2.socket);
  t.equal(c.worldSize, 1, 'a new daemon took over the stale path');
  await c.close();

  const r = spawnSync(process.execPath, [NCCLD, '--backend', 'host', '--ranks', '1', '--socket', d2.socket, '--debug-socket', d2.debugSocket + '2'], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  t.equal(r.status, 1, 'a third daemon on the live socket exits 1');
  t.match(r.stdout, /already listening/);
  t.ok(existsSync(d2.socket), 'and leaves the live socket alone');
});

t.test('settings come from flags, then NCCLD_* variables, then the config file; bad ones are named', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'nccld.json');
  writeFileSync(file, JSON.stringify({ backend: 'host', ranks: 3, timeoutMs: 7000, logLevel: 'warn' }));
  const { parseConfig } = await import('../dist/daemon/config.js');
  const fromFile = parseConfig(['--config', file], {});
  t.match(fromFile, { backend: 'host', ranks: 3, timeoutMs: 7000, logLevel: 'warn', configFile: file });
  const envWins = parseConfig(['--config', file], { NCCLD_RANKS: '5', NCCLD_ENABLE_FAULT_INJECTION: 'true' });
  t.match(envWins, { ranks: 5, timeoutMs: 7000, faultInjection: true }, 'the environment beats the file');
  const flagWins = parseConfig(['--config', file, '--ranks', '6'], { NCCLD_RANKS: '5' }) as { ranks: number };
  t.equal(flagWins.ranks, 6, 'a flag beats both');
  t.equal((parseConfig([], { NCCLD_CONFIG: file }) as { ranks: number }).ranks, 3, 'NCCLD_CONFIG names the file');
  writeFileSync(file, JSON.stringify({ ranks: 'many' }));
  t.throws(() => parseConfig(['--config', file], {}), { message: `ranks in ${file}: must be an integer from 1 to 1024, not "many"` });
  writeFileSync(file, JSON.stringify({ rank: 2 }));
  t.throws(() => parseConfig(['--config', file], {}), { message: /unknown setting "rank"/ });
  writeFileSync(file, '{ not json');
  t.throws(() => parseConfig(['--config', file], {}), { message: /config file .*nccld.json: .*JSON/ });
  const r = spawnSync(process.execPath, [NCCLD, '--backend', 'host'], { encoding: 'utf8', timeout: 10_000, env: { ...process.env, NCCLD_MAX_QUEUED: '-3' } });
  t.equal(r.status, 2, 'a bad environment variable stops start-up');
  t.match(r.stderr, /NCCLD_MAX_QUEUED: must be an integer/);
});

t.test('bad flags stop start-up with a message naming them', async (t) => {
  for (const [args, re] of [
    [['--ranks', '0'], /--ranks: must be an integer from 1 to 1024, not "0"/],
    [['--backend', 'tpu'], /--backend: must be one of auto, host, nccl, not "tpu"/],
    [['--bogus'], /Unknown option '--bogus'/],
    [['--log-level', 'loud'], /--log-level: must be one of/],
    [['--timeout-ms', '5000', '--max-timeout-ms', '1000'], /timeout-ms \(5000\) must not be over max-timeout-ms \(1000\)/],
    [['--config', '/nonexistent.json'], /config file \/nonexistent.json does not exist/],
    [['--hang-timeout-ms', '10'], /--hang-timeout-ms: must be an integer from 100 to 86400000, not "10"/],
  ] as [string[], RegExp][]) {
    const r = spawnSync(process.execPath, [NCCLD, ...args], { encoding: 'utf8', timeout: 10_000 });
    t.equal(r.status, 2, `${args.join(' ')} exits 2`);
    t.match(r.stderr, re);
  }
  const help = spawnSync(process.execPath, [NCCLD, '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  t.match(help.stdout, /--backend VALUE +auto picks nccl/);
  t.match(help.stdout, /Precedence: command line, then environment, then config file, then defaults/);
});

t.test('--backend nccl without a GPU fails with the reason and a non-zero exit', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-nogpu-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const probe = await import('../dist/daemon/backend-select.js');
  const reason = probe.gpuUnavailableReason();
  if (reason === null) return t.skip('a GPU backend is available here; this case is for machines without one', () => {});
  const r = spawnSync(process.execPath, [NCCLD, '--backend', 'nccl', '--socket', path.join(dir, 'a'), '--debug-socket', path.join(dir, 'd')], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  t.equal(r.status, 1);
  t.match(r.stdout, /nccl backend is unavailable/);
});

t.test('the debug socket closes a one-shot connection that never half-closes (OpenBSD nc), and keeps an interactive one', async (t) => {
  const net = await import('node:net');
  const d = await startDaemon(['--backend', 'host', '--ranks', '1']);
  t.teardown(() => d.stop());
  const session = (lines: string[], gapMs: number) =>
    new Promise<{ out: string; ms: number }>((resolve) => {
      const t0 = Date.now();
      const s = net.connect(d.debugSocket);
      let out = '';
      s.setEncoding('utf8');
      s.on('data', (c: string) => (out += c));
      s.on('close', () => resolve({ out, ms: Date.now() - t0 }));
      s.on('connect', async () => {
        for (const l of lines) {
          s.write(`${l}\n`); // never s.end(): like nc without -N
          await new Promise((r) => setTimeout(r, gapMs));
        }
      });
    });
  const oneShot = await session(['status'], 0);
  t.match(oneShot.out, /world: ready[\s\S]*OK\n$/);
  t.ok(oneShot.ms < 3000, `closed by the daemon after the reply (${oneShot.ms} ms)`);
  const interactive = await session(['keepalive', 'help', 'status', 'quit'], 700);
  t.match(interactive.out, /stays open until quit[\s\S]*commands:[\s\S]*world: ready[\s\S]*OK\nOK\n$/, 'commands 700 ms apart all answered');
});
