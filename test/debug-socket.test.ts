// Every debug command over a real socket, as text and as JSON.
import t from 'tap';
import { connect } from '../dist/client/index.js';
import { debugCommand, startDaemon, until } from './helpers/daemon.js';
import { allocFilled, checkedAllReduce } from './helpers/buffers.js';

t.test('debug commands', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--enable-fault-injection']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket, { name: 'dbg-test' });
  t.teardown(() => client.close());
  for (let i = 0; i < 5; i++) await checkedAllReduce(client, 'f32', 'sum', 1000 * (i + 1), i);
  await client.request({ type: 'allreduce', dtype: 'f8', op: 'sum', count: 1, buffers: [{ shm: 'x' }, { shm: 'y' }] }).catch(() => {});

  const text = await debugCommand(d.debugSocket, 'ranks', 'clients', 'ops 3', 'stats', 'buffers', 'log-level debug', 'nonsense', 'ops x');
  t.match(text, /rank +pid +device +state +generation +collectives +in-flight +last error\n0 +\d+ +host +ready +1 +5 +0 +-\n1 /, 'ranks');
  t.match(text, /client +name +pid +uid[\s\S]*\n1 +dbg-test +\d+ +0 +0 +10 +5 +\d+s\n/, 'clients: peer pid and uid, in flight, buffers named, served');
  t.match(text, /in flight: 0\n[\s\S]*last 3 finished:\n.*\n3 +1\/\d+ +allreduce f32 sum +12000 +done +0:done 1:done +queued /, 'ops: the flight recorder');
  t.match(text, /collectives: 5 completed, 0 failed; 60000 bytes reduced/, 'stats: counts and bytes');
  t.match(text, /errors by code: NCCLD_ERR_BAD_DTYPE 1/, 'stats: errors by code');
  t.match(text, /size +count +p50 ms +p90 ms +p99 ms +algbw GB\/s +busbw GB\/s\n≤64KiB +5 +[\d.]+/, 'stats: latency and bandwidth by size');
  t.match(text, /rank 0: mapped 10\n/, 'buffers');
  t.match(text, /log level: debug\nOK\n/, 'log-level');
  t.match(text, /ERROR: unknown command "nonsense"; try help\n/);
  t.match(text, /ERROR: usage: ops \[N\]/);
  t.equal(text.match(/^(OK|ERROR: .*)$/gm)!.length, 8, 'every reply ends with OK or ERROR');

  const json = await debugCommand(d.debugSocket, 'format json', 'status', 'ranks', 'clients', 'ops', 'stats', 'help', 'bogus', 'format text', 'help');
  const lines = json.trim().split('\n');
  const docs = lines.slice(0, 8).map((l) => JSON.parse(l));
  t.same(docs.map((x) => x.ok), [true, true, true, true, true, true, true, false], 'one JSON document per reply');
  t.match(docs[1].result, { backend: 'host', world: { state: 'ready', size: 2, generation: 1 }, requests: { served: 5 } });
  t.match(docs[2].result, [{ rank: 0, state: 'ready', collectivesDone: 5 }, { rank: 1 }]);
  t.match(docs[3].result, [{ name: 'dbg-test', buffers: 10 }]);
  t.match(docs[4].result, { inFlight: [], recent: [{ seq: 1, state: 'done', ranks: ['done', 'done'] }] });
  t.match(docs[5].result, { collectives: 5, errors: { NCCLD_ERR_BAD_DTYPE: 1 } });
  t.match(docs[7], { ok: false, error: /unknown command "bogus"/ });
  t.match(lines.slice(8).join('\n'), /^format: text\nOK\ncommands:\n/, 'format text switches back');
});

t.test('ops shows a stuck collective and the rank that has not finished', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '3', '--enable-fault-injection']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  await debugCommand(d.debugSocket, 'inject 2 hang');
  const { buffers } = allocFilled(3, 'f32', 'sum', 4096, 1);
  t.teardown(() => buffers.forEach((b) => b.free()));
  const stuck = client.allReduce({ buffers, dtype: 'f32', op: 'sum', count: 4096, timeoutMs: 4000 }).catch((e) => e);
  let ops = '';
  await until('the collective to show as running', async () => /in flight: 1/.test((ops = await debugCommand(d.debugSocket, 'ops'))));
  await until('ranks 0 and 1 to finish their part', async () => /0:done 1:done 2:pending/.test((ops = await debugCommand(d.debugSocket, 'ops'))));
  t.match(ops, /in flight: 1\n.*\n1 +1\/\d+ +allreduce f32 sum +16384 +running +0:done 1:done 2:pending +queued .*, started \+\d+ ms/, 'rank 2 has not finished');
  const json = JSON.parse((await debugCommand(d.debugSocket, 'format json', 'ops')).trim().split('\n')[1]);
  t.match(json.result.inFlight, [{ seq: 1, state: 'running', ranks: ['done', 'done', 'pending'] }]);
  t.match(await stuck, { code: 'NCCLD_ERR_TIMEOUT', details: { ranks: [2] } });
  t.match(await debugCommand(d.debugSocket, 'ops'), /in flight: 0\n[\s\S]*1 +1\/\d+ +allreduce f32 sum +16384 +failed +0:done 1:done 2:(pending|failed) .*NCCLD_ERR_TIMEOUT/);
});
