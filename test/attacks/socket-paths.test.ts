// Attack: the places the sockets live. Before protocol 2 a non-root daemon without XDG_RUNTIME_DIR
// used a directory in /tmp that another user could create first, and then impersonate the daemon
// to that user's clients; and the sockets got their mode after listen(), so under a permissive
// umask anyone could connect to the 0600 debug socket in that window. Now the daemon refuses a
// socket directory owned by another user, a symlink, or one others may write into without the
// sticky bit; binds each socket with its final mode; and the SDK sends nothing to a socket served
// by a user it does not trust.
import t, { type Test } from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { connect } from '../../dist/client/index.js';
import { NCCLD, ROOT, alive, startDaemon, until } from '../helpers/daemon.js';

const NOBODY = (() => {
  try {
    return Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim());
  } catch {
    return 65534;
  }
})();
const isRoot = process.getuid?.() === 0;
const nobodyReadsDist =
  isRoot &&
  spawnSync('/bin/sh', ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(path.join(ROOT, 'dist/client/index.js'))}, 4)`], { uid: NOBODY, gid: NOBODY }).status === 0;
const needsNobody = !isRoot ? 'needs root, to act as another user' : !nobodyReadsDist ? `user nobody cannot read ${ROOT}/dist` : false;

function tempBase(t: Test): string {
  const base = mkdtempSync(path.join(os.tmpdir(), 'nccld-paths-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  return base;
}

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  ms: number;
  devicePids: number[];
}

/** Runs nccld (through `sh -c prefix`, as `uid` if given) until it exits; it is expected not to start. */
function runToExit(args: string[], opts: { prefix?: string; uid?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  const t0 = Date.now();
  const proc = spawn('/bin/sh', ['-c', `${opts.prefix ?? ''} exec "$0" "$@"`, process.execPath, NCCLD, '--backend', 'host', '--ranks', '2', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}),
  });
  let output = '';
  proc.stdout!.on('data', (c) => (output += c));
  proc.stderr!.on('data', (c) => (output += c));
  const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
  return new Promise((resolve) =>
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      const devicePids = [...output.matchAll(/"devicePid":(\d+)/g)].map((m) => Number(m[1]));
      resolve({ code, signal, output, ms: Date.now() - t0, devicePids });
    }),
  );
}

async function checkRefused(t: Test, r: Ran, dir: string, problem: RegExp): Promise<void> {
  t.not(r.code, 0, `nccld exited with code ${r.code} (signal ${r.signal}) in ${r.ms} ms`);
  t.equal(r.signal, null, 'on its own, not killed');
  t.ok(r.output.includes(`socket directory ${dir} `), `the message names the directory ${dir}`);
  t.match(r.output, problem, 'and the problem');
  t.notOk(/"msg":"nccld serving"/.test(r.output), 'it never served');
  await until('its device processes to be gone', () => !r.devicePids.some(alive), 3000).catch(() => {});
  t.same(r.devicePids.filter(alive), [], 'no device process is left behind');
  t.comment(`figure: refused ${dir} in ${r.ms} ms: ${/socket directory [^"]*/.exec(r.output)?.[0]}`);
}

t.test('a socket directory owned by another user is refused', { skip: isRoot ? false : 'needs root, to chown' }, async (t) => {
  const base = tempBase(t);
  const dir = path.join(base, 'owned');
  mkdirSync(dir, { mode: 0o755 });
  chownSync(dir, NOBODY, NOBODY);
  const r = await runToExit(['--socket', path.join(dir, 'api.sock'), '--debug-socket', path.join(dir, 'debug.sock')]);
  await checkRefused(t, r, dir, new RegExp(`belongs to uid ${NOBODY}, not to this user \\(0\\) or root: another user could impersonate nccld there`));
  t.same(readdirSync(dir), [], 'nothing was created in it');
});

// The finding itself: nobody's daemon without XDG_RUNTIME_DIR uses /tmp/nccld-<uid>; uid 1 got there first.
const nobodysTmp = path.join('/tmp', `nccld-${NOBODY}`);
t.test("a user's default /tmp directory, made first by another user, is refused", { skip: needsNobody || (existsSync(nobodysTmp) ? `${nobodysTmp} exists already` : false) }, async (t) => {
  const dir = nobodysTmp;
  mkdirSync(dir, { mode: 0o755 });
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chownSync(dir, 1, 1);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/' };
  const r = await runToExit([], { uid: NOBODY, env, prefix: 'unset NODE_OPTIONS XDG_RUNTIME_DIR NCCLD_SOCKET NCCLD_DEBUG_SOCKET TMPDIR;' });
  await checkRefused(t, r, dir, new RegExp(`belongs to uid 1, not to this user \\(${NOBODY}\\) or root`));
  t.same(readdirSync(dir), [], 'no socket was made in it');
});

t.test('a socket directory that is a symlink is refused', async (t) => {
  const base = tempBase(t);
  const real = path.join(base, 'real');
  mkdirSync(real, { mode: 0o700 });
  const link = path.join(base, 'link');
  symlinkSync(real, link);
  const r = await runToExit(['--socket', path.join(link, 'api.sock'), '--debug-socket', path.join(link, 'debug.sock')]);
  await checkRefused(t, r, link, /is a symbolic link; refusing to use it/);
  t.same(readdirSync(real), [], 'nothing was created behind the link');
});

t.test('a socket directory others may write into is refused, unless it is sticky', async (t) => {
  const base = tempBase(t);
  const open = path.join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const r = await runToExit(['--socket', path.join(open, 'api.sock'), '--debug-socket', path.join(open, 'debug.sock')]);
  await checkRefused(t, r, open, /is writable by group or others \(mode 777\): anyone could replace the socket/);
  t.same(readdirSync(open), [], 'nothing was created in it');
  // The check is about who may replace the socket: a sticky directory (like /tmp) is fine.
  const sticky = path.join(base, 'sticky');
  mkdirSync(sticky);
  chmodSync(sticky, 0o1777);
  const d = await startDaemon(['--backend', 'host', '--ranks', '2'], { paths: { socket: path.join(sticky, 'api.sock'), debugSocket: path.join(sticky, 'debug.sock') } });
  t.equal(await d.stop(), 0, 'a sticky 1777 directory is accepted');
});

/**
 * Watches paths from another process, in a tight lstat loop, and reports every mode each had.
 * Ends once every path has been seen for `settleMs`, or after 20 s.
 */
function watchModes(paths: string[], settleMs = 300): { ready: Promise<void>; report: Promise<{ modes: string[][]; polls: number; firstSeenMs: number[] }>; proc: ChildProcess } {
  const script = `
    const fs = require('fs');
    const paths = JSON.parse(process.argv[1]);
    const modes = paths.map(() => new Set());
    const first = paths.map(() => -1);
    const t0 = Date.now();
    let polls = 0, allSince = 0;
    process.stdout.write('ready\\n');
    while (Date.now() - t0 < 20000) {
      polls++;
      paths.forEach((p, i) => {
        const st = fs.lstatSync(p, { throwIfNoEntry: false });
        if (!st) return;
        if (first[i] < 0) first[i] = Date.now() - t0;
        modes[i].add((st.isSocket() ? 's' : st.isDirectory() ? 'd' : '-') + (st.mode & 0o7777).toString(8));
      });
      if (first.every((f) => f >= 0)) {
        allSince ||= Date.now();
        if (Date.now() - allSince > ${settleMs}) break;
      }
    }
    process.stdout.write(JSON.stringify({ modes: modes.map((m) => [...m]), polls, firstSeenMs: first }) + '\\n');`;
  const proc = spawn(process.execPath, ['-e', script, JSON.stringify(paths)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.setEncoding('utf8');
  let onReady: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  proc.stdout!.on('data', (c: string) => {
    out += c;
    if (out.startsWith('ready\n')) onReady();
  });
  const report = new Promise<{ modes: string[][]; polls: number; firstSeenMs: number[] }>((resolve, reject) =>
    proc.once('close', () => {
      try {
        resolve(JSON.parse(out.split('\n')[1]));
      } catch {
        reject(new Error(`watcher: ${out}`));
      }
    }),
  );
  return { ready, report, proc };
}

t.test('the watcher sees a mode set after listen() (control: it can catch the old window)', async (t) => {
  const base = tempBase(t);
  const sock = path.join(base, 'careless.sock');
  const w = watchModes([sock], 100);
  await w.ready;
  // What nccld used to do: listen under the caller's umask, chmod afterwards (here 100 ms later).
  const careless = spawn('/bin/sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, '-e',
    `const net = require('net'), fs = require('fs'); const s = net.createServer().listen(process.argv[1], () => setTimeout(() => { fs.chmodSync(process.argv[1], 0o600); setTimeout(() => s.close(), 500); }, 100));`, sock]);
  t.teardown(() => void careless.kill('SIGKILL'));
  const { modes } = await w.report;
  t.ok(modes[0].includes('s777'), `the watcher saw the socket at 0777 before its chmod: ${modes[0].join(', ')}`);
});

t.test('under umask 000, the debug socket is 0600 and the API socket 0660 from the moment they exist', async (t) => {
  const base = tempBase(t);
  const dir = path.join(base, 'run'); // made by nccld
  const api = path.join(dir, 'api.sock');
  const debug = path.join(dir, 'debug.sock');
  const w = watchModes([dir, debug, api]);
  t.teardown(() => void w.proc.kill('SIGKILL'));
  await w.ready;
  const d = spawn('/bin/sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, NCCLD, '--backend', 'host', '--ranks', '2', '--socket', api, '--debug-socket', debug], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((r) => d.once('exit', (code) => r(code)));
  t.teardown(() => void d.kill('SIGKILL'));
  let out = '';
  d.stdout!.on('data', (c) => (out += c));
  const { modes, polls, firstSeenMs } = await w.report;
  t.ok(out.includes('"msg":"nccld serving"'), 'nccld served');
  t.same(modes[1], ['s600'], `the debug socket was only ever seen as 0600: ${modes[1].join(', ')}`);
  t.same(modes[2], ['s660'], `the API socket was only ever seen as 0660: ${modes[2].join(', ')}`);
  t.same(modes[0], ['d755'], `its directory was only ever seen as 0755 (root's): ${modes[0].join(', ')}`);
  t.comment(`figure: umask 000: ${polls} lstat rounds; directory seen at ${firstSeenMs[0]} ms, debug socket at ${firstSeenMs[1]} ms, API socket at ${firstSeenMs[2]} ms; modes seen ${JSON.stringify(modes)}`);
  // And the daemon still works: a client is served.
  const client = await connect(api);
  t.equal(client.worldSize, 2);
  await client.close();
  d.kill('SIGTERM');
  t.equal(await exited, 0, 'nccld stopped cleanly');
});

t.test('the SDK sends nothing to a socket served by an untrusted uid; NCCLD_TRUSTED_UIDS lets it through', { skip: needsNobody }, async (t) => {
  const base = tempBase(t);
  chmodSync(base, 0o755);
  const dir = path.join(base, 'srv');
  mkdirSync(dir, { mode: 0o700 });
  chownSync(dir, NOBODY, NOBODY);
  const sock = path.join(dir, 'nccld.sock');
  // A fake daemon run by nobody: it records every byte; to a hello it answers like nccld would.
  const script = `
    import net from 'node:net';
    import { FrameDecoder, encodeFrame } from ${JSON.stringify(path.join(ROOT, 'dist/shared/framing.js'))};
    let n = 0;
    net.createServer((s) => {
      const conn = ++n;
      let bytes = 0, hello = false;
      const dec = new FrameDecoder(1 << 20);
      s.on('data', (c) => {
        bytes += c.length;
        for (const f of dec.push(c)) if (f.message?.type === 'hello') {
          hello = true;
          s.write(encodeFrame({ type: 'hello', protocol: f.message.protocol, server: 'nccld', version: 'fake', backend: 'host', worldSize: 1,
            devices: [null], deviceUuids: [null], maxFrameBytes: 1 << 20, maxInFlight: 1, maxBuffers: 1, timeoutMs: 1000, maxTimeoutMs: 1000 }));
        }
      });
      s.on('error', () => {});
      s.on('close', () => console.log(JSON.stringify({ conn, bytes, hello })));
    }).listen(${JSON.stringify(sock)}, () => console.log('listening'));`;
  const fake = spawn('/bin/sh', ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, '--input-type=module', '-e', script], { uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void fake.kill('SIGKILL'));
  let out = '';
  let err = '';
  fake.stdout!.on('data', (c) => (out += c));
  fake.stderr!.on('data', (c) => (err += c));
  await until('the fake daemon to listen', () => out.includes('listening') || fake.exitCode !== null, 10_000);
  t.equal(err, '', 'the fake daemon runs');
  t.equal(lstatSync(sock).uid, NOBODY, 'its socket is nobody\'s');
  const lines = () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { conn: number; bytes: number; hello: boolean });

  const saved = process.env.NCCLD_TRUSTED_UIDS;
  delete process.env.NCCLD_TRUSTED_UIDS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.NCCLD_TRUSTED_UIDS;
    else process.env.NCCLD_TRUSTED_UIDS = saved;
  });
  const refused = await connect(sock, { timeoutMs: 3000 }).then(
    (c) => (void c.close(), null),
    (e) => e,
  );
  t.match(refused, { code: 'NCCLD_ERR_CONNECT', message: new RegExp(`served by uid ${NOBODY}, which is neither root, you \\(0\\) nor a trusted nccld user: refusing to send it anything \\(trust it with NCCLD_TRUSTED_UIDS=${NOBODY}\\)`) });
  await until('the fake daemon to see the first connection close', () => lines().length >= 1, 5000);
  t.same(lines()[0], { conn: 1, bytes: 0, hello: false }, 'the fake daemon received not one byte');

  process.env.NCCLD_TRUSTED_UIDS = String(NOBODY);
  const client = await connect(sock, { timeoutMs: 3000 });
  t.equal(client.server.version, 'fake', 'trusted, connect() went on to the hello and took its answer');
  await client.close();
  await until('the fake daemon to see the second connection close', () => lines().length >= 2, 5000);
  t.match(lines()[1], { conn: 2, hello: true }, 'the fake daemon received the hello');
});
