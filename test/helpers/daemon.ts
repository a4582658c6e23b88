// Starts a real nccld process for a test, on private socket paths, and waits for its
// "nccld serving" log line: the daemon says it only once every rank has reported ready.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const NCCLD = path.join(ROOT, 'dist/daemon/main.js');
export const NCCLCTL = path.join(ROOT, 'dist/client/cli.js');

export interface RunningDaemon {
  proc: ChildProcess;
  socket: string;
  debugSocket: string;
  dir: string;
  /** Every JSON log line the daemon (and its device processes) printed so far. */
  logs: Record<string, unknown>[];
  /** Sends SIGTERM and resolves with the exit code once the process is gone. */
  stop(): Promise<number | null>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Socket paths to use instead of fresh ones in a private directory. */
  paths?: { socket: string; debugSocket: string };
  /**
   * Shell commands (bash) to run before the daemon, which bash then execs: for what only a
   * shell sets, e.g. `ulimit -n 64` (soft and hard: the daemon raises its soft limit to the
   * hard one). The daemon keeps the spawned pid.
   */
  shell?: string;
  /** Runs the daemon (and the shell before it) as this user and group instead: needs root. */
  user?: { uid: number; gid: number };
}

export async function startDaemon(args: string[] = [], opts: StartOptions = {}): Promise<RunningDaemon> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-test-'));
  const socket = opts.paths?.socket ?? path.join(dir, 'api.sock');
  const debugSocket = opts.paths?.debugSocket ?? path.join(dir, 'debug.sock');
  const node = [process.execPath, NCCLD, '--socket', socket, '--debug-socket', debugSocket, ...args];
  const [file, ...argv] = opts.shell === undefined ? node : ['/bin/bash', '-c', `${opts.shell} && exec "$0" "$@"`, ...node];
  const proc = spawn(file, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
    ...(opts.user ? { uid: opts.user.uid, gid: opts.user.gid } : {}),
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const ready = new Promise<void>((resolve, reject) => {
    let partial = '';
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      partial += chunk;
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          logs.push(rec);
          if (rec.msg === 'nccld serving') resolve();
        } catch {
          logs.push({ raw: line });
        }
      }
    });
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (c: string) => (stderr += c));
    void exited.then(({ code, signal }) =>
      reject(new Error(`nccld exited (code ${code}, signal ${signal}) before serving: ${stderr}${JSON.stringify(logs.slice(-5))}`)),
    );
  });
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      ready,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`nccld not serving after ${timeoutMs} ms`)), timeoutMs))),
    ]);
  } catch (err) {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    proc,
    socket,
    debugSocket,
    dir,
    logs,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const { code } = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

/** Sends lines to the debug socket and resolves with everything it answered, once it closes. */
export function debugCommand(socketPath: string, ...lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    let out = '';
    s.setEncoding('utf8');
    s.on('data', (c: string) => (out += c));
    s.on('error', reject);
    s.on('end', () => resolve(out));
    s.on('connect', () => s.end(lines.map((l) => `${l}\n`).join('')));
  });
}

/** Pids of the device processes, read from the debug socket's status. */
export async function devicePids(debugSocket: string): Promise<number[]> {
  const out = await debugCommand(debugSocket, 'status');
  const pids: number[] = [];
  for (const line of out.split('\n')) {
    const m = /^(\d+)\s+(\d+)\s/.exec(line);
    if (m) pids.push(Number(m[2]));
  }
  return pids;
}

/** Whether a process still runs: a zombie (dead, not yet reaped by an init that never reaps) does not. */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Polls until `cond` holds; throws after `ms`. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
