// Collective cases laid out in real buffers and checked against client/verify.ts's float64
// references, for test/collectives.test.ts: from one client naming every rank's buffers, and (run
// as a program, forked by the test) from one member process of a group, over the SDK's Group.
//
//   node --import=@tapjs/typescript/import test/helpers/collective-member.ts '<MemberSpec as JSON>'
//
// A member talks to its parent over the fork IPC channel: it says 'joined', waits for 'go' if
// told to, stops before the collectives listed in `holds` until the parent sends 'release' for
// them, says 'done' after each collective (its seq and the result of the check), and exits 0
// when every check passed.
import { pathToFileURL } from 'node:url';
import { connect, DTYPES, type BufferArg, type BufferSlot, type Client, type CollectiveResult, type DType, type Group, type ReduceOp } from '../../dist/client/index.js';
import { allocBuffer, checkRank, fillRank, freeRankBuffers, readValues, writeValues, type RankBuffer, type RankPair } from '../../dist/client/rank-buffers.js';
import { collectiveInputs, collectiveReference, compare, randomInputs, type CollectiveCase, type Mismatch } from '../../dist/client/verify.js';
import { collectiveElements, type CollectiveName } from '../../dist/shared/protocol.js';

/** One collective to run: what NCCL is asked, and whether in place. */
export interface Case {
  c: CollectiveName;
  dtype: DType;
  op: ReduceOp;
  count: number;
  root: number;
  inPlace: boolean;
  /**
   * In place, named as NCCL names it: send and recv both given, in NCCL's in-place relation on
   * one registration (the same slot; allgather's send at block `rank` of its recv; reducescatter's
   * recv at block `rank` of its send). The memory layout is that of `inPlace`.
   */
  explicit?: boolean;
}

/** Elements written after every buffer's used region, which no collective may touch. */
export const GUARD = 4;

export const label = (k: Case): string =>
  k.c === 'barrier'
    ? 'barrier'
    : `${k.c} ${k.dtype}${['allreduce', 'reduce', 'reducescatter'].includes(k.c) ? ` ${k.op}` : ''}${['broadcast', 'reduce'].includes(k.c) ? ` root ${k.root}` : ''} count ${k.count}${k.inPlace ? (k.explicit ? ' in place, send and recv named' : ' in place') : ''}`;

/** The send and recv slots of an explicit in-place case, in `buffer` (a registered number) of rank `rank`. */
export function explicitSlots(k: Case, rank: number, buffer: number): { send: BufferSlot; recv: BufferSlot } {
  const block = rank * k.count * DTYPES[k.dtype].bytes;
  return {
    send: { buffer, offset: k.c === 'allgather' ? block : 0 },
    recv: { buffer, offset: k.c === 'reducescatter' ? block : 0 },
  };
}

/** Elements of each buffer of one rank: the send buffer (the only one in place) and the receive buffer. */
export function lengths(k: Case, n: number): { send: number; recv: number } {
  const e = collectiveElements(k.c, k.count, n);
  return k.inPlace ? { send: Math.max(e.send, e.recv), recv: 0 } : e;
}

/** Bytes a rank's buffer needs to hold any of `cases`, guards included. */
export function bytesFor(cases: Case[], n: number): number {
  let most = 1;
  for (const k of cases) {
    const l = lengths(k, n);
    most = Math.max(most, (Math.max(l.send, l.recv) + GUARD) * DTYPES[k.dtype].bytes);
  }
  return most;
}

/** Every rank's inputs, what each receive buffer held before, and the guards' values: all from `seed`. */
export interface CaseData {
  inputs: Float64Array[];
  prior: Float64Array[];
  guard: Float64Array;
}

export function caseData(k: Case, n: number, seed: number): CaseData {
  const e = collectiveElements(k.c, k.count, n);
  return {
    inputs: k.c === 'barrier' ? [] : collectiveInputs(k.c, k.dtype, k.op, n, k.count, seed),
    prior: randomInputs(k.dtype, 'max', n, e.recv, seed + 1_000_003),
    guard: randomInputs(k.dtype, 'max', 1, GUARD, seed + 2_000_003)[0],
  };
}

/** Writes rank `rank`'s input, its receive buffer's prior contents, and the guards after both. */
export function prepare(k: Case, n: number, rank: number, pair: RankPair, d: CaseData): void {
  if (k.c === 'barrier') return;
  const l = lengths(k, n);
  fillRank(k.c, caseOf(k), rank, pair, d.inputs[rank], d.prior[rank]);
  writeValues(pair.send, k.dtype, GUARD, d.guard, l.send);
  if (pair.recv) writeValues(pair.recv, k.dtype, GUARD, d.guard, l.recv);
}

export interface Check {
  /** Elements of the result out of tolerance (or, where the buffer must be left, changed). */
  mismatches: number;
  first: Mismatch[];
  /** Other things wrong: a guard or an out-of-place send buffer written. */
  problems: string[];
}

const caseOf = (k: Case): CollectiveCase => ({ dtype: k.dtype, op: k.op, count: k.count, root: k.root, inPlace: k.inPlace });
const exact = (v: Float64Array) => ({ expected: v, allowed: new Float64Array(v.length) });

/**
 * Checks rank `rank` after the collective: its result against the reference (reduce, out of
 * place, on a rank but the root: its receive buffer as it was), its send buffer unchanged out of
 * place, and no element written past either buffer's region.
 */
