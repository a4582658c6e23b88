#!/usr/bin/env node
// ncclctl: run collectives against a running nccld from the shell, from one client or from a group
// of member processes (this file again, as the hidden `group-member` command), and check their results.
import { fork } from 'node:child_process';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { connect, type Client } from './client.js';
import type { Group } from './group.js';
import { allocBuffer, allocRankBuffers, checkRank, fillRank, freeRankBuffers, type RankBuffer, type RankPair } from './rank-buffers.js';
import { benchDaemon, benchDirect, benchGroupMember, formatRows, parseSize, slowestRows, type BenchOptions, type BenchRow } from './bench.js';
import { DTYPES, DTYPE_NAMES, REDUCE_OP_NAMES, isDType, isReduceOp, type DType, type ReduceOp } from '../shared/dtypes.js';
import type { NccldError } from '../shared/errors.js';
import { clientSocketPath } from '../shared/paths.js';
import { COLLECTIVES, REDUCING, ROOTED, collectiveElements, isCollective, type CollectiveName } from '../shared/protocol.js';
import { collectiveInputs, collectiveReference, randomInputs, type CollectiveCase } from './verify.js';

const USAGE = `Usage: ncclctl [--socket PATH] <command> [options]

Commands:
  allreduce --dtype T --op OP --count N [--verify] [--iters K] [--seed S]
      Fills one buffer per rank with random data, runs the AllReduce (in place) through nccld and
      says how long it took. With --verify, checks every element of every rank's buffer against
      a float64 reference and exits 1 on any mismatch.
      T: ${DTYPE_NAMES.join(', ')}   OP: ${REDUCE_OP_NAMES.join(', ')}

  broadcast|reduce|allgather|reducescatter|alltoall --dtype T --count N [--op OP] [--root R]
      [--in-place] [--verify] [--iters K] [--seed S]
      The same for the other collectives, with a send and a receive buffer per rank, or with
      --in-place one, laid out as NCCL does (not for alltoall). N is NCCL's count: per rank for
      allgather's send, reducescatter's receive and each of alltoall's blocks. --op is required
      for reduce and reducescatter, --root (default 0) is used by broadcast and reduce; the
      others ignore them.

  barrier [--iters K]
      Runs a barrier over every rank and says how long it took.

  group-demo --size N [--count C] [--dtype T] [--op OP] [--root R] [--seed S]
      Starts N member processes that join one group (demo-<pid>), each with its own buffer on its
      own rank's device, and run every collective, in and out of place, checked against the
      float64 reference; each prints one line per collective, then this prints a summary and
      exits 1 on any failure. Defaults: count 1024, f32, sum, root 0.

  bench [-b 8] [-e 64M] [-f 2] [--dtype f32] [--op sum] [--collective NAME] [--group N]
      [--iters 20] [--warmup 5] [--serial] [--direct]
      Times a collective (default allreduce, in place; the others out of place) over sizes from
      -b to -e bytes (a rank's larger buffer), each -f times the last, and prints time, p50, p99,
      algbw and busbw per size as nccl-tests does. --iters requests are in flight at once (up to
      the daemon's per-client limit) unless --serial. --group N runs it from N member processes
      of one group, one buffer each, and reports the slowest member's times. --direct (allreduce
      only, not with --group) also runs it through the addon in this process (no daemon), on the
      daemon's devices, and prints the daemon/direct ratio of bus bandwidth.

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

function dtypeOf(v: string | undefined): DType {
  if (!isDType(v)) fail(`--dtype must be one of ${DTYPE_NAMES.join(', ')}`);
  return v;
}

function opOf(v: string | undefined): ReduceOp {
  if (!isReduceOp(v)) fail(`--op must be one of ${REDUCE_OP_NAMES.join(', ')}`);
  return v;
}

function ms(x: number): string {
  return `${x.toFixed(3)} ms`;
}

/** `ncclctl <collective>`: one client, one buffer per rank (two out of place). */
async function runCollective(client: Client, c: CollectiveName, args: string[]): Promise<number> {
  const data = c !== 'barrier';
  const { values: v } = parseArgs({
    args,
    strict: true,
    // The same options for every collective, so one command line can loop over them; a
    // collective ignores --op and --root where it takes none, as the protocol does.
    options: {
      iters: { type: 'string' },
      ...(data
        ? {
            dtype: { type: 'string' },
            op: { type: 'string' },
            count: { type: 'string' },
            root: { type: 'string' },
            'in-place': { type: 'boolean' },
            verify: { type: 'boolean' },
            seed: { type: 'string' },
          }
        : {}),
    },
  }) as { values: Record<string, string | boolean | undefined> };
  const str = (k: string) => v[k] as string | undefined;
  const iters = positiveInt('iters', str('iters'), 1);
  const n = client.worldSize;
  if (c === 'alltoall' && v['in-place']) fail('alltoall cannot run in place');
  if (!data) {
    const times: number[] = [];
    let seq = 0;
    for (let i = 0; i < iters; i++) {
      const t0 = performance.now();
      ({ seq } = await client.barrier());
      times.push(performance.now() - t0);
    }
    process.stdout.write(`barrier × ${n} ranks (${client.server.backend} backend): ${timing(times)}, last seq ${seq}\n`);
    return 0;
  }
  const dtype = dtypeOf(str('dtype'));
  const op = REDUCING.has(c) || str('op') !== undefined ? opOf(str('op')) : 'sum';
  const count = positiveInt('count', str('count'), NaN, 0);
  if (Number.isNaN(count)) fail('--count is required');
  const root = positiveInt('root', str('root'), 0, 0);
  if (root >= n) fail(`--root must be a rank, below ${n}`);
  const inPlace = c === 'allreduce' || v['in-place'] === true;
  const seed = positiveInt('seed', str('seed'), Date.now() % 2 ** 31, 0);
  const k: CollectiveCase = { dtype, op, count, root, inPlace };
  const e = collectiveElements(c, count, n);
  const elem = DTYPES[dtype].bytes;
  const send = await allocRankBuffers(client, Math.max(1, (inPlace ? Math.max(e.send, e.recv) : e.send) * elem));
  const recv: RankBuffer[] = [];
  try {
    if (!inPlace) recv.push(...(await allocRankBuffers(client, Math.max(1, e.recv * elem))));
    const pairs: RankPair[] = send.map((s, r) => ({ send: s, recv: recv[r] }));
    const inputs = collectiveInputs(c, dtype, op, n, count, seed);
    const prior = randomInputs(dtype, 'max', n, e.recv, seed + 1);
    pairs.forEach((p, r) => fillRank(c, k, r, p, inputs[r], prior[r]));
    const times: number[] = [];
    let seq = 0;
    for (let i = 0; i < iters; i++) {
      // Each iteration but the first runs on the previous one's buffers; only the first is verified.
      const t0 = performance.now();
      ({ seq } =
        c === 'allreduce'
          ? await client.allReduce({ buffers: send, dtype, op, count })
          : await client.collective({ collective: c, dtype, op, count, root, send, recv: inPlace ? undefined : recv }));
      times.push(performance.now() - t0);
      if (i > 0 || !v.verify) continue;
      const refs = collectiveReference(c, inputs, k);
      let bad = 0;
      let checked = 0;
      let maxError = 0;
      pairs.forEach((p, r) => {
        const res = checkRank(c, k, r, p, refs[r], prior[r]);
        bad += res.mismatches;
        checked += refs[r]?.expected.length ?? prior[r].length;
        maxError = Math.max(maxError, res.maxError);
        for (const m of res.first) process.stderr.write(`mismatch: rank ${m.rank} [${m.index}] = ${m.got}, expected ${m.expected} ± ${m.allowed}\n`);
      });
      if (bad > 0) {
        process.stdout.write(`verify: FAILED, ${bad} of ${checked} elements out of tolerance\n`);
        return 1;
      }
      const per = refs[0]?.expected.length ?? e.recv;
      process.stdout.write(`verify: ok, ${per} elements × ${n} ranks within tolerance (largest error ${maxError})\n`);
    }
    const what = `${c} ${dtype}${REDUCING.has(c) ? ` ${op}` : ''}${ROOTED.has(c) ? ` root ${root}` : ''}${inPlace && c !== 'allreduce' ? ' in place' : ''}`;
    const sizes = inPlace || e.send === e.recv ? `${Math.max(e.send, e.recv) * elem} bytes each` : `${e.send * elem} bytes sent, ${e.recv * elem} received each`;
    process.stdout.write(`${what} count ${count} × ${n} ranks (${sizes}, ${client.server.backend} backend): ${timing(times)}, last seq ${seq}\n`);
    return 0;
  } finally {
    await freeRankBuffers(client, [...send, ...recv]);
  }
}

/** "1.234 ms", or the median and minimum of several. */
function timing(times: number[]): string {
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return times.length === 1 ? ms(median) : `median ${ms(median)}, min ${ms(sorted[0])} over ${times.length}`;
}

async function bench(client: Client, args: string[], socket: string | undefined): Promise<number> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      b: { type: 'string', short: 'b' },
      e: { type: 'string', short: 'e' },
      f: { type: 'string', short: 'f' },
      dtype: { type: 'string' },
      op: { type: 'string' },
      collective: { type: 'string' },
      group: { type: 'string' },
      iters: { type: 'string' },
      warmup: { type: 'string' },
      serial: { type: 'boolean' },
      direct: { type: 'boolean' },
    },
  });
  const dtype = dtypeOf(v.dtype ?? 'f32');
  const op = opOf(v.op ?? 'sum');
  const c = v.collective ?? 'allreduce';
  if (!isCollective(c)) fail(`--collective must be one of ${COLLECTIVES.join(', ')}`);
  const minBytes = parseSize(v.b ?? '8');
  const maxBytes = parseSize(v.e ?? '64M');
  const factor = Number(v.f ?? '2');
  if (!(minBytes > 0) || !(maxBytes >= minBytes)) fail('-b and -e are sizes such as 8, 64K, 256M, 1G, with -b ≤ -e');
  if (!(factor > 1)) fail('-f must be a number above 1');
  const members = positiveInt('group', v.group, 0);
  if (members > client.worldSize) fail(`--group must be at most the daemon's ${client.worldSize} ranks`);
  if (v.direct && (c !== 'allreduce' || members > 0)) fail('--direct times allreduce from one client only');
  const o: BenchOptions = {
    minBytes,
    maxBytes,
    factor,
    dtype,
    op,
    collective: c,
    iters: positiveInt('iters', v.iters, 20),
    warmup: positiveInt('warmup', v.warmup, 5, 0),
    serial: v.serial ?? false,
  };
  const n = members || client.worldSize;
  const what = c === 'allreduce' ? '' : `${c}, `;
  const how = c === 'barrier' ? '' : REDUCING.has(c) ? `, ${dtype} ${op}` : `, ${dtype}`;
  const where = `${what}${n} rank${n === 1 ? '' : 's'}, ${client.server.backend} backend${how}, ${o.serial ? 'one at a time' : `${o.iters} in flight`}`;
  if (members > 0) {
    const name = `bench-${process.pid}`;
    const results = await runMembers(socket, members, (rank) => ({ task: 'bench', name, size: members, rank, bench: o }));
    const rows = results.map((r) => r.messages.find((m) => m.rows)?.rows as BenchRow[] | undefined);
    if (results.some((r) => r.code !== 0) || rows.some((r) => r === undefined)) {
      results.forEach((r, rank) => r.code !== 0 && process.stderr.write(`ncclctl: group member ${rank} exited with ${r.code}\n`));
      return 1;
    }
    process.stdout.write(formatRows(slowestRows(rows as BenchRow[][], c, n), `through nccld, a group of ${members} processes: ${where}`).join('\n') + '\n');
    return 0;
  }
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

