// A well-behaved client that runs alongside an attack: one connection, AllReduce after AllReduce
// on its own buffers, every result checked against a float64 reference, every latency kept. The
// attack tests assert that it kept being served, correctly, while the attack ran.
import { connect, type Client } from '../../dist/client/index.js';
import { fromNumbers, randomInputs } from '../../dist/client/verify.js';
import { allocFilled, check } from './buffers.js';

export interface GoodReport {
  ok: number;
  wrong: number;
  errors: Record<string, number>;
  /** Latency of each success, ms. */
  latencies: number[];
  p50: number;
  p99: number;
}

export interface GoodClient {
  client: Client;
  /**
   * Stops the loop after the request in flight and resolves with what it saw. Idempotent (a
   * later call gets the same report), so a test may stop it itself and in its teardown both.
   */
  stop(): Promise<GoodReport>;
}

export async function startGoodClient(socket: string, opts: { count?: number; timeoutMs?: number; pauseMs?: number } = {}): Promise<GoodClient> {
  const count = opts.count ?? 1024;
  const client = await connect(socket, { name: 'good-client' });
  const report: GoodReport = { ok: 0, wrong: 0, errors: {}, latencies: [], p50: NaN, p99: NaN };
  const slot = allocFilled(client.worldSize, 'f32', 'sum', count, 7);
  let running = true;
  let seed = 100;
  const loop = (async () => {
    while (running) {
      const inputs = randomInputs('f32', 'sum', client.worldSize, count, seed++);
      slot.buffers.forEach((b, r) => fromNumbers(b.view('f32', 0, count), 'f32', inputs[r]));
      const t0 = performance.now();
      try {
        await client.allReduce({ buffers: slot.buffers, dtype: 'f32', op: 'sum', count, timeoutMs: opts.timeoutMs ?? 20_000 });
        report.latencies.push(performance.now() - t0);
        report.ok++;
        if (check(slot.buffers, inputs, 'f32', 'sum', count).mismatches) report.wrong++;
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'unknown';
        report.errors[code] = (report.errors[code] ?? 0) + 1;
        if (code === 'NCCLD_ERR_CONNECTION_CLOSED') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
    }
  })();
  let stopped: Promise<GoodReport> | undefined;
  return {
    client,
    stop: () =>
      (stopped ??= (async () => {
        running = false;
        await loop;
        await client.close().catch(() => {});
        for (const b of slot.buffers) b.free();
        const sorted = [...report.latencies].sort((a, b) => a - b);
        report.p50 = sorted[Math.floor(sorted.length / 2)] ?? NaN;
        report.p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? NaN;
        return report;
      })()),
  };
}
