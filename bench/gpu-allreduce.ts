// GPU figures for the closing note (not a test): world of 1 per GPU visible, through the daemon
// and directly through the addon in this process, in the same run, plus what the first request
// on a new buffer costs (it opens the CUDA IPC handle).
//   npm run bench:gpu
import { performance } from 'node:perf_hooks';
import { native } from '../dist/shared/native.js';
import { connect, DeviceBuffer } from '../dist/client/index.js';
import { benchDaemon, benchDirect, type BenchOptions } from '../dist/client/bench.js';
import { startDaemon } from '../test/helpers/daemon.js';

const probe = native.gpu!.probe();
if (!probe.available) {
  console.log(`no GPU: ${probe.reason}`);
  process.exit(0);
}
const SIZES = [8, 1 << 20, 256 << 20];
const ITERS: Record<number, number> = { 8: 200, [1 << 20]: 100, [256 << 20]: 20 };
// One at a time: the fixed cost of a call, which is what a world of 1 shows.
const one = (bytes: number): BenchOptions => ({ minBytes: bytes, maxBytes: bytes, factor: 2, dtype: 'f32', op: 'sum', iters: ITERS[bytes], warmup: 5, serial: true });

const v = native.gpu!.version();
console.log(`GPU: ${probe.devices[0].name}; NCCL ${v.nccl}; CUDA driver ${v.cuda}`);
const direct = [];
for (const bytes of SIZES) direct.push(...(await benchDirect([0], one(bytes))));

const d = await startDaemon(['--backend', 'nccl', '--devices', '0'], { timeoutMs: 120_000 });
const client = await connect(d.socket);
const viaDaemon = [];
for (const bytes of SIZES) viaDaemon.push(...(await benchDaemon(client, one(bytes))));
const fresh = DeviceBuffer.alloc(0, 8);
const times = [];
for (let i = 0; i < 2; i++) {
  const t0 = performance.now();
  await client.allReduce({ buffers: [fresh], dtype: 'f32', op: 'sum', count: 2 });
  times.push(performance.now() - t0);
}
await fresh.free();
await client.close();
await d.stop();

console.log('bytes        direct ms   daemon ms   daemon - direct (us)   daemon busbw GB/s');
SIZES.forEach((bytes, i) => {
  const [a, b] = [direct[i].us / 1000, viaDaemon[i].us / 1000];
  console.log(`${String(bytes).padEnd(12)} ${a.toFixed(4).padStart(9)}   ${b.toFixed(4).padStart(9)}   ${((b - a) * 1000).toFixed(1).padStart(20)}   ${viaDaemon[i].busBwGBps.toFixed(1).padStart(8)}`);
});
console.log(`first request on a new 8-byte buffer (opens the IPC handle): ${times[0].toFixed(3)} ms; the second: ${times[1].toFixed(3)} ms`);
