// Host-backend figures for the closing note (not a test): f32 sum through a real daemon, beside
// this machine's memcpy bandwidth measured in the same run.
//   npm run bench:host -- [ranks=2] [MiB=64] [iterations=20]
import { performance } from 'node:perf_hooks';
import { connect, HostBuffer } from '../dist/client/index.js';
import { startDaemon } from '../test/helpers/daemon.js';

const ranks = Number(process.argv[2] ?? 2);
const mib = Number(process.argv[3] ?? 64);
const iters = Number(process.argv[4] ?? 20);
const bytes = mib << 20;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function memcpyBandwidth() {
  // Bytes read plus bytes written, per second, over a buffer far larger than the caches.
  const src = Buffer.alloc(256 << 20, 1);
  const dst = Buffer.alloc(256 << 20);
  const times = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    src.copy(dst);
    times.push(performance.now() - t0);
  }
  return (2 * src.length) / (median(times) / 1000);
}

const d = await startDaemon(['--backend', 'host', '--ranks', String(ranks)]);
const client = await connect(d.socket);
const buffers = Array.from({ length: ranks }, () => HostBuffer.alloc(bytes));
buffers.forEach((b, r) => b.view('f32').fill(r + 1));
const times = [];
for (let i = 0; i < iters + 3; i++) {
  const t0 = performance.now();
  await client.allReduce({ buffers, dtype: 'f32', op: 'sum', count: bytes / 4 });
  if (i >= 3) times.push(performance.now() - t0);
}
const t = median(times) / 1000;
// In place over N ranks of S bytes: every byte of every buffer is read once and written once.
const moved = 2 * ranks * bytes;
const reduceBw = moved / t;
const memcpy = memcpyBandwidth();
console.log(`host backend, ${ranks} ranks, f32 sum, ${mib} MiB per rank: median ${(t * 1000).toFixed(2)} ms per AllReduce over ${iters}`);
console.log(`  reduction traffic ${(reduceBw / 1e9).toFixed(2)} GB/s (reads + writes of ${ranks} × ${mib} MiB)`);
console.log(`  memcpy ${(memcpy / 1e9).toFixed(2)} GB/s (reads + writes)`);
console.log(`  ratio ${(reduceBw / memcpy).toFixed(2)}`);
await client.release(buffers);
buffers.forEach((b) => b.free());
await client.close();
await d.stop();
