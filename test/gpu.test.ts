// The nccl backend for real: a daemon whose device processes hold NCCL ranks, fed GPU buffers
// registered by CUDA IPC handle. Skips, saying why, where there is no GPU or no NCCL; on the GPU
// machine it runs in the normal suite.
import t from 'tap';
import { connect, DeviceBuffer, DTYPE_NAMES, REDUCE_OP_NAMES, type Client, type DType, type ReduceOp } from '../dist/client/index.js';
import { native } from '../dist/shared/native.js';
import { DTYPES } from '../dist/shared/dtypes.js';
import { readValues, writeValues } from '../dist/client/rank-buffers.js';
import { compare, randomInputs, reference } from '../dist/client/verify.js';
import { performance } from 'node:perf_hooks';
import { debugCommand, devicePids, startDaemon, until } from './helpers/daemon.js';

const probe = native.gpu?.probe();
const skip = !probe?.available ? `no GPU backend here: ${probe?.reason ?? 'no GPU support in this build'}` : false;

/** ipcOpens / ipcCloses / mapped per rank, from the debug socket's `buffers` command. */
async function bufferStats(debugSocket: string): Promise<Record<string, number>[]> {
  const out = await debugCommand(debugSocket, 'buffers');
  return out
    .split('\n')
    .filter((l) => l.startsWith('rank '))
    .map((l) => Object.fromEntries(l.replace(/^rank \d+: /, '').split(', ').map((kv) => [kv.split(' ')[0], Number(kv.split(' ')[1])])));
}

async function gpuRun(client: Client, dtype: DType, op: ReduceOp, count: number, seed: number, keep = false, timeoutMs?: number) {
  const n = client.worldSize;
  const bytes = Math.max(1, count * DTYPES[dtype].bytes);
  const inputs = randomInputs(dtype, op, n, count, seed);
  const buffers = client.server.devices.map((dev) => DeviceBuffer.alloc(dev!, bytes));
  buffers.forEach((b, r) => writeValues(b, dtype, count, inputs[r]));
  // Registered first (a DeviceBuffer remembers the clients it was registered with, so free()
  // releases it from the daemon before freeing the memory).
  const { seq } = await Promise.all(buffers.map((b) => client.register(b)))
    .then(() => client.allReduce({ buffers, dtype, op, count, ...(timeoutMs ? { timeoutMs } : {}) }))
    .catch(async (e) => {
      for (const b of buffers) await b.free();
      throw e;
    });
  const ref = reference(inputs, dtype, op);
  let mismatches = 0;
  const first: unknown[] = [];
  buffers.forEach((b, r) => {
    const res = compare(readValues(b, dtype, count), ref, r, 3);
    mismatches += res.mismatches;
    first.push(...res.first);
  });
  if (!keep) for (const b of buffers) await b.free();
  return { mismatches, first, seq, buffers };
}

