#!/usr/bin/env node
// ncclctl: run collectives against a running nccld from the shell, and check their results.
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { connect, type Client } from './client.js';
import { allocRankBuffers, freeRankBuffers, readValues, writeValues } from './rank-buffers.js';
import { benchDaemon, benchDirect, formatRows, parseSize, type BenchOptions } from './bench.js';
import { DTYPES, DTYPE_NAMES, REDUCE_OP_NAMES, isDType, isReduceOp, type DType, type ReduceOp } from '../shared/dtypes.js';
import { clientSocketPath } from '../shared/paths.js';
import { compare, randomInputs, reference } from './verify.js';

const USAGE = `Usage: ncclctl [--socket PATH] <command> [options]

Commands:
  allreduce --dtype T --op OP --count N [--verify] [--iters K] [--seed S]
      Fills one buffer per rank with random data, runs the AllReduce through nccld and says how
      long it took. With --verify, checks every element of every rank's buffer against a float64
      reference and exits 1 on any mismatch.
      T: ${DTYPE_NAMES.join(', ')}   OP: ${REDUCE_OP_NAMES.join(', ')}

  bench [-b 8] [-e 64M] [-f 2] [--dtype f32] [--op sum] [--iters 20] [--warmup 5] [--serial] [--direct]
      Times AllReduce over sizes from -b to -e bytes, each -f times the last, and prints time,
      algbw and busbw per size as nccl-tests does. --iters requests are in flight at once (up to the
      daemon's per-client limit) unless --serial. --direct also runs the same through the addon in this process (no daemon), on
      the daemon's devices, and prints the daemon/direct ratio of bus bandwidth.

Options:
  --socket PATH   the daemon's API socket (default ${clientSocketPath()}; NCCLD_SOCKET)
  --help          this text`;

class UsageError extends Error {}

function fail(message: string): never {
  throw new UsageError(message);
}

function positiveInt(name: string, v: string | undefined, fallback: number, min = 1): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) fail(`--${name} must be an integer ≥ ${min}, not "${v}"`);
  return n;
}

async function allreduce(client: Client, args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      dtype: { type: 'string' },
      op: { type: 'string' },
      count: { type: 'string' },
      verify: { type: 'boolean' },
      iters: { type: 'string' },
      seed: { type: 'string' },
    },
  });
  if (!isDType(v.dtype)) fail(`--dtype must be one of ${DTYPE_NAMES.join(', ')}`);
  if (!isReduceOp(v.op)) fail(`--op must be one of ${REDUCE_OP_NAMES.join(', ')}`);
  const dtype: DType = v.dtype;
  const op: ReduceOp = v.op;
  const count = positiveInt('count', v.count, NaN, 0);
  if (Number.isNaN(count)) fail('--count is required');
  const iters = positiveInt('iters', v.iters, 1);
  const seed = positiveInt('seed', v.seed, Date.now() % 2 ** 31, 0);
  const n = client.worldSize;
  const bytes = Math.max(1, count * DTYPES[dtype].bytes);
  const buffers = await allocRankBuffers(client, bytes);
  try {
    const inputs = randomInputs(dtype, op, n, count, seed);
    buffers.forEach((b, r) => writeValues(b, dtype, count, inputs[r]));
    const times: number[] = [];
    let seq = 0;
    for (let i = 0; i < iters; i++) {
      // Each iteration but the first reduces the previous result; only the first is verified.
      const t0 = performance.now();
      ({ seq } = await client.allReduce({ buffers, dtype, op, count }));
      times.push(performance.now() - t0);
      if (i === 0 && v.verify) {
        const ref = reference(inputs, dtype, op);
        let bad = 0;
        let maxError = 0;
        for (let r = 0; r < n; r++) {
          const res = compare(readValues(buffers[r], dtype, count), ref, r);
          bad += res.mismatches;
          maxError = Math.max(maxError, res.maxError);
          for (const m of res.first) {
            process.stderr.write(`mismatch: rank ${m.rank} [${m.index}] = ${m.got}, expected ${m.expected} ± ${m.allowed}\n`);
          }
        }
        if (bad > 0) {
          process.stdout.write(`verify: FAILED, ${bad} of ${count * n} elements out of tolerance\n`);
          return 1;
        }
        process.stdout.write(`verify: ok, ${count} elements × ${n} ranks within tolerance (largest error ${maxError})\n`);
      }
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    process.stdout.write(
      `allreduce ${dtype} ${op} count ${count} × ${n} ranks (${bytes} bytes each, ${client.server.backend} backend): ` +
        (iters === 1 ? `${median.toFixed(3)} ms` : `median ${median.toFixed(3)} ms, min ${times[0].toFixed(3)} ms over ${iters}`) +
        `, last seq ${seq}\n`,
    );
    return 0;
  } finally {
    await freeRankBuffers(client, buffers);
  }
}

