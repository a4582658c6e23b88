// Every request the daemon must refuse, refused with its code, while the daemon keeps serving.
import t from 'tap';
import { closeSync, openSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
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
  const refs = await Promise.all(bufs.map((b) => client.register(b)));
  t.equal(new Set(refs).size, 4, 'four buffers, four numbers');
  t.equal(await client.register(bufs[0]), refs[0], 'registering again on the same connection gives the same number');
  const unregistered = Math.max(...refs) + 1000;
  const base = { type: 'allreduce', dtype: 'f32', op: 'sum', count: 1024, buffers: refs };

  const cases: [string, Record<string, unknown>, string, RegExp?][] = [
    ['too few buffers', { ...base, buffers: refs.slice(0, 3) }, 'NCCLD_ERR_BUFFER_COUNT', /one buffer per rank: 4/],
    ['too many buffers', { ...base, buffers: [...refs, refs[0]] }, 'NCCLD_ERR_BUFFER_COUNT'],
    ['unknown dtype', { ...base, dtype: 'f8' }, 'NCCLD_ERR_BAD_DTYPE', /"f8"/],
    ['dtype of the wrong type', { ...base, dtype: 7 }, 'NCCLD_ERR_BAD_DTYPE'],
    ['unknown op', { ...base, op: 'xor' }, 'NCCLD_ERR_BAD_OP'],
    ['negative count', { ...base, count: -1 }, 'NCCLD_ERR_BAD_COUNT'],
    ['fractional count', { ...base, count: 1.5 }, 'NCCLD_ERR_BAD_COUNT'],
    ['count as a string', { ...base, count: '10' }, 'NCCLD_ERR_BAD_COUNT'],
    ['count × size past the end', { ...base, count: 1025 }, 'NCCLD_ERR_BUFFER_TOO_SMALL', /4100 bytes.*holds 4096/],
    ['offset past the end', { ...base, count: 1, buffers: refs.map((r) => ({ buffer: r, offset: 4096 })) }, 'NCCLD_ERR_BUFFER_TOO_SMALL'],
    ['offset not a multiple of the element size', { ...base, count: 1, buffers: refs.map((r) => ({ buffer: r, offset: 2 })) }, 'NCCLD_ERR_BAD_ALIGNMENT'],
    ['negative offset', { ...base, count: 1, buffers: refs.map((r) => ({ buffer: r, offset: -4 })) }, 'NCCLD_ERR_BAD_REQUEST', /offset/],
    ['a buffer number never registered', { ...base, buffers: [...refs.slice(0, 3), unregistered] }, 'NCCLD_ERR_NO_SUCH_BUFFER', new RegExp(`buffers\\[3\\]: buffer ${unregistered} is not registered`)],
    ['a slot naming a buffer never registered', { ...base, buffers: [...refs.slice(0, 3), { buffer: unregistered }] }, 'NCCLD_ERR_NO_SUCH_BUFFER'],
    // v1 named segments by path ('../etc/passwd' was refused); v2 names only numbers.
    ['a buffer named by a string', { ...base, buffers: [...refs.slice(0, 3), '../etc/passwd'] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a v1 segment reference', { ...base, buffers: [...refs.slice(0, 3), { shm: 'nccld-no-such-segment' }] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a buffer number that is not an integer', { ...base, buffers: [...refs.slice(0, 3), 1.5] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a negative buffer number', { ...base, buffers: [...refs.slice(0, 3), -1] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a slot whose buffer is not a number', { ...base, buffers: [...refs.slice(0, 3), { buffer: 'x' }] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['two ranks sharing bytes', { ...base, buffers: [refs[0], refs[0], refs[2], refs[3]] }, 'NCCLD_ERR_BUFFER_OVERLAP'],
    ['two ranks sharing some bytes', { ...base, count: 512, buffers: [refs[0], { buffer: refs[0], offset: 1024 }, refs[2], refs[3]] }, 'NCCLD_ERR_BUFFER_OVERLAP'],
    ['buffers not an array', { ...base, buffers: 'all of them' }, 'NCCLD_ERR_BAD_REQUEST'],
    ['empty buffers', { ...base, buffers: [] }, 'NCCLD_ERR_BUFFER_COUNT'],
    ['a buffer that is neither a number nor a map', { ...base, buffers: [true, true, true, true] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a buffer that is an array', { ...base, buffers: [[1], [2], [3], [4]] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['non-positive timeout', { ...base, timeoutMs: 0 }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a timeout past the daemon\'s limit', { ...base, timeoutMs: client.server.maxTimeoutMs + 1 }, 'NCCLD_ERR_BAD_REQUEST', /over this daemon's limit/],
    // Register: the host backend takes only a sealed memfd sent with the frame.
    ['a GPU buffer on the host backend', { type: 'register', ipc: Buffer.alloc(64), device: 3 }, 'NCCLD_ERR_WRONG_BACKEND'],
    ['an ipc handle of the wrong size', { type: 'register', ipc: Buffer.alloc(63), device: 3 }, 'NCCLD_ERR_BAD_REQUEST'],
    ['a register without a descriptor', { type: 'register' }, 'NCCLD_ERR_BAD_REQUEST', /memfd/],
    // Release
    ['release of a buffer never registered', { type: 'release', buffers: [unregistered] }, 'NCCLD_ERR_NO_SUCH_BUFFER'],
    ['release of nothing', { type: 'release', buffers: [] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['release of a string', { type: 'release', buffers: ['all'] }, 'NCCLD_ERR_BAD_REQUEST'],
    ['unknown message type', { type: 'frobnicate' }, 'NCCLD_ERR_UNKNOWN_TYPE', /frobnicate/],
    ['no type at all', { count: 3 }, 'NCCLD_ERR_UNKNOWN_TYPE'],
  ];
  for (const [name, msg, code, message] of cases) {
    await t.rejects(client.request(msg), { code, ...(message ? { message } : {}) }, name);
  }

  // Descriptors that are not sealed memfds: a client could hand over a file it can write (and
  // shrink under a collective), or one it can only read; the daemon takes neither.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-validation-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'plain');
  writeFileSync(file, Buffer.alloc(4096));
  for (const [what, fd] of [
    ['a plain file', openSync(file, 'r+')],
    ['/etc/passwd, read-only', openSync('/etc/passwd', 'r')],
  ] as [string, number][]) {
    await t.rejects(client.request({ type: 'register' }, [fd]), { code: 'NCCLD_ERR_BAD_BUFFER', message: /sealed/ }, `register of ${what}`);
    closeSync(fd);
  }
  // A released buffer can no longer be named.
  const gone = HostBuffer.alloc(4096);
  t.teardown(() => gone.free());
  const goneRef = await client.register(gone);
  await client.release([gone]);
  await t.rejects(client.request({ ...base, buffers: [goneRef, ...refs.slice(1)] }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'a released buffer');
  await t.rejects(client.request({ type: 'release', buffers: [goneRef] }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'released twice');
  // Registrations are per connection: the bystander cannot name this client's buffers.
  await t.rejects(bystander.request({ ...base, buffers: refs }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'another connection\'s numbers');
  await t.rejects(bystander.request({ type: 'release', buffers: [refs[0]] }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'another connection\'s numbers, released');

  // Two buffers in one memfd at disjoint offsets are fine.
  const big = HostBuffer.alloc(8 * 1024);
  t.teardown(() => big.free());
  await t.resolves(
    client.allReduce({ dtype: 'f32', op: 'sum', count: 1024, buffers: [big, { buffer: await client.register(big), offset: 4096 }, refs[2], refs[3]] }),
    'disjoint ranges of one buffer are accepted',
  );

  // Still serving: this client and another.
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 777, 1)).mismatches, 0, 'the same client is still served');
  t.equal((await checkedAllReduce(bystander, 'i32', 'max', 777, 2)).mismatches, 0, 'other clients are still served');
});