/** What a group member process is told to do (the hidden `group-member` command's one argument). */
type MemberTask = { name: string; size: number; rank: number } & (
  | { task: 'demo'; dtype: DType; op: ReduceOp; count: number; root: number; seed: number }
  | { task: 'bench'; bench: BenchOptions }
);

/** One result a member sends its parent. */
interface MemberReport {
  label?: string;
  ok?: boolean;
  rows?: BenchRow[];
}

/** Starts one process per group rank, each running this file's `group-member`, and waits for them all. */
function runMembers(socket: string | undefined, size: number, task: (rank: number) => MemberTask): Promise<{ code: number | null; messages: MemberReport[] }[]> {
  const self = fileURLToPath(import.meta.url);
  return Promise.all(
    Array.from({ length: size }, (_, rank) => {
      const argv = [...(socket === undefined ? [] : ['--socket', socket]), 'group-member', JSON.stringify(task(rank))];
      const child = fork(self, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      const messages: MemberReport[] = [];
      child.on('message', (m) => messages.push(m as MemberReport));
      return new Promise<{ code: number | null; messages: MemberReport[] }>((resolve) => child.on('exit', (code) => resolve({ code, messages })));
    }),
  );
}

async function groupDemo(client: Client, args: string[], socket: string | undefined): Promise<number> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      size: { type: 'string' },
      count: { type: 'string' },
      dtype: { type: 'string' },
      op: { type: 'string' },
      root: { type: 'string' },
      seed: { type: 'string' },
    },
  });
  const size = positiveInt('size', v.size, NaN);
  if (Number.isNaN(size)) fail('--size is required');
  if (size > client.worldSize) fail(`--size must be at most the daemon's ${client.worldSize} ranks`);
  const root = positiveInt('root', v.root, 0, 0);
  if (root >= size) fail(`--root must be a rank of the group, below ${size}`);
  const spec = {
    task: 'demo' as const,
    name: `demo-${process.pid}`,
    size,
    dtype: dtypeOf(v.dtype ?? 'f32'),
    op: opOf(v.op ?? 'sum'),
    count: positiveInt('count', v.count, 1024, 0),
    root,
    seed: positiveInt('seed', v.seed, Date.now() % 2 ** 31, 0),
  };
  process.stdout.write(`group ${spec.name}: ${size} member processes, ${client.server.backend} backend, ${spec.dtype} ${spec.op}, count ${spec.count}, root ${root}, seed ${spec.seed}\n`);
  const results = await runMembers(socket, size, (rank) => ({ ...spec, rank }));
  const problems: string[] = [];
  results.forEach((r, rank) => {
    for (const m of r.messages) if (m.ok === false) problems.push(`rank ${rank} ${m.label}`);
    if (r.code !== 0) problems.push(`member ${rank} exited with ${r.code}`);
  });
  const done = results.reduce((sum, r) => sum + r.messages.filter((m) => m.ok).length, 0);
  const failed = problems.length ? `; FAILED: ${problems.slice(0, 8).join(', ')}${problems.length > 8 ? `, and ${problems.length - 8} more` : ''}` : ', no failures';
  process.stdout.write(`group ${spec.name}: ${done} collectives ok over ${size} members${failed}\n`);
  return problems.length ? 1 : 0;
}

