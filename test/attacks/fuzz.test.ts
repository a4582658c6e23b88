// The protocol fuzzer (test/attacks/fuzz.ts) against a real daemon, with a well-behaved client
// beside it: 20,000 frames over six connections at once, reconnecting whenever the daemon hangs
// up. The daemon must answer every whole frame exactly once, close exactly the connections the
// protocol says it closes, keep its world ready with the same device processes, serve the good
// client correctly throughout, report no INTERNAL error, and leak no descriptor or registration.
// The seed is printed; set NCCLD_FUZZ_SEED (and NCCLD_FUZZ_FRAMES) to replay or lengthen a run.
// The fuzzer runs as its own process, so its requests count against its own limits.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { ErrorCodes } from '../../dist/client/index.js';
import { alive, debugCommand, ROOT, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient } from '../helpers/good-client.js';
import type { FuzzReport } from './fuzz.js';

interface Status {
  world: { state: string; rebuilds: number };
  registeredBuffers: number;
  ranks: { pid: number }[];
}

async function debugJson<T>(socket: string, command: string): Promise<T> {
  const out = await debugCommand(socket, 'format json', command);
  const docs = out.trim().split('\n').map((l) => JSON.parse(l) as { ok: boolean; command: string; result: T; error?: string });
  const doc = docs.find((x) => x.command === command.split(' ')[0]);
  if (!doc?.ok) throw new Error(`debug ${command}: ${doc?.error ?? out}`);
  return doc.result;
}

const fdCount = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

/** A process's descriptor count once nothing is closing (a debug connection, say): the same for 400 ms. */
async function quietFdCount(pid: number): Promise<number> {
  let last = fs.readdirSync(`/proc/${pid}/fd`).length;
  for (let stable = 0; stable < 4; ) {
    await new Promise((r) => setTimeout(r, 100));
    const n = fs.readdirSync(`/proc/${pid}/fd`).length;
    stable = n === last ? stable + 1 : 0;
    last = n;
  }
  return last;
}
const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

function runFuzzer(socket: string, seed: number, frames: number): Promise<FuzzReport> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--import=@tapjs/typescript/import', path.join(ROOT, 'test/attacks/fuzz.ts'), '--socket', socket, String(seed), String(frames)], {
      cwd: ROOT,
      env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (err += c));
    const kill = setTimeout(() => proc.kill('SIGKILL'), 90_000);
    proc.once('exit', (code) => {
      clearTimeout(kill);
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!) as FuzzReport);
      } catch {
        reject(new Error(`the fuzzer exited ${code} without a report: ${out.slice(-1000)} ${err.slice(-3000)}`));
      }
    });
  });
}

t.test('20,000 fuzzed frames: every one answered, nothing broken, the good client served', async (t) => {
  const seed = process.env.NCCLD_FUZZ_SEED ? Number(process.env.NCCLD_FUZZ_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  const frames = Number(process.env.NCCLD_FUZZ_FRAMES ?? 20_000);
  t.comment(`fuzz seed ${seed} (replay: NCCLD_FUZZ_SEED=${seed}), ${frames} frames`);
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const daemonPid = d.proc.pid!;
  const good = await startGoodClient(d.socket);
  let goodStopped = false;
  t.teardown(async () => {
    if (!goodStopped) await good.stop();
  });
  const start = await debugJson<Status>(d.debugSocket, 'status');
  const pids = start.ranks.map((r) => r.pid);
  const fdsBefore = await quietFdCount(daemonPid);
  const rssBefore = rssMiB(daemonPid);

  const report = await runFuzzer(d.socket, seed, frames);
  const rssAfter = rssMiB(daemonPid);
  const goodReport = await good.stop();
  goodStopped = true;
  t.comment(`fuzzer: ${report.frames} frames in ${report.ms} ms over ${report.connections} connections (${report.decodable} decodable maps, ${report.undecodable} not; ${report.withFds} with descriptors); ${report.replies} replies; missing ${report.missing}, extra ${report.extra}`);
  t.comment(`connection endings: ${JSON.stringify(report.endings)}`);
  t.comment(`replies by code: ${JSON.stringify(report.byCode)}`);
  t.comment(`good client: ${goodReport.ok} ok, p50 ${goodReport.p50.toFixed(2)} ms, p99 ${goodReport.p99.toFixed(2)} ms, errors ${JSON.stringify(goodReport.errors)}; daemon RSS ${rssBefore.toFixed(1)} -> ${rssAfter.toFixed(1)} MiB`);

  t.ok(report.frames >= frames, `the fuzzer sent ${report.frames} frames`);
  t.equal(report.missing, 0, 'every whole frame got its reply');
  t.equal(report.extra, 0, 'and no more than one');
  t.equal(report.replies, report.frames, 'replies = frames');
  t.equal(report.unexpectedCloses, 0, 'the daemon closed no connection it had no reason to close');
  t.equal(report.missedCloses, 0, 'and closed every one it had to (oversized length, refused version)');
  t.ok(report.connections > 20, 'the fuzzer reconnected many times');
  t.ok((report.byCode.result ?? 0) > 0, 'some fuzzed requests were valid and ran');
  t.notOk(report.byCode[ErrorCodes.INTERNAL], 'no INTERNAL error among the replies');

  t.ok(alive(daemonPid), 'the daemon is alive');
  const end = await debugJson<Status>(d.debugSocket, 'status');
  t.equal(end.world.state, 'ready', 'the world is ready');
  t.equal(end.world.rebuilds, 0, 'never rebuilt');
  t.same(end.ranks.map((r) => r.pid), pids, 'the same device processes');
  t.ok(goodReport.ok > 20, `the good client was served throughout (${goodReport.ok})`);
  t.equal(goodReport.wrong, 0, 'every result right');
  t.same(goodReport.errors, {}, 'no error');
  const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'the daemon counted no INTERNAL error');
  t.equal(end.registeredBuffers, 0, 'every registration went with its connection');
  const mapped = await debugJson<{ mapped: number }[]>(d.debugSocket, 'buffers');
  t.ok(mapped.every((m) => m.mapped === 0), 'the ranks hold no mapping');
  await until("the daemon's descriptors back to where they were", () => fdCount(daemonPid) <= fdsBefore, 5_000).catch(() => {});
  t.ok(fdCount(daemonPid) <= fdsBefore, `the daemon holds no more descriptors than before (${fdCount(daemonPid)} now, ${fdsBefore} before): none of the ${report.withFds} sent leaked`);
});
