// A client that disconnects with requests in flight disturbs no one, and the device processes
// unmap every buffer it had registered (seen in /proc/<pid>/maps, not taken on trust).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { connect } from '../dist/client/index.js';
import { debugCommand, devicePids, startDaemon, until } from './helpers/daemon.js';
import { allocFilled, checkedAllReduce } from './helpers/buffers.js';

/** Which of these HostBuffers (memfds, named at creation) a process maps now. */
function mappedNames(pid: number, names: string[]): string[] {
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
  return names.filter((n) => maps.includes(`/memfd:${n} (deleted)`));
}


t.test('a client that vanishes mid-request', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '3']);
  t.teardown(() => d.stop());
  const pids = await devicePids(d.debugSocket);
  t.equal(pids.length, 3);
  const bystander = await connect(d.socket);
  t.teardown(() => bystander.close());

  const leaver = await connect(d.socket, { name: 'leaver' });
  const runs = Array.from({ length: 60 }, (_, i) => allocFilled(3, 'f32', 'sum', 1 << 18, i));
  const names = runs.flatMap((r) => r.buffers.map((b) => b.name));
  // Registered first, so all 60 collectives go out at once.
  await Promise.all(runs.flatMap((r) => r.buffers.map((b) => leaver.register(b))));
  t.ok(pids.every((p) => mappedNames(p, names).length === names.length), 'every rank maps every registered buffer');
  const replies = runs.map((r) => leaver.allReduce({ buffers: r.buffers, dtype: 'f32', op: 'sum', count: 1 << 18 }));
  // Let the first few start, so some are running and the rest queued, then vanish.
  await replies[0];
  (leaver as unknown as { conn: { close(): void } }).conn.close();
  const settled = await Promise.allSettled(replies);
  t.ok(
    settled.every((s) => s.status === 'fulfilled' || (s.reason as { code: string }).code === 'NCCLD_ERR_CONNECTION_CLOSED'),
    'every pending promise settled: a result or CONNECTION_CLOSED',
  );

  // The bystander is served throughout.
  for (let i = 0; i < 5; i++) t.equal((await checkedAllReduce(bystander, 'f64', 'sum', 5000, i)).mismatches, 0);

  await until('every rank to unmap the leaver\'s buffers', () => pids.every((p) => mappedNames(p, names).length === 0));
  t.pass('no device process maps any of the leaver\'s buffers');
  t.match(await debugCommand(d.debugSocket, 'status'), /buffers registered: 0\n/, 'and the daemon holds none of them');
  for (const r of runs) for (const b of r.buffers) b.free();
});

t.test('release drops the mappings of the buffers named, and only those', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const pids = await devicePids(d.debugSocket);
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const a = allocFilled(2, 'f32', 'sum', 1024, 1);
  const b = allocFilled(2, 'f32', 'sum', 1024, 2);
  await client.allReduce({ buffers: a.buffers, dtype: 'f32', op: 'sum', count: 1024 });
  await client.allReduce({ buffers: b.buffers, dtype: 'f32', op: 'sum', count: 1024 });
  const aNames = a.buffers.map((x) => x.name);
  const bNames = b.buffers.map((x) => x.name);
  t.same(mappedNames(pids[1], [...aNames, ...bNames]).sort(), [...aNames, ...bNames].sort(), 'both sets mapped');
  await client.release(a.buffers);
  await until('a to be unmapped', () => pids.every((p) => mappedNames(p, aNames).length === 0));
  t.same(mappedNames(pids[0], bNames).sort(), [...bNames].sort(), 'b still mapped');
  for (const x of [...a.buffers, ...b.buffers]) x.free();
});
