// Runs a Node child process that prints a JSON report as its last line of output: an attacker
// script or the fuzzer, run in a process of its own so that its work does not slow the test's
// well-behaved client, and its requests count against its own per-process limits.
import { spawn, type SpawnOptions } from 'node:child_process';

/**
 * Runs `node ...args` until it exits (SIGKILLed after `timeoutMs`) and resolves with the JSON of
 * the last line it printed; rejects, with the tail of its output, when there is none.
 */
export function runForReport<T>(what: string, args: string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; cwd?: SpawnOptions['cwd'] }): Promise<T> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (err += c));
    const kill = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs);
    proc.once('exit', (code) => {
      clearTimeout(kill);
      const last = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`${what} exited ${code} without a report: ${out.slice(-1000)} ${err.slice(-3000)}`));
      }
    });
  });
}
