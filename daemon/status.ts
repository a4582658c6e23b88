// What the daemon reports about itself: one plain object, so the debug socket can print it as
// text and as JSON, and tests can read the same facts.
import type { RankProcess } from './rank-process.js';
export interface RankStatus {
  rank: number;
  pid: number | null;
  device: number | null;
  deviceName: string | null;
  state: string;
  /** The world generation this rank's current process joined. */
  generation: number;
  collectivesDone: number;
  inFlight: number;
  lastError: string | null;
}

export interface DaemonStatus {
  version: string;
  backend: 'host' | 'nccl';
  backendNote: string | null;
  world: { state: string; size: number; failure: string | null; generation: number; rebuilds: number; lastBreak: string | null };
  uptimeSeconds: number;
  requests: { served: number; failed: number; waiting: number; running: number; lastSeq: number };
  clients: number;
  registeredBuffers: number;
  ranks: RankStatus[];
}

export function pad(cells: (string | number)[], widths: number[]): string {
  return cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
}

export function rankStatus(r: RankProcess): RankStatus {
  return {
    rank: r.rank,
    pid: r.pid ?? null,
    device: r.device,
    deviceName: r.deviceName,
    state: r.state,
    generation: r.generation,
    collectivesDone: r.collectivesDone,
    inFlight: r.inFlight,
    lastError: r.lastError,
  };
}

export function formatStatus(s: DaemonStatus): string[] {
  const lines = [
    `nccld ${s.version}`,
    `backend: ${s.backend}${s.backendNote ? ` (${s.backendNote})` : ''}`,
    `world: ${s.world.state}, ${s.world.size} rank${s.world.size === 1 ? '' : 's'}, generation ${s.world.generation}, ${s.world.rebuilds} rebuild${s.world.rebuilds === 1 ? '' : 's'}`,
    ...(s.world.failure ? [`failure: ${s.world.failure}`] : []),
    ...(s.world.lastBreak ? [`last break: ${s.world.lastBreak}`] : []),
    `uptime: ${s.uptimeSeconds}s`,
    `requests: ${s.requests.served} served, ${s.requests.failed} failed, ${s.requests.running} running, ${s.requests.waiting} waiting, last seq ${s.requests.lastSeq}`,
    `clients: ${s.clients}, buffers registered: ${s.registeredBuffers}`,
  ];
  const widths = [4, 8, 24, 9, 11, 9];
  lines.push(pad(['rank', 'pid', 'device', 'state', 'collectives', 'in-flight'], widths) + '  last error');
  for (const r of s.ranks) {
    const device = r.device === null ? 'host' : `${r.device}${r.deviceName ? ` ${r.deviceName}` : ''}`;
    lines.push(pad([r.rank, r.pid ?? '-', device, r.state, r.collectivesDone, r.inFlight], widths) + `  ${r.lastError ?? '-'}`);
  }
  return lines;
}
