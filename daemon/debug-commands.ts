// What the debug socket's commands answer. Each returns lines for people and a plain value for
// `format json`; debug-server.ts owns the socket, this file only knows the daemon.
import type { Daemon } from './daemon.js';
import type { OpRecord } from './flight-recorder.js';
import { LOG_LEVELS } from './config.js';
import { formatStatus, pad } from './status.js';

export interface Answer {
  lines: string[];
  data: unknown;
}

export const HELP = [
  'commands:',
  '  help                 this list',
  '  status               backend, world state, generation and size, each rank, requests served',
  '  ranks                each rank: pid, device, state, generation, collectives done, last error',
  '  clients              each client: peer pid and uid, requests in flight, buffers named',
  '  ops [N]              flight recorder: every collective in flight and the last N (20) finished,',
  '                       with each rank\'s state, so a stuck one shows which rank has not finished',
  '  stats                limits (value, in use, refusals), counts, bytes, errors by code, latency by size',
  '  groups               each group: members (rank, pid, device), collectives done, and for one that',
  '                       waits, which ranks have sent which collective and since when',
  '  buffers              per rank: client buffers mapped now, CUDA IPC handles opened and closed',
  '  log-level <level>    change the log level of the daemon and its device processes',
  '  rebuild              rebuild the world now; brings a failed world back with a fresh restart budget',
  '  format json|text     answer each command on this connection as one JSON document, or as text',
  '  keepalive            keep this connection open for more commands (closes 10 minutes idle)',
  '  quit                 close this connection',
  '  inject <rank> crash|hang|fail|crash-loop|clear',
  '                       fault injection (needs --enable-fault-injection)',
  'every reply ends with a line OK or ERROR: <reason>; in json format, one JSON document per reply',
];

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());


function opLine(o: OpRecord): string {
  const ranks = o.ranks.length ? o.ranks.map((s, r) => `${r}:${s}`).join(' ') : '-';
  const times = `queued ${iso(o.queuedAt)}${o.startedAt ? `, started +${o.startedAt - o.queuedAt} ms` : ''}${o.finishedAt ? `, finished +${o.finishedAt - o.queuedAt} ms` : ''}`;
  return pad([o.seq ?? '-', `${o.client}/${o.requestId}`, `${o.kind} ${o.dtype} ${o.op}`, o.bytes, o.state, ranks], [6, 10, 20, 11, 8, 0]) + `  ${times}${o.error ? `  ${o.error}` : ''}`;
}

export class DebugCommands {
  constructor(private readonly daemon: Daemon) {}