/** The hidden `group-member` command: one member of a demo or bench group, run by runMembers. */
async function groupMember(client: Client, task: MemberTask): Promise<number> {
  const report = (m: MemberReport) => new Promise<void>((resolve) => (process.send ? process.send(m, () => resolve()) : resolve()));
  const group = await client.joinGroup({ name: task.name, size: task.size, rank: task.rank });
  try {
    if (task.task === 'bench') {
      await report({ rows: await benchGroupMember(client, group, task.bench) });
      return 0;
    }
    return await demoMember(client, group, task, report);
  } finally {
    await group.leave().catch(() => {}); // a peer that left first dissolved the group already
  }
}

/** Every collective, out of place and in place, each checked against the reference on this member's rank. */
async function demoMember(
  client: Client,
  group: Group,
  t: Extract<MemberTask, { task: 'demo' }>,
  report: (m: MemberReport) => Promise<void>,
): Promise<number> {
  const { size: n, rank, dtype, op, count, root } = t;
  const bytes = Math.max(1, count * n * DTYPES[dtype].bytes); // the largest buffer any collective needs
  const device = group.devices[rank];
  const send = allocBuffer(client, device, bytes);
  const recv = allocBuffer(client, device, bytes);
  let failures = 0;
  let seed = t.seed;
  try {
    for (const c of COLLECTIVES) {
      for (const inPlace of c === 'alltoall' || c === 'barrier' ? [false] : [false, true]) {
        const label = `${c}${inPlace ? ' in place' : ''}`;
        const k: CollectiveCase = { dtype, op, count, root, inPlace };
        const pair: RankPair = inPlace ? { send } : { send, recv };
        // Every member draws every rank's inputs from the same seed, so each can compute the reference.
        const inputs = collectiveInputs(c, dtype, op, n, count, ++seed);
        const prior = randomInputs(dtype, 'max', n, collectiveElements(c, count, n).recv, seed + 1_000_000)[rank];
        if (c !== 'barrier') fillRank(c, k, rank, pair, inputs[rank], prior);
        const t0 = performance.now();
        let line: string;
        let ok = false;
        try {
          const { seq } = await group.collective({ collective: c, dtype, op, count, root, send, recv: pair.recv });
          const took = performance.now() - t0;
          const res = c === 'barrier' ? null : checkRank(c, k, rank, pair, collectiveReference(c, inputs, k)[rank], prior);
          ok = !res || res.mismatches === 0;
          line = ok ? `ok        ${ms(took)} (seq ${seq})` : `MISMATCH  ${ms(took)}: ${res!.mismatches} elements, first ${JSON.stringify(res!.first[0])}`;
        } catch (err) {
          const e = err as NccldError;
          line = `ERROR     ${e.code ?? ''} ${e.message}`;
        }
        if (!ok) failures++;
        process.stdout.write(`rank ${rank}/${n}: ${label.padEnd(22)} ${line}\n`);
        await report({ label, ok });
      }
    }
  } finally {
    await freeRankBuffers(client, [send, recv]);
  }
  return failures ? 1 : 0;
}

const COMMANDS = new Set<string>([...COLLECTIVES, 'bench', 'group-demo', 'group-member']);

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
  if (!COMMANDS.has(command)) fail(`unknown command "${command}"`);
  const rest = argv.slice(i + 1);
  const member = command === 'group-member' ? (JSON.parse(rest[0]) as MemberTask) : null;
  const client = await connect(socket, { name: member ? `ncclctl ${member.name} rank ${member.rank}` : 'ncclctl' });
  try {
    if (member) return await groupMember(client, member);
    if (command === 'bench') return await bench(client, rest, socket);
    if (command === 'group-demo') return await groupDemo(client, rest, socket);
    return await runCollective(client, command as CollectiveName, rest);
  } finally {
    await client.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    process.disconnect?.(); // a group member: let go of the parent's channel, or it keeps us alive
  },
  (err) => {
    process.stderr.write(`ncclctl: ${(err as Error).message}\n`);
    if (err instanceof UsageError) process.stderr.write(`\n${USAGE}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
    process.disconnect?.();
  },
);
