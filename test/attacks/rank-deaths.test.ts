// Attack: near-simultaneous rank deaths. A rebuild used to restart only the rank whose exit it
// saw first: the world reported ready with a rank exited, and the next collective of any client
// failed with DEVICE_LOST. Now every rank that is not alive and healthy is restarted, and every
// rank is pinged before the world says ready. Here several device processes are SIGKILLed in the
// same tick, round after round, while a well-behaved client keeps working.
import t, { type Test } from 'tap';
import { performance } from 'node:perf_hooks';
import { connect } from '../../dist/client/index.js';
import { alive, startDaemon, until } from '../helpers/daemon.js';
import { checkedAllReduce } from '../helpers/buffers.js';
import { startGoodClient } from '../helpers/good-client.js';
import { ops, status } from '../helpers/inspect.js';

/**
 * Which ranks each round kills, all in one loop. On a loaded machine the loop itself can be
 * preempted between two kills (the first death wakes the daemon), so a rank may still answer the
 * rebuild's ping and die just after: the rebuild must then notice and try again, never say ready.
 * With `stopFirst`, every victim is SIGSTOPped before any is killed: from the first death the
 * daemon sees, none of them can answer, which is "simultaneous" as the daemon can tell it, and
 * one rebuild attempt must restart them all.
 */
const ROUNDS: { victims: number[]; stopFirst: boolean }[] = [
  { victims: [0, 1, 2, 3], stopFirst: false },
  { victims: [0, 1, 2, 3], stopFirst: true },
  { victims: [0, 1, 2], stopFirst: false },
  { victims: [1, 2, 3], stopFirst: true },
  { victims: [3, 2, 1, 0], stopFirst: false },
  { victims: [0, 2, 3], stopFirst: true },
];

