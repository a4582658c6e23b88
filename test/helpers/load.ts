// Pipelined AllReduce load from several clients, every result checked, every request accounted
// for: what the fault tests run while they break things.
import { connect, type Client } from '../../dist/client/index.js';
import { fromNumbers, randomInputs } from '../../dist/client/verify.js';
import { allocFilled, check } from './buffers.js';

export interface LoadReport {
  sent: number;
  answered: number;
  ok: number;
  wrong: number;
  errors: Record<string, number>;
  /** The first message seen for each error code, for diagnostics. */
  messages: Record<string, string>;
  /** Longest time any request took to end, in ms. */
  slowest: number;
  /** Date.now() of every success and every failure (the daemon's log clock), for "first success after the fault". */
  successes: number[];
  failures: number[];
}

export async function runLoad(socket: string, opts: { clients: number; inFlight: number; count: number; durationMs: number; timeoutMs: number }): Promise<LoadReport> {
  const report: LoadReport = { sent: 0, answered: 0, ok: 0, wrong: 0, errors: {}, messages: {}, slowest: 0, successes: [], failures: [] };
  const stopAt = Date.now() + opts.durationMs;
  const clients: Client[] = await Promise.all(Array.from({ length: opts.clients }, (_, c) => connect(socket, { name: `load-${c}` })));
  let seed = 1;
  await Promise.all(
    clients.flatMap((client) =>
      Array.from({ length: opts.inFlight }, async () => {
        // Each slot reuses one set of buffers, refilled before every request.
        const slot = allocFilled(client.worldSize, 'f32', 'sum', opts.count, seed++);
        while (Date.now() < stopAt) {
          const inputs = randomInputs('f32', 'sum', client.worldSize, opts.count, seed++);
          slot.buffers.forEach((b, r) => fromNumbers(b.view('f32', 0, opts.count), 'f32', inputs[r]));
          const t0 = Date.now();
          report.sent++;
          try {
            await client.allReduce({ buffers: slot.buffers, dtype: 'f32', op: 'sum', count: opts.count, timeoutMs: opts.timeoutMs });
            report.ok++;
            report.successes.push(Date.now());
            if (check(slot.buffers, inputs, 'f32', 'sum', opts.count).mismatches) report.wrong++;
          } catch (err) {
            report.failures.push(Date.now());
            const code = (err as { code?: string }).code ?? 'unknown';
            report.errors[code] = (report.errors[code] ?? 0) + 1;
            report.messages[code] ??= (err as Error).message;
          }
          report.answered++;
          report.slowest = Math.max(report.slowest, Date.now() - t0);
        }
        slot.buffers.forEach((b) => b.free());
      }),
    ),
  );
  await Promise.all(clients.map((c) => c.close()));
  return report;
}