  async run(command: string, args: string[]): Promise<Answer> {
    const d = this.daemon;
    switch (command) {
      case 'help':
        return { lines: [...HELP], data: { commands: HELP.slice(1, -1) } };
      case 'status': {
        const s = d.status();
        return { lines: formatStatus(s), data: s };
      }
      case 'ranks': {
        const ranks = d.status().ranks;
        const w = [4, 8, 8, 9, 10, 11, 9];
        return {
          lines: [
            pad(['rank', 'pid', 'device', 'state', 'generation', 'collectives', 'in-flight'], w) + '  last error',
            ...ranks.map((r) => pad([r.rank, r.pid ?? '-', r.device ?? 'host', r.state, r.generation, r.collectivesDone, r.inFlight], w) + `  ${r.lastError ?? '-'}`),
          ],
          data: ranks,
        };
      }
      case 'clients': {
        const clients = [...d.api.sessions.values()].map((s) => ({
          client: s.id,
          name: s.clientName,
          pid: s.peer?.pid ?? null,
          uid: s.peer?.uid ?? null,
          inFlight: s.requestsInFlight,
          buffers: s.buffers.size,
          served: s.requestsServed,
          connectedSeconds: Math.round((Date.now() - s.connectedAt) / 1000),
        }));
        const w = [6, 16, 8, 6, 9, 7, 7];
        return {
          lines: [
            pad(['client', 'name', 'pid', 'uid', 'in-flight', 'buffers', 'served'], w) + '  connected',
            ...clients.map((c) => pad([c.client, c.name ?? '-', c.pid ?? '-', c.uid ?? '-', c.inFlight, c.buffers, c.served], w) + `  ${c.connectedSeconds}s`),
          ],
          data: clients,
        };
      }
      case 'ops': {
        const n = args[0] === undefined ? 20 : Number(args[0]);
        if (!Number.isInteger(n) || n < 0) throw new Error('usage: ops [N], N the number of finished collectives to show');
        const inFlight = d.recorder.inFlight();
        const recent = d.recorder.recent(n);
        const header = pad(['seq', 'client/id', 'collective', 'bytes', 'state', 'ranks'], [6, 10, 20, 11, 8, 0]);
        return {
          lines: [`in flight: ${inFlight.length}`, header, ...inFlight.map(opLine), `last ${recent.length} finished:`, header, ...recent.map(opLine)],
          data: { inFlight, recent },
        };
      }
      case 'stats': {
        const s = d.stats.snapshot();
        const limits = d.limits();
        const w = [8, 8, 10, 10, 10, 10, 10];
        const lw = [38, 10, 8, 32, 0];
        return {
          lines: [
            pad(['limit', 'value', 'in use', 'code when over', 'refused'], lw),
            ...limits.map((l) => pad([l.name, l.limit, l.inUse ?? '-', l.code, l.refused], lw)),
            `collectives: ${s.collectives} completed, ${s.failed} failed; ${s.bytes} bytes reduced (per buffer)`,
            `errors by code: ${Object.entries(s.errors).map(([c, n]) => `${c} ${n}`).join(', ') || 'none'}`,
            pad(['size', 'count', 'p50 ms', 'p90 ms', 'p99 ms', 'algbw GB/s', 'busbw GB/s'], w),
            ...s.buckets.map((b) => pad([b.bucket, b.count, b.p50Ms.toFixed(3), b.p90Ms.toFixed(3), b.p99Ms.toFixed(3), b.algBwGBps.toFixed(2), b.busBwGBps.toFixed(2)], w)),
          ],
          data: { ...s, limits },
        };
      }
      case 'groups': {
        const groups = d.groups.list().map((g) => d.groups.describe(g));
        if (groups.length === 0) return { lines: ['no groups'], data: groups };
        const lines: string[] = [];
        for (const g of groups) {
          lines.push(`group ${JSON.stringify(g.name)} (#${g.number}): ${g.state}, size ${g.size}, ${g.collectivesDone} collectives done${g.reason ? `; ${g.reason}` : ''}`);
          for (const m of g.members) lines.push(`  rank ${m.rank}: pid ${m.pid ?? '-'}, device ${m.device}, client ${m.client}, sent ${m.submitted}`);
          for (const w of g.waiting) {
            lines.push(`  waiting: collective ${w.collective} sent by rank${w.sent.length > 1 ? 's' : ''} ${w.sent.join(', ')} since ${w.since} (${(w.waitingMs / 1000).toFixed(1)} s); missing rank${w.missing.length > 1 ? 's' : ''} ${w.missing.join(', ')}`);
          }
        }
        return { lines, data: groups };
      }
      case 'buffers': {
        const stats = await d.world.rankStats();
        return { lines: stats.map((s, rank) => `rank ${rank}: ${Object.entries(s).map(([k, v]) => `${k} ${v}`).join(', ')}`), data: stats };
      }
      case 'log-level': {
        const level = args[0];
        if (!level || !LOG_LEVELS.includes(level)) throw new Error(`usage: log-level ${LOG_LEVELS.join('|')}`);
        d.setLogLevel(level);
        return { lines: [`log level: ${level}`], data: { logLevel: level } };
      }
      case 'rebuild': {
        const result = await d.rebuild('asked on the debug socket');
        return { lines: [result], data: { result, state: d.world.state, generation: d.world.generation } };
      }
      case 'inject': {
        const [rank, fault] = args;
        if (!/^\d+$/.test(rank ?? '') || !fault) throw new Error('usage: inject <rank> crash|hang|fail|crash-loop|clear');
        const result = await d.inject(Number(rank), fault);
        return { lines: [result], data: { result } };
      }
      default:
        throw new Error(`unknown command "${command.slice(0, 64)}"; try help`);
    }
  }
}
