// Looking into a running daemon from a test: its debug socket's answers as JSON, and what /proc
// says about a process (descriptors, memfds, RSS). The attack tests check after each attack that
// the daemon's world, device processes and descriptors are as before; these are the one copy of
// how they read that.
import fs from 'node:fs';
import net from 'node:net';
import type { Test } from 'tap';
import type { OpRecord } from '../../dist/daemon/flight-recorder.js';
import type { DaemonStatus } from '../../dist/daemon/status.js';
import { debugCommand } from './daemon.js';

/** One debug command's answer (its `result`), on a fresh connection in `format json`; throws if it failed. */
export async function debugJson<T = Record<string, any>>(socket: string, command: string): Promise<T> {
  const out = await debugCommand(socket, 'format json', command);
  const reply = out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { ok: boolean; command: string; result: T; error?: string })
    .find((r) => r.command === command.split(' ')[0]);
  if (!reply?.ok) throw new Error(`debug ${command}: ${reply?.error ?? out}`);
  return reply.result;
}

/** The debug socket's `status`. */
export const status = (debugSocket: string) => debugJson<DaemonStatus>(debugSocket, 'status');

/** The debug socket's `ops n`: collectives in flight, and the last `n` that ended. */
export const ops = (debugSocket: string, n = 256) => debugJson<{ inFlight: OpRecord[]; recent: OpRecord[] }>(debugSocket, `ops ${n}`);

/**
 * A debug connection kept open (keepalive, JSON answers), one command at a time: for a daemon
 * about to run out of descriptors, which could not accept a new debug connection then.
 */
export async function debugSession(t: Test, socketPath: string) {
  const s = net.connect(socketPath);
  await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
  t.teardown(() => void s.destroy());
  s.setEncoding('utf8');
  const waiting: ((v: { ok: boolean; result?: unknown; error?: string }) => void)[] = [];
  let buf = '';
  s.on('data', (c: string) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.startsWith('{')) waiting.shift()?.(JSON.parse(line));
    }
  });
  const raw = (line: string) =>
    new Promise<{ ok: boolean; result?: unknown; error?: string }>((resolve) => {
      waiting.push(resolve);
      s.write(`${line}\n`);
    });
  await raw('format json');
  await raw('keepalive');
  return async <T = Record<string, any>>(line: string): Promise<T> => {
    const r = await raw(line);
    if (!r.ok) throw new Error(`debug ${line}: ${r.error}`);
    return r.result as T;
  };
}

/** How many descriptors `pid` holds now. */
export const fdCount = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

/** A process's descriptor count once nothing is closing (a debug connection, say): the same for 400 ms. */
export async function quietFdCount(pid: number): Promise<number> {
  let last = fdCount(pid);
  for (let stable = 0; stable < 4; ) {
    await new Promise((r) => setTimeout(r, 100));
    const n = fdCount(pid);
    stable = n === last ? stable + 1 : 0;
    last = n;
  }
  return last;
}

/** Descriptors of `pid` that are memfds (whose name contains `name`, if given). */
export function memfdLinks(pid: number, name = ''): number {
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (link.includes('memfd:') && link.includes(name)) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

/** VmRSS of `pid`, in bytes (NaN if /proc does not say). */
export function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}
