// Several clients at once, each with hundreds of requests in flight: every result is checked and
// the collectives get distinct sequence numbers (one global order).
import t from 'tap';
import { connect, HostBuffer, type DType, type ReduceOp } from '../dist/client/index.js';
import { startDaemon } from './helpers/daemon.js';
import { allocFilled, check } from './helpers/buffers.js';

const CLIENTS = 3;
const PER_CLIENT = 250;
const CASES: [DType, ReduceOp][] = [
  ['f32', 'sum'],
  ['bf16', 'max'],
  ['i64', 'sum'],
  ['f16', 'avg'],
  ['u8', 'min'],
];

t.test(`${CLIENTS} clients × ${PER_CLIENT} requests in flight`, async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const seqs: number[] = [];
  let bad = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      const client = await connect(d.socket, { name: `load-${c}` });
      const runs = Array.from({ length: PER_CLIENT }, (_, i) => {
        const [dtype, op] = CASES[(c + i) % CASES.length];
        const count = 1 + ((i * 7919) % 3000);
        return { dtype, op, count, ...allocFilled(client.worldSize, dtype, op, count, c * 100_000 + i) };
      });
      // Register every buffer first (a run's buffers at a time: the three clients share one
      // process's in-flight limit), so the collectives below go out at once, by number.
      for (const r of runs) await Promise.all(r.buffers.map((b) => client.register(b)));
      // Issue them all before awaiting any: hundreds in flight on one connection.
      const replies = runs.map((r) => client.allReduce({ buffers: r.buffers, dtype: r.dtype, op: r.op, count: r.count }));
      t.equal(client.requestsInFlight, PER_CLIENT, `client ${c} has its requests in flight`);
      const results = await Promise.all(replies);
      runs.forEach((r, i) => {
        seqs.push(results[i].seq);
        bad += check(r.buffers, r.inputs, r.dtype, r.op, r.count).mismatches;
        for (const b of r.buffers) b.free();
      });
      await client.close();
    }),
  );
  t.equal(bad, 0, 'every element of every result is right');
  t.equal(seqs.length, CLIENTS * PER_CLIENT, 'every request was answered');
  t.equal(new Set(seqs).size, seqs.length, 'each collective has its own sequence number');
});

t.test('past the per-client limit a request gets NCCLD_ERR_BUSY, and the others still complete', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--max-in-flight', '8']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const runs = Array.from({ length: 20 }, (_, i) => allocFilled(2, 'f32', 'sum', 100_000, i));
  // Registrations count against the limit too: one at a time, so none is refused.
  for (const r of runs) for (const b of r.buffers) await client.register(b);
  const settled = await Promise.allSettled(runs.map((r) => client.allReduce({ buffers: r.buffers, dtype: 'f32', op: 'sum', count: 100_000 })));
  const busy = settled.filter((s) => s.status === 'rejected' && (s.reason as { code: string }).code === 'NCCLD_ERR_BUSY');
  const ok = settled.filter((s) => s.status === 'fulfilled');
  t.equal(ok.length + busy.length, 20, 'every request ended in a result or BUSY');
  t.ok(busy.length >= 1 && ok.length >= 8, `${ok.length} ran, ${busy.length} were told BUSY`);
  settled.forEach((s, i) => {
    if (s.status === 'fulfilled') t.equal(check(runs[i].buffers, runs[i].inputs, 'f32', 'sum', 100_000).mismatches, 0);
  });
  for (const r of runs) for (const b of r.buffers) b.free();
  // Registrations are requests too: each ends in a number or, past the limit, BUSY. (Each carries
  // a descriptor, so each is read on its own and some may finish before the next arrives: how
  // many are told BUSY depends on timing.)
  const more = Array.from({ length: 20 }, () => HostBuffer.alloc(4096));
  const regs = await Promise.allSettled(more.map((b) => client.register(b)));
  const regBusy = regs.filter((s) => s.status === 'rejected' && (s.reason as { code: string }).code === 'NCCLD_ERR_BUSY').length;
  const regOk = regs.filter((s) => s.status === 'fulfilled').length;
  t.equal(regOk + regBusy, 20, `every registration ended in a number or BUSY (${regOk} registered, ${regBusy} BUSY)`);
  t.ok(regOk >= 8, 'at least as many as the limit were registered');
  await client.release(more);
  for (const b of more) b.free();
  // Once the replies are in, the client can send again.
  const again = allocFilled(2, 'f32', 'sum', 10, 99);
  await client.allReduce({ buffers: again.buffers, dtype: 'f32', op: 'sum', count: 10 });
  t.equal(check(again.buffers, again.inputs, 'f32', 'sum', 10).mismatches, 0);
  for (const b of again.buffers) b.free();
});