async function bench(client: Client, args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      b: { type: 'string', short: 'b' },
      e: { type: 'string', short: 'e' },
      f: { type: 'string', short: 'f' },
      dtype: { type: 'string' },
      op: { type: 'string' },
      iters: { type: 'string' },
      warmup: { type: 'string' },
      serial: { type: 'boolean' },
      direct: { type: 'boolean' },
    },
  });
  const dtype = v.dtype ?? 'f32';
  const op = v.op ?? 'sum';
  if (!isDType(dtype)) fail(`--dtype must be one of ${DTYPE_NAMES.join(', ')}`);
  if (!isReduceOp(op)) fail(`--op must be one of ${REDUCE_OP_NAMES.join(', ')}`);
  const minBytes = parseSize(v.b ?? '8');
  const maxBytes = parseSize(v.e ?? '64M');
  const factor = Number(v.f ?? '2');
  if (!(minBytes > 0) || !(maxBytes >= minBytes)) fail('-b and -e are sizes such as 8, 64K, 256M, 1G, with -b ≤ -e');
  if (!(factor > 1)) fail('-f must be a number above 1');
  const o: BenchOptions = {
    minBytes,
    maxBytes,
    factor,
    dtype,
    op,
    iters: positiveInt('iters', v.iters, 20),
    warmup: positiveInt('warmup', v.warmup, 5, 0),
    serial: v.serial ?? false,
  };
  const n = client.worldSize;
  const where = `${n} rank${n === 1 ? '' : 's'}, ${client.server.backend} backend, ${dtype} ${op}, ${o.serial ? 'one at a time' : `${o.iters} in flight`}`;
  const viaDaemon = await benchDaemon(client, o);
  process.stdout.write(formatRows(viaDaemon, `through nccld: ${where}`).join('\n') + '\n');
  if (v.direct) {
    const direct = await benchDirect(client.server.devices, o);
    process.stdout.write(formatRows(direct, `direct, in this process: ${where}`).join('\n') + '\n');
    process.stdout.write('#       bytes  daemon/direct busbw  daemon-direct time(us)  daemon-direct p50(us)  daemon-direct p99(us)\n');
    viaDaemon.forEach((r, i) => {
      const d = direct[i];
      const cols = [(r.busBwGBps / d.busBwGBps).toFixed(3).padStart(20), (r.us - d.us).toFixed(2).padStart(23), (r.p50us - d.p50us).toFixed(2).padStart(22), (r.p99us - d.p99us).toFixed(2).padStart(22)];
      process.stdout.write(`${String(r.bytes).padStart(13)} ${cols.join(' ')}\n`);
    });
  }
  return 0;
}

async function main(argv: string[]): Promise<number> {
  // Options before the command word are ncclctl's own; the rest belong to the command.
  let socket: string | undefined;
  let i = 0;
  for (; i < argv.length && argv[i].startsWith('-'); i++) {
    if (argv[i] === '--help' || argv[i] === '-h') {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (argv[i] === '--socket' && i + 1 < argv.length) socket = argv[++i];
    else if (argv[i].startsWith('--socket=')) socket = argv[i].slice('--socket='.length);
    else fail(`unknown option "${argv[i]}"`);
  }
  const command = argv[i];
  if (!command) fail('no command given');
  if (command !== 'allreduce' && command !== 'bench') fail(`unknown command "${command}"`);
  const client = await connect(socket, { name: 'ncclctl' });
  try {
    return command === 'bench' ? await bench(client, argv.slice(i + 1)) : await allreduce(client, argv.slice(i + 1));
  } finally {
    await client.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`ncclctl: ${(err as Error).message}\n`);
    if (err instanceof UsageError) process.stderr.write(`\n${USAGE}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
