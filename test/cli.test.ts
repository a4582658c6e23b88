// ncclctl as a user runs it: a real process against a real daemon.
import t from 'tap';
import { spawn } from 'node:child_process';
import { NCCLCTL, startDaemon } from './helpers/daemon.js';

function ncclctl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [NCCLCTL, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c) => (stdout += c));
    p.stderr.on('data', (c) => (stderr += c));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('ncclctl allreduce --verify', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '4']);
  t.teardown(() => d.stop());
  for (const [dtype, op] of [
    ['bf16', 'max'],
    ['i64', 'sum'],
    ['f16', 'avg'],
  ]) {
    const r = await ncclctl(['--socket', d.socket, 'allreduce', '--dtype', dtype, '--op', op, '--count', '100003', '--verify']);
    t.equal(r.code, 0, `${dtype} ${op} exits 0 (${r.stderr})`);
    t.match(r.stdout, /verify: ok, 100003 elements × 4 ranks/);
    t.match(r.stdout, new RegExp(`allreduce ${dtype} ${op} count 100003 × 4 ranks .*: [\\d.]+ ms`));
  }
  const iters = await ncclctl(['--socket', d.socket, 'allreduce', '--dtype', 'f32', '--op', 'sum', '--count', '1000', '--iters', '5']);
  t.equal(iters.code, 0);
  t.match(iters.stdout, /median [\d.]+ ms, min [\d.]+ ms over 5/);
});

t.test('ncclctl bench, through the daemon and --direct', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const r = await ncclctl(['--socket', d.socket, 'bench', '-b', '8', '-e', '64K', '-f', '8', '--iters', '5', '--warmup', '1', '--direct']);
  t.equal(r.code, 0, r.stderr);
  t.match(
    r.stdout,
    /# through nccld: 2 ranks, host backend, f32 sum, 5 in flight\n#\s+bytes\s+count\s+time\(us\)\s+p50\(us\)\s+p99\(us\)\s+ops\/s\s+algbw\(GB\/s\)\s+busbw\(GB\/s\)\n\s+8\s+2\s+[\d.]+/,
  );
  // bytes, count, time, p50, p99, ops/s, algbw, busbw
  const rows = r.stdout.split('\n').filter((l) => /^\s+\d+\s+\d+(\s+[\d.]+){6}$/.test(l));
  t.same(rows.map((l) => Number(l.trim().split(/\s+/)[0])), [8, 64, 512, 4096, 32768, 8, 64, 512, 4096, 32768], 'sizes from -b to -e by -f, daemon then direct');
  for (const l of rows) {
    const [, , , p50, p99] = l.trim().split(/\s+/).map(Number);
    t.ok(p50 > 0 && p50 <= p99, `p50 ${p50} ≤ p99 ${p99} us`);
  }
  t.match(r.stdout, /# direct, in this process: 2 ranks/);
  t.match(
    r.stdout,
    /daemon\/direct busbw\s+daemon-direct time\(us\)\s+daemon-direct p50\(us\)\s+daemon-direct p99\(us\)\n\s+8\s+[\d.]+(\s+-?[\d.]+){3}\n/,
  );
  const serial = await ncclctl(['--socket', d.socket, 'bench', '-b', '1K', '-e', '1K', '--serial', '--iters', '3']);
  t.match(serial.stdout, /one at a time[\s\S]*\n\s+1024\s+256\s/);
  const bad = await ncclctl(['--socket', d.socket, 'bench', '-b', '1G', '-e', '8']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /-b and -e are sizes/);
});

t.test('ncclctl errors', async (t) => {
  const help = await ncclctl(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /allreduce --dtype T --op OP --count N/);
  const none = await ncclctl([]);
  t.equal(none.code, 2);
  const bad = await ncclctl(['--socket', '/nonexistent/nccld.sock', 'allreduce', '--dtype', 'f32', '--op', 'sum', '--count', '1']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /cannot reach nccld at \/nonexistent\/nccld.sock/);
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const dtype = await ncclctl(['--socket', d.socket, 'allreduce', '--dtype', 'f8', '--op', 'sum', '--count', '1']);
  t.equal(dtype.code, 2);
  t.match(dtype.stderr, /--dtype must be one of/);
  const count = await ncclctl(['--socket', d.socket, 'allreduce', '--dtype', 'f32', '--op', 'sum']);
  t.equal(count.code, 2);
  t.match(count.stderr, /--count is required/);
});
