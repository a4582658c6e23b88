// Every dtype × op through a real daemon with real device processes and shared memory,
// checked element by element against a float64 reference.
import t from 'tap';
import { connect, DTYPE_NAMES, REDUCE_OP_NAMES } from '../dist/client/index.js';
import { startDaemon } from './helpers/daemon.js';
import { checkedAllReduce } from './helpers/buffers.js';

for (const ranks of [4, 3]) {
  t.test(`world of ${ranks} ranks`, async (t) => {
    const d = await startDaemon(['--backend', 'host', '--ranks', String(ranks)]);
    t.teardown(() => d.stop());
    const client = await connect(d.socket);
    t.teardown(() => client.close());
    t.equal(client.worldSize, ranks);
    t.equal(client.server.backend, 'host');
    // Counts that are not multiples of the world size, and smaller than it.
    const counts = ranks === 4 ? [1, 3, 1001, 30011] : [2, 4099];
    let seed = 1;
    for (const dtype of DTYPE_NAMES) {
      for (const op of REDUCE_OP_NAMES) {
        for (const count of counts) {
          const res = await checkedAllReduce(client, dtype, op, count, seed++);
          if (res.mismatches !== 0) t.fail(`${dtype} ${op} count ${count}: ${res.mismatches} mismatches`, { first: res.first });
        }
        t.pass(`${dtype} ${op}`);
      }
    }
  });
}

t.test('world of 1 rank: the collective is the identity (avg divides by 1)', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '1']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  for (const op of REDUCE_OP_NAMES) {
    const res = await checkedAllReduce(client, 'f32', op, 1000, 7);
    t.equal(res.mismatches, 0, `f32 ${op}`);
  }
});
