// The systemd integration files under systemd/: each unit passes `systemd-analyze verify`
// without a word about itself, the units agree with each other and with the daemon's
// socket-activation contract (fd names api/debug), and sysusers/config files parse.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SYSTEMD_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'systemd');
const UNITS = ['nccld.socket', 'nccld-debug.socket', 'nccld.service'];

function have(cmd: string): boolean {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

/** Every `Key=value` of a unit file, per section, in order (comments and blanks dropped). */
function parseUnit(file: string): Map<string, [string, string][]> {
  const sections = new Map<string, [string, string][]>();
  let current: [string, string][] | undefined;
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) {
      current = [];
      sections.set(m[1], current);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || !current) throw new Error(`${file}: not a Key=value line: ${line}`);
    current.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return sections;
}

function values(unit: Map<string, [string, string][]>, section: string, key: string): string[] {
  return (unit.get(section) ?? []).filter(([k]) => k === key).map(([, v]) => v);
}

function one(unit: Map<string, [string, string][]>, section: string, key: string): string | undefined {
  const v = values(unit, section, key);
  return v.length === 1 ? v[0] : v.length === 0 ? undefined : `<${v.length} values>`;
}

const noAnalyze = have('systemd-analyze') ? false : 'systemd-analyze (systemd package) is not installed here: nothing to verify the units with';
const noSysusers = have('systemd-sysusers') ? false : 'systemd-sysusers is not installed here: the sysusers file was only read, not parsed by systemd';

t.test('systemd-analyze verify: every unit clean', { skip: noAnalyze }, async (t) => {
  // verify loads the units a unit refers to (Requires=, Sockets=, Service=) from the unit
  // file's own directory first: copy them side by side, as they will be installed.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nccld-units-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const u of UNITS) copyFileSync(path.join(SYSTEMD_DIR, u), path.join(dir, u));

  for (const u of UNITS) {
    const file = path.join(dir, u);
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', file], { encoding: 'utf8' });
    t.equal(r.error, undefined, `${u}: systemd-analyze ran`);
    const out = `${r.stdout}${r.stderr}`;
    t.equal(r.status, 0, `${u}: verify exits 0`, { output: out });
    // Messages about our files name them by path ("<file>:<line>: Unknown key ...") or by
    // unit name ("nccld.service: Command ... is not executable"). Messages about the host's
    // own units (sockets.target, modprobe@.service, ...) are not ours to judge.
    const ours = out
      .split('\n')
      .filter((l) => l.includes(dir) || UNITS.some((name) => l.startsWith(`${name}:`)));
    t.same(ours, [], `${u}: verify says nothing about our units`, { output: out });
  }
});

