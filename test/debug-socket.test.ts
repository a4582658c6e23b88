// Every debug command over a real socket, as text and as JSON.
import t from 'tap';
import { connect, HostBuffer } from '../dist/client/index.js';
import { debugCommand, startDaemon, until } from './helpers/daemon.js';
import { allocFilled, checkedAllReduce } from './helpers/buffers.js';

t.test('debug commands', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket, { name: 'dbg-test' });
  t.teardown(() => client.close());
  for (let i = 0; i < 5; i++) await checkedAllReduce(client, 'f32', 'sum', 1000 * (i + 1), i);
  await client.request({ type: 'allreduce', dtype: 'f8', op: 'sum', count: 1, buffers: [1, 2] }).catch(() => {});
  // checkedAllReduce releases its buffers; these three stay registered.
  const kept = [HostBuffer.alloc(4096), HostBuffer.alloc(4096), HostBuffer.alloc(8192)];
  t.teardown(() => kept.forEach((b) => b.free()));
  for (const b of kept) await client.register(b);

  const text = await debugCommand(d.debugSocket, 'ranks', 'clients', 'ops 3', 'stats', 'buffers', 'log-level debug', 'nonsense', 'ops x');
  t.match(text, /rank +pid +device +state +generation +collectives +in-flight +last error\n0 +\d+ +host +ready +1 +5 +0 +-\n1 /, 'ranks');
  t.match(text, new RegExp(`client +name +pid +uid[\\s\\S]*\\n1 +dbg-test +${process.pid} +${process.getuid!()} +0 +3 +5 +\\d+s\\n`), 'clients: peer pid and uid, in flight, buffers registered, served');
  t.match(text, /in flight: 0\n[\s\S]*last 3 finished:\n.*\n3 +1\/\d+ +allreduce f32 sum +12000 +done +0:done 1:done +queued /, 'ops: the flight recorder');
  t.match(text, /collectives: 5 completed, 0 failed; 60000 bytes reduced/, 'stats: counts and bytes');
  t.match(text, /errors by code: NCCLD_ERR_BAD_DTYPE 1/, 'stats: errors by code');
  t.match(text, /size +count +p50 ms +p90 ms +p99 ms +algbw GB\/s +busbw GB\/s\n≤64KiB +5 +[\d.]+/, 'stats: latency and bandwidth by size');
  t.match(text, /rank 0: mapped 3\nrank 1: mapped 3\n/, 'buffers: what each rank maps');
  t.match(text, /log level: debug\nOK\n/, 'log-level');
  t.match(text, /ERROR: unknown command "nonsense"; try help\n/);
  t.match(text, /ERROR: usage: ops \[N\]/);
  t.equal(text.match(/^(OK|ERROR: .*)$/gm)!.length, 8, 'every reply ends with OK or ERROR');

  const json = await debugCommand(d.debugSocket, 'format json', 'status', 'ranks', 'clients', 'ops', 'stats', 'help', 'bogus', 'format text', 'help');
  const lines = json.trim().split('\n');
  const docs = lines.slice(0, 8).map((l) => JSON.parse(l));
  t.same(docs.map((x) => x.ok), [true, true, true, true, true, true, true, false], 'one JSON document per reply');
  t.match(docs[1].result, { backend: 'host', world: { state: 'ready', size: 2, generation: 1 }, requests: { served: 5 }, registeredBuffers: 3 });
  t.match(docs[2].result, [{ rank: 0, state: 'ready', collectivesDone: 5 }, { rank: 1 }]);
  t.match(docs[3].result, [{ name: 'dbg-test', pid: process.pid, buffers: 3 }]);
  t.match(docs[4].result, { inFlight: [], recent: [{ seq: 1, state: 'done', ranks: ['done', 'done'] }] });
  t.match(docs[5].result, { collectives: 5, errors: { NCCLD_ERR_BAD_DTYPE: 1 } });
  t.match(docs[7], { ok: false, error: /unknown command "bogus"/ });
  t.match(lines.slice(8).join('\n'), /^format: text\nOK\ncommands:\n/, 'format text switches back');
});

t.test('ops shows a stuck collective and the rank that has not finished', async (t) => {
  // The client's deadline ends only the client's wait; the hang watchdog ends the collective.
  const d = await startDaemon(['--backend', 'host', '--ranks', '3', '--enable-fault-injection', '--hang-timeout-ms', '4000']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  await debugCommand(d.debugSocket, 'inject 2 hang');
  const { buffers } = allocFilled(3, 'f32', 'sum', 4096, 1);
  t.teardown(() => buffers.forEach((b) => b.free()));
  const stuck = client.allReduce({ buffers, dtype: 'f32', op: 'sum', count: 4096, timeoutMs: 1000 }).catch((e) => e);
  let ops = '';
  await until('the collective to show as running', async () => /in flight: 1/.test((ops = await debugCommand(d.debugSocket, 'ops'))));
  await until('ranks 0 and 1 to finish their part', async () => /0:done 1:done 2:pending/.test((ops = await debugCommand(d.debugSocket, 'ops'))));
  t.match(ops, /in flight: 1\n.*\n1 +1\/\d+ +allreduce f32 sum +16384 +running +0:done 1:done 2:pending +queued .*, started \+\d+ ms/, 'rank 2 has not finished');
  const json = JSON.parse((await debugCommand(d.debugSocket, 'format json', 'ops')).trim().split('\n')[1]);
  t.match(json.result.inFlight, [{ seq: 1, state: 'running', ranks: ['done', 'done', 'pending'] }]);
  t.match(await stuck, { code: 'NCCLD_ERR_TIMEOUT', message: /still runs to its end/, details: { seq: 1 } }, 'the client is answered at its deadline');
  t.match(await debugCommand(d.debugSocket, 'ops'), /in flight: 1\n.*\n1 +1\/\d+ +allreduce f32 sum +16384 +running +0:done 1:done 2:pending/, 'and the collective still shows, running, after it');
  await until('the hang watchdog to end it', async () => /in flight: 0/.test((ops = await debugCommand(d.debugSocket, 'ops'))), 15_000);
  t.match(ops, /in flight: 0\n[\s\S]*1 +1\/\d+ +allreduce f32 sum +16384 +failed +0:done 1:done 2:(pending|failed) .*NCCLD_ERR_TIMEOUT: collective seq 1 had not finished on rank 2 after the hang threshold/);
  const recent = JSON.parse((await debugCommand(d.debugSocket, 'format json', 'ops')).trim().split('\n')[1]).result.recent;
  t.match(recent, [{ seq: 1, state: 'failed', ranks: ['done', 'done', /pending|failed/] }]);
});