export function check(k: Case, n: number, rank: number, pair: RankPair, d: CaseData): Check {
  if (k.c === 'barrier') return { mismatches: 0, first: [], problems: [] };
  const l = lengths(k, n);
  const res = checkRank(k.c, caseOf(k), rank, pair, collectiveReference(k.c, d.inputs, caseOf(k))[rank], d.prior[rank]);
  const problems: string[] = [];
  const untouched = (what: string, b: RankBuffer, want: Float64Array, at: number) => {
    const r = compare(readValues(b, k.dtype, want.length, at), exact(want), rank, 1);
    if (r.mismatches > 0) problems.push(`rank ${rank}: ${r.mismatches} elements of its ${what} changed, first [${r.first[0].index}] ${r.first[0].expected} -> ${r.first[0].got}`);
  };
  untouched('send guard', pair.send, d.guard, l.send);
  if (pair.recv) {
    untouched('recv guard', pair.recv, d.guard, l.recv);
    untouched('send buffer (out of place)', pair.send, d.inputs[rank], 0);
  }
  return { mismatches: res.mismatches, first: res.first, problems };
}

/** The Group method for the case, with this member's buffers. */
export function runInGroup(g: Group, k: Case, send: BufferArg, recv: BufferArg | undefined, timeoutMs: number): Promise<CollectiveResult> {
  const { dtype, op, count, root } = k;
  switch (k.c) {
    case 'allreduce':
      return g.allReduce({ send, recv, dtype, op, count, timeoutMs });
    case 'broadcast':
      return g.broadcast({ send, recv, dtype, count, root, timeoutMs });
    case 'reduce':
      return g.reduce({ send, recv, dtype, op, count, root, timeoutMs });
    case 'allgather':
      return g.allGather({ send, recv, dtype, count, timeoutMs });
    case 'reducescatter':
      return g.reduceScatter({ send, recv, dtype, op, count, timeoutMs });
    case 'alltoall':
      return g.allToAll({ send, recv: recv!, dtype, count, timeoutMs });
    case 'barrier':
      return g.barrier({ timeoutMs });
  }
}

/** What the test tells a member process to do. */
export interface MemberSpec {
  socket: string;
  name: string;
  size: number;
  rank: number;
  /** The world rank this member's buffers live on. */
  device: number;
  /** Case i draws its data from seed + i (every member alike, so each can compute the reference). */
  seed: number;
  cases: Case[];
  /** Wait for the parent's 'go' after joining. */
  waitForGo?: boolean;
  /** Indices of cases to stop before, each until the parent sends {type: 'release', index}. */
  holds?: number[];
}

export type ToMember = { type: 'go' } | { type: 'release'; index: number };
export type FromMember =
  | { type: 'joined'; rank: number; devices: number[] }
  | { type: 'holding'; rank: number; index: number }
  | { type: 'done'; rank: number; index: number; label: string; seq?: number; error?: string; mismatches: number; first: Mismatch[]; problems: string[] }
  | { type: 'finished'; rank: number; failures: number };

async function member(spec: MemberSpec): Promise<number> {
  const send = (m: FromMember) => new Promise<void>((resolve) => process.send!(m, () => resolve()));
  const inbox: ToMember[] = [];
  let wake: (() => void) | null = null;
  process.on('message', (m: ToMember) => {
    inbox.push(m);
    wake?.();
  });
  const receive = async (want: (m: ToMember) => boolean) => {
    for (;;) {
      const i = inbox.findIndex(want);
      if (i >= 0) return inbox.splice(i, 1)[0];
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  const { rank, size: n } = spec;
  const client: Client = await connect(spec.socket, { name: `${spec.name} member ${rank}` });
  const group = await client.joinGroup({ name: spec.name, size: n, rank, device: spec.device, timeoutMs: 20_000 });
  await send({ type: 'joined', rank, devices: [...group.devices] });
  if (spec.waitForGo) await receive((m) => m.type === 'go');
  const bytes = bytesFor(spec.cases, n);
  const buffers = [allocBuffer(client, spec.device, bytes), allocBuffer(client, spec.device, bytes)];
  let failures = 0;
  try {
    for (const [index, k] of spec.cases.entries()) {
      if (spec.holds?.includes(index)) {
        await send({ type: 'holding', rank, index });
        await receive((m) => m.type === 'release' && m.index === index);
      }
      const pair: RankPair = k.inPlace || k.c === 'barrier' ? { send: buffers[0] } : { send: buffers[0], recv: buffers[1] };
      const d = caseData(k, n, spec.seed + index);
      prepare(k, n, rank, pair, d);
      let seq: number | undefined;
      let error: string | undefined;
      let res: Check = { mismatches: 0, first: [], problems: [] };
      try {
        const slots = k.explicit ? explicitSlots(k, rank, await client.register(buffers[0])) : pair;
        ({ seq } = await runInGroup(group, k, slots.send, slots.recv, 15_000));
        res = check(k, n, rank, pair, d);
      } catch (err) {
        error = `${(err as { code?: string }).code ?? ''} ${(err as Error).message}`;
      }
      if (error || res.mismatches || res.problems.length) failures++;
      await send({ type: 'done', rank, index, label: label(k), seq, error, ...res });
    }
  } finally {
    await group.leave().catch(() => {}); // a peer that left first dissolved it already
    await freeRankBuffers(client, buffers);
    await client.close();
  }
  await send({ type: 'finished', rank, failures });
  return failures ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  member(JSON.parse(process.argv[2]) as MemberSpec).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`member: ${(err as Error).stack ?? err}\n`);
      process.exit(2);
    },
  );
}