t.test('the units agree with each other and with the daemon', async (t) => {
  const api = parseUnit(path.join(SYSTEMD_DIR, 'nccld.socket'));
  const debug = parseUnit(path.join(SYSTEMD_DIR, 'nccld-debug.socket'));
  const svc = parseUnit(path.join(SYSTEMD_DIR, 'nccld.service'));

  // The daemon tells its fds apart by these names (LISTEN_FDNAMES).
  t.same(values(api, 'Socket', 'ListenStream'), ['/run/nccld/nccld.sock']);
  t.equal(one(api, 'Socket', 'FileDescriptorName'), 'api');
  t.equal(one(api, 'Socket', 'SocketMode'), '0660', 'API socket: owner and group');
  t.equal(one(api, 'Socket', 'SocketGroup'), 'nccld', 'clients are in group nccld');
  t.same(values(debug, 'Socket', 'ListenStream'), ['/run/nccld/debug.sock']);
  t.equal(one(debug, 'Socket', 'FileDescriptorName'), 'debug');
  t.equal(one(debug, 'Socket', 'SocketMode'), '0600', 'debug socket: root only');
  for (const s of [api, debug]) {
    t.equal(one(s, 'Socket', 'Service'), 'nccld.service');
    t.equal(one(s, 'Socket', 'SocketUser'), 'root');
    t.equal(one(s, 'Socket', 'RemoveOnStop'), 'yes');
    t.equal(one(s, 'Socket', 'Accept'), undefined, 'Accept=no (the default): one daemon gets the listening sockets');
  }

  t.equal(one(svc, 'Service', 'Type'), 'notify');
  t.equal(one(svc, 'Service', 'NotifyAccess'), 'main');
  t.equal(one(svc, 'Service', 'ExecStart'), '/usr/bin/env nccld --config /etc/nccld/nccld.json');
  t.equal(one(svc, 'Service', 'KillMode'), 'mixed');
  t.equal(one(svc, 'Service', 'User'), 'nccld');
  t.equal(one(svc, 'Service', 'Sockets'), 'nccld.socket nccld-debug.socket', 'both fds go to the daemon');
  t.equal(one(svc, 'Service', 'RuntimeDirectory'), undefined, 'no RuntimeDirectory=: it would delete the sockets on stop');
  t.equal(one(svc, 'Service', 'MemoryDenyWriteExecute'), undefined, 'V8 needs W+X memory');
  t.equal(one(svc, 'Service', 'PrivateDevices'), undefined, 'PrivateDevices would hide /dev/nvidia*');
  t.equal(one(svc, 'Service', 'DevicePolicy'), 'closed');
  const allowed = values(svc, 'Service', 'DeviceAllow').map((v) => v.split(/\s+/)[0]);
  for (const dev of ['char-nvidia-frontend', 'char-nvidia-uvm', 'char-nvidia-caps']) {
    t.ok(allowed.includes(dev), `DeviceAllow=${dev}`);
  }
  const families = (one(svc, 'Service', 'RestrictAddressFamilies') ?? '').split(/\s+/);
  for (const f of ['AF_UNIX', 'AF_INET', 'AF_INET6', 'AF_NETLINK']) {
    t.ok(families.includes(f), `${f} allowed (NCCL bootstrap, interface discovery, our sockets)`);
  }
  const requires = values(svc, 'Unit', 'Requires').join(' ').split(/\s+/);
  const after = values(svc, 'Unit', 'After').join(' ').split(/\s+/);
  const also = (one(svc, 'Install', 'Also') ?? '').split(/\s+/);
  for (const s of ['nccld.socket', 'nccld-debug.socket']) {
    t.ok(requires.includes(s) && after.includes(s), `Requires= and After= ${s}`);
    t.ok(also.includes(s), `enabling the service enables ${s}`);
  }
  t.equal(one(svc, 'Install', 'WantedBy'), 'multi-user.target');
});

const SYSUSERS = path.join(SYSTEMD_DIR, 'nccld.sysusers.conf');

t.test('sysusers file declares the user and group', async (t) => {
  const lines = readFileSync(SYSUSERS, 'utf8').split('\n').filter((l) => l.trim() && !l.startsWith('#'));
  t.ok(lines.some((l) => /^g\s+nccld\s/.test(l)), 'group nccld');
  t.ok(lines.some((l) => /^u\s+nccld\s+-:nccld\s/.test(l)), 'user nccld in group nccld');
});

t.test('systemd-sysusers accepts the sysusers file', { skip: noSysusers }, async (t) => {
  const file = SYSUSERS;
  // --dry-run against an empty root: parses the file and says what it would create.
  const root = mkdtempSync(path.join(os.tmpdir(), 'nccld-sysusers-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const r = spawnSync('systemd-sysusers', ['--dry-run', `--root=${root}`, file], { encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`;
  t.equal(r.status, 0, 'systemd-sysusers --dry-run exits 0', { output: out });
  t.match(out, /Creating group 'nccld'/);
  t.match(out, /Creating user 'nccld'/);
  t.notMatch(out, /Failed|Syntax error|ignoring/i);
});

t.test('sample config: JSON, keys are settings the daemon knows', async (t) => {
  // The daemon's own table of settings: a key it does not know would stop it at start-up.
  const { SETTINGS, parseConfig } = await import('../dist/daemon/config.js');
  const known = SETTINGS.map((s) => s.key as string);
  const file = path.join(SYSTEMD_DIR, 'nccld.json');
  const cfg = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  for (const k of Object.keys(cfg)) t.ok(known.includes(k), `${k} is a setting`);
  t.doesNotThrow(() => parseConfig(['--config', file], {}), 'the daemon accepts it as it is');
  t.notOk('faultInjection' in cfg || 'enableFaultInjection' in cfg, 'fault injection is never on in a shipped config');
  t.notOk('socket' in cfg || 'debugSocket' in cfg, 'socket paths come from the socket units');
  t.equal(cfg.backend, 'auto');
});
