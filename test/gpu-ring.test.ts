// The NCCL backend's data plane, native halves only: a RankRing (the daemon's end) and an
// NcclRingWorker (the device's end, a thread launching NCCL) in this process, on a real GPU with a
// real NCCL communicator (a world of 1). Skips, saying why, where there is no GPU or no NCCL.
import t from 'tap';
import { native, type GpuComm, type GpuDeviceBuffer } from '../dist/shared/native.js';
import { DTYPES, REDUCE_OPS } from '../dist/shared/dtypes.js';

const probe = native.gpu?.probe();
const skip = !probe?.available ? `no GPU backend here: ${probe?.reason ?? 'no GPU support in this build'}` : false;
const CODES = native.RANK_RING_CODES;
const code = (name: string) => CODES.indexOf(`NCCLD_ERR_${name}`);
const F32 = DTYPES.f32.nccl;
const SUM = REDUCE_OPS.sum;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('NcclRingWorker: records launched on the communicator, completions once the GPU is done', { skip }, async (t) => {
  const gpu = native.gpu!;
  const device = new gpu.Device(0);
  t.teardown(() => device.close());
  const ring = native.RankRing.create(256, 2);
  const done = new Map<number, number>();
  let wakes = 0;
  ring.start((seqs, codes) => {
    wakes++;
    for (let i = 0; i < seqs.length; i++) done.set(seqs[i], codes[i]);
  });
  const worker = gpu.NcclRingWorker.attach(ring.fds.map((fd) => native.dupFd(fd)));
  const buffers: GpuDeviceBuffer[] = [];
  let comm: GpuComm | null = null;
  t.teardown(() => {
    worker.stop();
    ring.close();
    comm?.destroy();
    for (const b of buffers) b.free();
  });
  const until = async (seqs: number[], what: string) => {
    const t0 = Date.now();
    while (!seqs.every((s) => done.has(s))) {
      if (Date.now() - t0 > 20_000) throw new Error(`timed out waiting for ${what}`);
      await sleep(1);
    }
    return seqs.map((s) => done.get(s));
  };
  const count = 1000;
  const src = gpu.DeviceBuffer.alloc(0, count * 4);
  const dst = gpu.DeviceBuffer.alloc(0, count * 4);
  buffers.push(src, dst);
  const input = Float32Array.from({ length: count }, (_, i) => i * 0.5 - 3);
  src.write(input);
  dst.write(new Float32Array(count));
  worker.setBuffer(1, src.ptr, src.bytes);
  worker.setBuffer(2, dst.ptr, dst.bytes);
  const one = (id: number) => Uint32Array.of(id);
  const at = (off: number) => Float64Array.of(off);
  let seq = 1;
  const submit = (ids: Uint32Array, offsets: Float64Array, n = count, op = SUM) => {
    const s = seq++;
    t.ok(ring.submit(s, 0, F32, op, n, ids, offsets), `record ${s} submitted`);
    return s;
  };

  t.same(await until([submit(one(1), at(0))], 'a record with no communicator'), [code('NOT_READY')], 'no communicator yet: NOT_READY');

  comm = gpu.Comm.initRank(device, gpu.getUniqueId(), 1, 0);
  while (comm.poll() === 'pending') await sleep(5);
  worker.setComm(comm);

  // Out of place (send slot 1, receive slot 2): in a world of 1 the result is the input, copied.
  t.same(await until([submit(Uint32Array.of(1, 2), Float64Array.of(0, 0))], 'an out-of-place AllReduce'), [0], 'OK');
  const out = new Float32Array(count);
  dst.read(out);
  t.same(Array.from(out), Array.from(input), 'the receive buffer holds the reduced input: NCCL really ran');

  // Pipelined: launched in groups, completed in batches.
  const wakesBefore = wakes;
  const many = Array.from({ length: 500 }, () => submit(one(1), at(0), 64));
  const codes = await until(many, '500 pipelined records');
  t.ok(codes.every((c) => c === 0), 'all 500 OK');
  t.ok(wakes - wakesBefore < 500, `completions came in batches (${wakes - wakesBefore} wakes for 500)`);

  // Checked against the buffer table, per record, without disturbing the next.
  t.same(
    await until([submit(one(99), at(0)), submit(one(1), at(4), count), submit(one(1), at(2), 4), submit(one(1), at(0), 4)], 'bad records'),
    [code('NO_SUCH_BUFFER'), code('BUFFER_TOO_SMALL'), code('BAD_ALIGNMENT'), 0],
    'unknown buffer, past the end, misaligned: each its code; the next record is fine',
  );
  worker.dropBuffer(2);
  t.same(await until([submit(Uint32Array.of(1, 2), Float64Array.of(0, 0))], 'a dropped buffer'), [code('NO_SUCH_BUFFER')], 'a dropped buffer is gone');

  // Fault injection: one record fails as NCCL failing it would.
  worker.inject('fail');
  t.same(await until([submit(one(1), at(0)), submit(one(1), at(0))], 'an injected failure'), [code('NCCL'), 0], 'injected failure: NCCL, then OK');

  // A communicator swap fences what was submitted before it: nothing queued for the old
  // communicator runs on the new one.
  worker.inject('hang');
  await sleep(20);
  const queued = [submit(one(1), at(0)), submit(one(1), at(0)), submit(one(1), at(0))];
  await sleep(20);
  t.notOk(queued.some((s) => done.has(s)), 'a hung worker takes nothing');
  worker.setComm(comm);
  worker.inject(null);
  t.same(await until(queued, 'records from before the swap'), queued.map(() => code('ABORTED')), 'records from before the swap: ABORTED');
  t.same(await until([submit(one(1), at(0))], 'a record after the swap'), [0], 'records after it run');

  // No communicator again: refused, never run.
  worker.setComm(null);
  t.same(await until([submit(one(1), at(0))], 'a record after setComm(null)'), [code('NOT_READY')], 'after setComm(null): NOT_READY');

  // An aborted communicator: records fail ABORTED instead of touching it.
  worker.setComm(comm);
  comm.abort();
  t.same(await until([submit(one(1), at(0))], 'a record on an aborted communicator'), [code('ABORTED')], 'an aborted communicator: ABORTED');
  comm = null;
});
