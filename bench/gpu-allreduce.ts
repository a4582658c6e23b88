// GPU figures for the closing note (not a test): world of 1 per GPU visible, through the daemon
// and directly through the addon in this process, in the same run.
//   npm run bench:gpu
import { performance } from 'node:perf_hooks';
import { native } from '../dist/shared/native.js';
import { connect, DeviceBuffer } from '../dist/client/index.js';
import { startDaemon } from '../test/helpers/daemon.js';

const gpu = native.gpu;
const probe = gpu.probe();
if (!probe.available) {
  console.log(`no GPU: ${probe.reason}`);
  process.exit(0);
}
const SIZES = [8, 1 << 20, 256 << 20];
const ITERS = { 8: 200, [1 << 20]: 100, [256 << 20]: 20 };
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function direct() {
  const dev = new gpu.Device(0);
  const comm = gpu.Comm.initRank(dev, gpu.getUniqueId(), 1, 0);
  while (comm.poll() === 'pending') await new Promise((r) => setTimeout(r, 2));
  const out = {};
  for (const bytes of SIZES) {
    const buf = gpu.DeviceBuffer.alloc(0, bytes);
    const times = [];
    for (let i = 0; i < ITERS[bytes] + 5; i++) {
      const t0 = performance.now();
      await comm.allReduce(buf.ptr, bytes / 4, 7, 0);
      if (i >= 5) times.push(performance.now() - t0);
    }
    out[bytes] = median(times);
    buf.free();
  }
  comm.destroy();
  dev.close();
  return out;
}

async function daemon() {
  const d = await startDaemon(['--backend', 'nccl', '--devices', '0'], { timeoutMs: 120_000 });
  const client = await connect(d.socket);
  const out = {};
  let firstOpen;
  let laterOpen;
  for (const bytes of SIZES) {
    const buf = DeviceBuffer.alloc(0, bytes);
    const times = [];
    for (let i = 0; i < ITERS[bytes] + 5; i++) {
      const t0 = performance.now();
      await client.allReduce({ buffers: [buf], dtype: 'f32', op: 'sum', count: bytes / 4 });
      const ms = performance.now() - t0;
      if (bytes === 8 && i === 0) firstOpen = ms;
      if (bytes === 8 && i === 1) laterOpen = ms;
      if (i >= 5) times.push(ms);
    }
    out[bytes] = median(times);
    await buf.free();
  }
  await client.close();
  await d.stop();
  return { out, firstOpen, laterOpen };
}

const v = gpu.version();
console.log(`GPU: ${probe.devices[0].name}; NCCL ${v.nccl}; CUDA driver ${v.cuda}`);
const dir = await direct();
const via = await daemon();
console.log('bytes        direct ms   daemon ms   daemon - direct (us)   daemon busbw GB/s');
for (const bytes of SIZES) {
  const bw = bytes / (via.out[bytes] / 1000) / 1e9;
  console.log(
    `${String(bytes).padEnd(12)} ${dir[bytes].toFixed(4).padStart(9)}   ${via.out[bytes].toFixed(4).padStart(9)}   ${((via.out[bytes] - dir[bytes]) * 1000).toFixed(1).padStart(20)}   ${bw.toFixed(1).padStart(8)}`,
  );
}
console.log(`first request on a new 8-byte buffer (opens the IPC handle): ${via.firstOpen.toFixed(3)} ms; the second: ${via.laterOpen.toFixed(3)} ms`);
