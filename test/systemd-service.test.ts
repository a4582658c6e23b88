// The daemon under systemd's protocols, for real: sockets passed by systemd-socket-activate, and
// notifications read off a datagram socket named in NOTIFY_SOCKET.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { connect } from '../dist/client/index.js';
import { NCCLD, debugCommand, until } from './helpers/daemon.js';
import { checkedAllReduce } from './helpers/buffers.js';

const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

t.test('socket activation: the daemon serves on the sockets systemd passed', { skip: has('systemd-socket-activate', ['--version']) ? false : 'systemd-socket-activate is not installed' }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-sa-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const api = path.join(dir, 'api.sock');
  const debug = path.join(dir, 'debug.sock');
  // Named as the socket units name them; paths the daemon would otherwise pick are elsewhere.
  const proc = spawn(
    'systemd-socket-activate',
    ['-l', api, '-l', debug, '--fdname=api:debug', process.execPath, NCCLD, '--backend', 'host', '--ranks', '2', '--socket', path.join(dir, 'unused.sock')],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  proc.stdout!.on('data', (c) => (log += c));
  proc.stderr!.on('data', (c) => (log += c));
  t.teardown(() => void proc.kill('SIGKILL'));
  await until('the activator to listen', async () => {
    try {
      const { statSync } = await import('node:fs');
      return statSync(api).isSocket() && statSync(debug).isSocket();
    } catch {
      return false;
    }
  });
  // The first connection starts the daemon; it answers once its world is built.
  const client = await connect(api, { timeoutMs: 30_000 });
  t.equal((await checkedAllReduce(client, 'f32', 'sum', 1000, 1)).mismatches, 0, 'a collective through the passed API socket');
  t.match(await debugCommand(debug, 'status'), /world: ready, 2 ranks/, 'status through the passed debug socket');
  t.match(log, /"socket":"fd 3 from systemd","debugSocket":"fd 4 from systemd"/);
  await client.close();
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM: exit 0');
});

t.test('sd_notify: READY=1 once the world is built, WATCHDOG=1 pings, STOPPING=1 on SIGTERM', { skip: has('python3', ['--version']) ? false : 'python3 (for a datagram listener) is not installed' }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const notify = path.join(dir, 'notify.sock');
  // Node cannot receive datagrams: a few lines of Python print each one as a JSON string.
  const listener = spawn('python3', [
    '-u',
    '-c',
    `import socket, json, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    print(json.dumps(s.recv(4096).decode()), flush=True)`,
    notify,
  ]);
  t.teardown(() => void listener.kill('SIGKILL'));
  const messages: string[] = [];
  let partial = '';
  listener.stdout.setEncoding('utf8');
  await new Promise<void>((resolve) =>
    listener.stdout.on('data', (c: string) => {
      partial += c;
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        if (line === 'listening') resolve();
        else messages.push(JSON.parse(line) as string);
      }
    }),
  );
  const api = path.join(dir, 'api.sock');
  const daemon = spawn(process.execPath, [NCCLD, '--backend', 'host', '--ranks', '2', '--socket', api, '--debug-socket', path.join(dir, 'd.sock')], {
    env: { ...process.env, NOTIFY_SOCKET: notify, WATCHDOG_USEC: '400000' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let log = '';
  daemon.stdout!.on('data', (c) => (log += c));
  await until('READY=1', () => messages.some((m) => m.includes('READY=1')));
  t.match(log, /"msg":"world ready"/, 'READY=1 came after the world was built');
  t.match(messages[0], /^READY=1\nSTATUS=world ready, generation 1, 2 ranks \(host\)$/);
  await until('two watchdog pings', () => messages.filter((m) => m === 'WATCHDOG=1').length >= 2);
  t.pass('WATCHDOG=1 pings while healthy');
  daemon.kill('SIGTERM');
  const code = await new Promise((r) => daemon.once('exit', r));
  t.equal(code, 0);
  const stop = messages.findIndex((m) => m.startsWith('STOPPING=1'));
  t.ok(stop > 0, 'STOPPING=1 on SIGTERM');
  t.notOk(messages.slice(stop + 1).includes('WATCHDOG=1'), 'no pings after STOPPING=1');
  const c = await connect(api).catch((e) => e);
  t.match(c, { code: 'NCCLD_ERR_CONNECT' }, 'and the daemon is gone');
});