t.test('SIGKILL of 3 or 4 of 4 device processes in the same tick, 6 rounds: every rank comes back, nothing submitted after ready fails', async (t: Test) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4', '--restart-limit', '50', '--timeout-ms', '10000']);
  t.teardown(() => d.stop());
  const checker = await connect(d.socket, { name: 'checker' });
  t.teardown(() => checker.close());
  const good = await startGoodClient(d.socket);
  await new Promise((r) => setTimeout(r, 200));

  const figures: string[] = [];
  let seed = 1;
  for (const [round, { victims, stopFirst }] of ROUNDS.entries()) {
    const before = await status(d.debugSocket);
    t.equal(before.world.state, 'ready', `round ${round + 1}: ready before the kill`);
    const pids = before.ranks.map((r) => r.pid!);
    const t0 = performance.now();
    if (stopFirst) for (const r of victims) process.kill(pids[r], 'SIGSTOP');
    for (const r of victims) process.kill(pids[r], 'SIGKILL');

    // As soon as the daemon has seen a death: collectives sent now wait for the rebuilt world.
    await until(`round ${round + 1}: the deaths to be seen`, async () => (await status(d.debugSocket)).world.rebuilds > before.world.rebuilds, 10_000);
    const waiting: Promise<PromiseSettledResult<{ mismatches: number }>[]> = Promise.allSettled(Array.from({ length: 4 }, () => checkedAllReduce(checker, 'f32', 'sum', 10_000, seed++)));
    await until(
      `round ${round + 1}: the world to be rebuilt`,
      async () => {
        const s = await status(d.debugSocket);
        return s.world.rebuilds > before.world.rebuilds && s.world.state === 'ready';
      },
      20_000,
    );
    const readyMs = performance.now() - t0;
    // Right away: a client that sees `ready` must be served, on every rank.
    const checks = (await waiting).concat(await Promise.allSettled<Promise<{ mismatches: number }>[]>([
      ...Array.from({ length: 4 }, () => checkedAllReduce(checker, 'f32', 'sum', 10_000, seed++)),
      (async () => {
        let bad = 0;
        for (let i = 0; i < 6; i++) bad += (await checkedAllReduce(checker, 'f32', 'sum', 1000, seed++)).mismatches;
        return { mismatches: bad };
      })(),
    ]));
    const failed = checks.flatMap((c) => (c.status === 'rejected' ? [`${(c.reason as { code?: string }).code}: ${(c.reason as Error).message}`] : []));
    t.same(failed, [], `round ${round + 1}: every AllReduce sent during the rebuild or after ready succeeded (no DEVICE_LOST)`);
    t.equal(
      checks.reduce((n, c) => n + (c.status === 'fulfilled' ? c.value.mismatches : 0), 0),
      0,
      `round ${round + 1}: and each was correct`,
    );

    const now = await status(d.debugSocket);
    t.equal(now.world.state, 'ready', `round ${round + 1}: still ready`);
    t.ok(
      now.ranks.every((r) => r.state === 'ready' && r.pid !== null && alive(r.pid)),
      `round ${round + 1}: every rank is ready in a live process (${now.ranks.map((r) => `${r.rank}:${r.state}:${r.pid}`).join(' ')})`,
    );
    for (const r of victims) t.not(now.ranks[r].pid, pids[r], `round ${round + 1}: killed rank ${r} runs in a new process`);
    for (const r of [0, 1, 2, 3].filter((x) => !victims.includes(x))) t.equal(now.ranks[r].pid, pids[r], `round ${round + 1}: rank ${r}, not killed, was kept`);
    t.ok(victims.every((r) => !alive(pids[r])), `round ${round + 1}: the killed processes are gone`);
    const rebuilds = now.world.rebuilds - before.world.rebuilds;
    if (stopFirst) {
      // No victim could answer once the first death was seen: one attempt restarts them all.
      if (!t.equal(rebuilds, 1, `round ${round + 1}: one rebuild attempt restarted every dead rank`)) {
        t.comment(JSON.stringify(d.logs.filter((l) => typeof l.msg === 'string' && /world|rebuil|exited|forked/.test(l.msg as string)).slice(-30)));
      }
    } else {
      t.ok(rebuilds >= 1 && rebuilds <= victims.length, `round ${round + 1}: ${rebuilds} rebuild attempt(s)`);
    }

    // The good client is served on the new generation (the flight recorder says which).
    await until(
      `round ${round + 1}: a good-client collective done on generation ${now.world.generation}`,
      async () => (await ops(d.debugSocket)).recent.some((o) => o.clientName === 'good-client' && o.state === 'done' && o.generation === now.world.generation),
      5000,
    );
    t.pass(`round ${round + 1}: the good client was served again on generation ${now.world.generation}`);
    figures.push(`round ${round + 1} (killed ${victims.join(',')}${stopFirst ? ', stopped first' : ''}): ready ${readyMs.toFixed(0)} ms after the kill, ${rebuilds} rebuild attempt(s)`);
  }

  const report = await good.stop();
  const s = await status(d.debugSocket);
  t.equal(s.world.state, 'ready', 'the world is ready at the end');
  t.equal(s.world.failure, null, 'it never failed');
  t.ok(report.ok > 0, `the good client was served: ${report.ok} correct AllReduces, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms`);
  t.equal(report.wrong, 0, 'every result it got was correct');
  const codes = Object.keys(report.errors);
  t.ok(codes.every((c) => ['NCCLD_ERR_DEVICE_LOST', 'NCCLD_ERR_ABORTED'].includes(c)), `its only errors say a device was lost (${JSON.stringify(report.errors)})`);
  const failures = Object.values(report.errors).reduce((a, b) => a + b, 0);
  // It has one collective in flight at a time: only the one on the ranks at each kill may fail.
  t.ok(failures <= ROUNDS.length, `at most one failure per kill: ${failures} in ${ROUNDS.length} rounds`);
  t.comment(`figure: ${figures.join('; ')}`);
  t.comment(
    `figure: ${ROUNDS.length} rounds, world ${s.world.state}, ${s.world.rebuilds} rebuilds in all, generation ${s.world.generation}; ` +
      `good client ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, wrong ${report.wrong}, errors ${JSON.stringify(report.errors)}`,
  );
});