t.test('nccl backend', { skip }, async (t) => {
  const d = await startDaemon(['--backend', 'nccl'], { timeoutMs: 120_000 });
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  t.equal(client.server.backend, 'nccl');
  t.equal(client.worldSize, probe!.devices.length, 'one rank per visible GPU');
  t.equal(client.server.deviceUuids.length, client.worldSize, 'a UUID for each rank\'s GPU');
  for (const u of client.server.deviceUuids) t.match(u, /^GPU-[0-9a-f-]+$/, `rank GPU ${u}`);
  const status = await debugCommand(d.debugSocket, 'status');
  t.match(status, /backend: nccl \(.*NCCL \d+\.\d+\.\d+/, 'status shows NCCL\'s version');
  t.match(status, new RegExp(probe!.devices[0].name.replace(/[()[\]]/g, '.')), 'and the device name');

  await t.test('every dtype × op against a float64 reference', async (t) => {
    let seed = 1;
    for (const dtype of DTYPE_NAMES) {
      for (const op of REDUCE_OP_NAMES) {
        for (const count of [1, 1001, 100_003]) {
          const r = await gpuRun(client, dtype, op, count, seed++);
          if (r.mismatches) t.fail(`${dtype} ${op} ${count}: ${r.mismatches} mismatches`, { first: r.first });
        }
        t.pass(`${dtype} ${op}`);
      }
    }
  });

  await t.test('many requests in flight, each result checked', async (t) => {
    const runs = await Promise.all(Array.from({ length: 64 }, (_, i) => gpuRun(client, 'f32', 'sum', 4096 + i, 1000 + i)));
    t.equal(runs.filter((r) => r.mismatches).length, 0);
    t.equal(new Set(runs.map((r) => r.seq)).size, 64);
  });

  await t.test('a buffer is opened once, when registered; release and disconnect close it', async (t) => {
    const before = await bufferStats(d.debugSocket);
    const first = await gpuRun(client, 'f32', 'sum', 1024, 1, true);
    const afterFirst = await bufferStats(d.debugSocket);
    t.equal(afterFirst[0].ipcOpens - before[0].ipcOpens, 1, 'registering opens the handle');
    for (let i = 0; i < 5; i++) await client.allReduce({ buffers: first.buffers, dtype: 'f32', op: 'sum', count: 1024 });
    const number = await client.register(first.buffers[0]);
    t.equal(await client.register(first.buffers[0]), number, 'registering again gives the same number');
    const afterMore = await bufferStats(d.debugSocket);
    t.equal(afterMore[0].ipcOpens, afterFirst[0].ipcOpens, 'later requests on the same buffer open nothing');
    for (const b of first.buffers) await b.free(); // releases first
    const afterFree = await bufferStats(d.debugSocket);
    t.equal(afterFree[0].ipcCloses - afterMore[0].ipcCloses, 1, 'release closes the mapping');

    const other = await connect(d.socket);
    const kept = await gpuRun(other, 'f32', 'sum', 1024, 2, true);
    const withOther = await bufferStats(d.debugSocket);
    await other.close();
    let now = withOther;
    for (let i = 0; i < 100 && now[0].ipcCloses === withOther[0].ipcCloses; i++) {
      await new Promise((r) => setTimeout(r, 20));
      now = await bufferStats(d.debugSocket);
    }
    t.equal(now[0].ipcCloses - withOther[0].ipcCloses, 1, 'disconnect closes the client\'s mappings');
    for (const b of kept.buffers) await b.free();
  });

  await t.test('a handle of freed memory, or of no memory at all, is refused with a clear error', async (t) => {
    const dev = client.server.devices[0]!;
    const b = DeviceBuffer.alloc(dev, 64 << 20);
    const handle = Buffer.from(b.ipcHandle());
    await b.free();
    await t.rejects(client.request({ type: 'register', ipc: handle, device: dev }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'freed');
    await t.rejects(client.request({ type: 'register', ipc: Buffer.alloc(64, 0xab), device: dev }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'garbage');
    await t.rejects(client.request({ type: 'register', ipc: Buffer.alloc(63), device: dev }), { code: 'NCCLD_ERR_BAD_REQUEST' }, 'not a handle');
    await t.rejects(client.request({ type: 'register' }), { code: 'NCCLD_ERR_BAD_REQUEST' }, 'no handle');
    t.equal((await gpuRun(client, 'f32', 'sum', 1000, 9)).mismatches, 0, 'still serving');
  });

  await t.test('a buffer on another device than its rank\'s is refused', async (t) => {
    const devices = client.server.devices.map((x) => x!);
    const b = DeviceBuffer.alloc(devices[0], 4096);
    t.teardown(() => b.free());
    // Said to be on a device no rank runs on.
    await t.rejects(client.request({ type: 'register', ipc: b.ipcHandle(), device: Math.max(...devices) + 1 }), { code: 'NCCLD_ERR_WRONG_DEVICE' }, 'a device without a rank');
    // Said to be on another rank's device: that rank finds where the memory lives.
    if (devices.length > 1) {
      await t.rejects(client.request({ type: 'register', ipc: b.ipcHandle(), device: devices[1] }), { code: 'NCCLD_ERR_WRONG_DEVICE' }, 'another rank\'s device');
    }
    // Registered on its own device's rank, then named for another rank.
    const own = await client.register(b);
    if (devices.length > 1) {
      await t.rejects(client.allReduce({ buffers: devices.map(() => own), dtype: 'f32', op: 'sum', count: 16 }), { code: 'NCCLD_ERR_WRONG_DEVICE' }, 'rank 0\'s buffer in rank 1\'s slot');
    }
    // Each rank's own buffer, too small for the count.
    const small = devices.map((dev) => DeviceBuffer.alloc(dev, 4096));
    t.teardown(async () => {
      for (const x of small) await x.free();
    });
    await Promise.all(small.map((x) => client.register(x)));
    await t.rejects(client.allReduce({ buffers: small, dtype: 'f32', op: 'sum', count: 1 << 20 }), { code: 'NCCLD_ERR_BUFFER_TOO_SMALL' });
  });

  await t.test('registrations are per connection', async (t) => {
    const run = await gpuRun(client, 'f32', 'sum', 1024, 3, true);
    t.teardown(async () => {
      for (const b of run.buffers) await b.free();
    });
    const numbers = await Promise.all(run.buffers.map((b) => client.register(b)));
    const other = await connect(d.socket);
    t.teardown(() => other.close());
    await t.rejects(other.allReduce({ buffers: numbers, dtype: 'f32', op: 'sum', count: 1024 }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' });
    await t.rejects(other.release(numbers), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' });
  });
});

t.test('nccl backend faults: a killed device process, a hung rank', { skip }, async (t) => {
  const hangMs = 2000;
  const d = await startDaemon(['--backend', 'nccl', '--enable-fault-injection', '--timeout-ms', '10000', '--hang-timeout-ms', String(hangMs)], { timeoutMs: 120_000 });
  t.teardown(() => d.stop());
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const pids = await devicePids(d.debugSocket);
  // Pipelined load on kept buffers, then kill rank 0's process in the middle of it.
  const keep = await Promise.all(Array.from({ length: 8 }, (_, i) => gpuRun(client, 'f32', 'sum', 1 << 20, 500 + i, true)));
  let stop = false;
  let killedAt = 0;
  const codes: Record<string, number> = {};
  let okAfter = 0;
  let firstOkAfter = 0;
  const loops = keep.map(async (run) => {
    while (!stop) {
      try {
        await client.allReduce({ buffers: run.buffers, dtype: 'f32', op: 'sum', count: 1 << 20 });
        if (killedAt && codes.NCCLD_ERR_DEVICE_LOST) {
          okAfter++;
          firstOkAfter ||= performance.now();
        }
      } catch (e) {
        const code = (e as { code: string }).code;
        codes[code] = (codes[code] ?? 0) + 1;
      }
    }
  });
  await new Promise((r) => setTimeout(r, 300));
  killedAt = performance.now();
  process.kill(pids[0], 'SIGKILL');
  await until('requests to succeed on the rebuilt world', () => okAfter >= 20, 60_000);
  stop = true;
  await Promise.all(loops);
  t.ok(Object.keys(codes).every((c) => ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_ABORTED', 'NCCLD_ERR_NCCL'].includes(c)), `failures: ${JSON.stringify(codes)}`);
  t.comment(`figure (GPU): kill -9 of a device process to the first successful AllReduce on the rebuilt NCCL world: ${(firstOkAfter - killedAt).toFixed(0)} ms`);
  t.match(await debugCommand(d.debugSocket, 'status'), /world: ready, \d+ ranks?, generation 2/);
  for (const r of keep) for (const b of r.buffers) await b.free();

  // A hung rank: the hang watchdog (not the client's 10 s deadline) ends the collective and
  // rebuilds the world. NCCL ranks that went ahead wait for rank 0, so they may be named too.
  await debugCommand(d.debugSocket, 'inject 0 hang');
  const t0 = performance.now();
  await t.rejects(gpuRun(client, 'f32', 'sum', 1024, 77), { code: 'NCCLD_ERR_TIMEOUT', message: /had not finished on ranks? 0\b.* after the hang threshold of 2000 ms/ });
  const elapsed = performance.now() - t0;
  t.ok(elapsed < 10_000, `ended by the watchdog, before the client's deadline (${elapsed.toFixed(0)} ms)`);
  t.comment(`figure (GPU): hung rank to its timeout error: ${elapsed.toFixed(0)} ms (hang threshold ${hangMs} ms)`);
  t.equal((await gpuRun(client, 'f32', 'sum', 1024, 78)).mismatches, 0, 'serving again after the rebuild');
  t.match(await debugCommand(d.debugSocket, 'status'), /last break: hang watchdog: .*not finished on ranks? 0\b/);
});

t.test('the GPU stack is probed without a crash and says why when it is missing', async (t) => {
  t.ok(native.gpu, 'this build has GPU support compiled in');
  const p = native.gpu!.probe();
  t.type(p.available, 'boolean');
  if (!p.available) t.match(p.reason, /\S/, `reason given: ${p.reason}`);
  else t.ok(p.devices.length > 0);
});
