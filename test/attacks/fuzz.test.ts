// The protocol fuzzer (test/attacks/fuzz.ts) against a real daemon, with a well-behaved client
// beside it: 20,000 frames over six connections at once, reconnecting whenever the daemon hangs
// up. The daemon must answer every whole frame exactly once, close exactly the connections the
// protocol says it closes, keep its world ready with the same device processes, serve the good
// client correctly throughout, report no INTERNAL error, and leak no descriptor or registration.
// The seed is printed; set NCCLD_FUZZ_SEED (and NCCLD_FUZZ_FRAMES) to replay or lengthen a run.
// The fuzzer runs as its own process, so its requests count against its own limits.
import t from 'tap';
import path from 'node:path';
import { ErrorCodes } from '../../dist/client/index.js';
import { runForReport } from '../helpers/child.js';
import { alive, ROOT, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient } from '../helpers/good-client.js';
import { debugJson, fdCount, quietFdCount, rss, status } from '../helpers/inspect.js';
import type { FuzzReport } from './fuzz.js';

const rssMiB = (pid: number) => rss(pid) / (1 << 20);

function runFuzzer(socket: string, seed: number, frames: number): Promise<FuzzReport> {
  return runForReport<FuzzReport>('the fuzzer', ['--import=@tapjs/typescript/import', path.join(ROOT, 'test/attacks/fuzz.ts'), '--socket', socket, String(seed), String(frames)], {
    cwd: ROOT,
    env: { TS_NODE_TRANSPILE_ONLY: '1' },
    timeoutMs: 90_000,
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
  t.teardown(() => good.stop());
  const start = await status(d.debugSocket);
  const pids = start.ranks.map((r) => r.pid!);
  const fdsBefore = await quietFdCount(daemonPid);
  const rssBefore = rssMiB(daemonPid);

  const report = await runFuzzer(d.socket, seed, frames);
  const rssAfter = rssMiB(daemonPid);
  const goodReport = await good.stop();
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
  const end = await status(d.debugSocket);
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
