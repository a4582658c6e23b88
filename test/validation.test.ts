// Every request the daemon must refuse, refused with its code, while the daemon keeps serving.
import t from 'tap';
import { connect, HostBuffer } from '../dist/client/index.js';
import { startDaemon } from './helpers/daemon.js';
import { checkedAllReduce } from './helpers/buffers.js';

t.test('validation failures', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  const bystander = await connect(d.socket);
  t.teardown(async () => {
    await client.close();
    await bystander.close();
  });
  const bufs = Array.from({ length: 4 }, () => HostBuffer.alloc(4096));
  t.teardown(() => bufs.forEach((b) => b.free()));
  const refs = bufs.map((b) => ({ shm: b.name }));
  const base = { type: 'allreduce', dtype: 'f32', op: 'sum', count: 1024, buffers: refs };

  const cases: [string, Record<string, unknown>, string, RegExp?][] = [
    ['too few buffers', { ...base, buffers: refs.slice(0, 3) }, 'NCCLD_ERR_BUFFER_COUNT', /one buffer per rank: 4/],
    ['too many buffers', { ...base, buffers: [...refs, refs[0]] }, 'NCCLD_ERR_BUFFER_COUNT'],
    ['buffer for the wrong rank', { ...base, buffers: refs.map((r, i) => ({ ...r, rank: i === 2 ? 3 : i })) }, 'NCCLD_ERR_WRONG_RANK', /rank 3/],
    ['unknown dtype', { ...base, dtype: 'f8' }, 'NCCLD_ERR_BAD_DTYPE', /"f8"/],
    ['dtype of the wrong type', { ...base, dtype: 7 }, 'NCCLD_ERR_BAD_DTYPE'],
    ['unknown op', { ...base, op: 'xor' }, 'NCCLD_ERR_BAD_OP'],
    ['negative count', { ...base, count: -1 }, 'NCCLD_ERR_BAD_COUNT'],
    ['fractional count', { ...base, count: 1.5 }, 'NCCLD_ERR_BAD_COUNT'],
    ['count as a string', { ...base, count: '10' }, 'NCCLD_ERR_BAD_COUNT'],
    ['count × size past the end', { ...base, count: 1025 }, 'NCCLD_ERR_BUFFER_TOO_SMALL', /4100 bytes.*holds 4096/],
    ['offset past the end', { ...base, count: 1, buffers: refs.map((r) => ({ ...r, offset: 4096 })) }, 'NCCLD_ERR_BUFFER_TOO_SMALL'],
    ['offset not a multiple of the element size', { ...base, count: 1, buffers: refs.map((r) => ({ ...r, offset: 2 })) }, 'NCCLD_ERR_BAD_ALIGNMENT'],
    ['segment that does not exist', { ...base, buffers: [...refs.slice(0, 3), { shm: 'nccld-no-such-segment' }] }, 'NCCLD_ERR_NO_SUCH_BUFFER'],
    ['segment name with a slash', { ...base, buffers: [...refs.slice(0, 3), { shm: '../etc/passwd' }] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['two ranks sharing bytes', { ...base, buffers: [refs[0], refs[0], refs[2], refs[3]] }, 'NCCLD_ERR_BUFFER_OVERLAP'],
    ['a GPU buffer on the host backend', { ...base, buffers: [...refs.slice(0, 3), { ipc: Buffer.alloc(64), device: 3 }] }, 'NCCLD_ERR_WRONG_BACKEND'],
    ['an ipc handle of the wrong size', { ...base, buffers: [...refs.slice(0, 3), { ipc: Buffer.alloc(63), device: 3 }] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['buffers not an array', { ...base, buffers: 'all of them' }, 'NCCLD_ERR_BAD_REQUEST'],
    ['empty buffers', { ...base, buffers: [] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a buffer that is not a map', { ...base, buffers: [1, 2, 3, 4] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['non-positive timeout', { ...base, timeoutMs: 0 }, 'NCCLD_ERR_BAD_REQUEST'],
    ['unknown message type', { type: 'frobnicate' }, 'NCCLD_ERR_UNKNOWN_TYPE', /frobnicate/],
    ['no type at all', { count: 3 }, 'NCCLD_ERR_UNKNOWN_TYPE'],
  ];
  for (const [name, msg, code, message] of cases) {
    await t.rejects(client.request(msg), { code, ...(message ? { message } : {}) }, name);
  }

  // Two buffers in one segment at disjoint offsets are fine.
  const big = HostBuffer.alloc(8 * 1024);
  t.teardown(() => big.free());
  await t.resolves(
    client.allReduce({ dtype: 'f32', op: 'sum', count: 1024, buffers: [{ shm: big.name }, { shm: big.name, offset: 4096 }, refs[2], refs[3]] }),
    'disjoint ranges of one segment are accepted',
  );

  // Still serving: this client and another.
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 777, 1)).mismatches, 0, 'the same client is still served');
  t.equal((await checkedAllReduce(bystander, 'i32', 'max', 777, 2)).mismatches, 0, 'other clients are still served');
});
