// Every collective on the nccl backend, in the single-client form and in a group's, on real GPU
// memory (a world of 1 on the GPU machine: each collective is then a copy or the identity, which
// still proves NCCL ran it on the right buffers). A group's split communicator is made when the
// group forms and freed when it dissolves. Skips, saying why, where there is no GPU or NCCL.
import t from 'tap';
import { connect, DeviceBuffer } from '../dist/client/index.js';
import { native } from '../dist/shared/native.js';
import { ErrorCodes } from '../dist/shared/errors.js';
import { debugCommand, startDaemon } from './helpers/daemon.js';

const probe = native.gpu?.probe();
const skip = !probe?.available ? `no GPU backend here: ${probe?.reason ?? 'no GPU support in this build'}` : false;

/** splitComms of rank 0, from the debug socket's `buffers`. */
async function splitComms(debugSocket: string): Promise<number> {
  const m = /splitComms (\d+)/.exec(await debugCommand(debugSocket, 'buffers'));
  return m ? Number(m[1]) : -1;
}

t.test('nccl backend: every collective, single-client and group form', { skip }, async (t) => {
  const d = await startDaemon(['--backend', 'nccl'], { timeoutMs: 120_000 });
  t.teardown(() => d.stop());
  const c = await connect(d.socket);
  t.teardown(() => c.close());
  const n = c.worldSize;
  t.equal(n, 1, 'a world of 1 (the GPU machine has one GPU)');
  const device = c.server.devices[0]!;
  const count = 4099;
  const src = DeviceBuffer.alloc(device, count * 4);
  const dst = DeviceBuffer.alloc(device, count * 4);
  t.teardown(async () => {
    await src.free();
    await dst.free();
  });
  const [s, r] = [await c.register(src), await c.register(dst)];
  const input = Float32Array.from({ length: count }, (_, i) => (i % 97) - 48.5);
  const zero = new Float32Array(count);
  const read = () => {
    const out = new Float32Array(count);
    dst.read(out);
    return out;
  };
  const same = (a: Float32Array, b: Float32Array) => a.every((x, i) => x === b[i]);

  const forms: [string, (fields: Record<string, unknown>) => Promise<Record<string, unknown>>][] = [['single-client', (f) => c.request({ type: 'collective', send: [s], recv: [r], ...f })]];
  const joined = await c.request({ type: 'join', group: 'gpu', size: 1, rank: 0, device: 0, timeoutMs: 60_000 });
  t.equal(await splitComms(d.debugSocket), 1, 'forming the group split a communicator from the world\'s');
  forms.push(['group', (f) => c.request({ type: 'collective', group: joined.group, send: s, recv: r, ...f })]);

  for (const [form, run] of forms) {
    for (const [collective, extra] of [
      ['allreduce', { op: 'sum' }],
      ['broadcast', { root: 0 }],
      ['reduce', { op: 'max', root: 0 }],
      ['allgather', {}],
      ['reducescatter', { op: 'sum' }],
      ['alltoall', {}],
    ] as [string, Record<string, unknown>][]) {
      src.write(input);
      dst.write(zero);
      const reply = await run({ collective, dtype: 'f32', count, ...extra });
      t.ok(same(read(), input), `${form} ${collective}: the receive buffer holds the input (seq ${reply.seq})`);
    }
    t.ok((await run({ collective: 'barrier' })).seq, `${form} barrier`);
  }

  // In place: the send buffer is the receive buffer.
  src.write(input);
  await c.request({ type: 'collective', collective: 'allgather', dtype: 'f32', count, send: [s] });
  const back = new Float32Array(count);
  src.read(back);
  t.ok(same(back, input), 'in-place allgather leaves a world of 1 as it was');
  const refused = await c.request({ type: 'collective', collective: 'alltoall', dtype: 'f32', count, send: [s] }).catch((e) => e);
  t.equal(refused.code, ErrorCodes.BAD_REQUEST, 'alltoall in place is refused');

  await c.request({ type: 'leave', group: joined.group });
  t.equal(await splitComms(d.debugSocket), 0, 'leaving freed the group\'s communicator');
});
