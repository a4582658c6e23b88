// A client may only hand the daemon its own memory. Buffers are descriptors (sealed memfds) passed
// over the connection, and the numbers the daemon gives them are good on that connection only:
// another user can neither name this user's registered buffers nor get hold of their descriptors
// to register them itself. Needs root to become another user.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { connect, HostBuffer } from '../dist/client/index.js';
import { ROOT, startDaemon } from './helpers/daemon.js';

const NOBODY = 65534;

/**
 * Runs node as user nobody. Through sh, which drops NODE_OPTIONS: tap adds its coverage hooks
 * there for every child, and as nobody they could not write their files.
 */
function asNobody(args: string[]) {
  return spawnSync('/bin/sh', ['-c', 'unset NODE_OPTIONS; exec "$0" "$@"', process.execPath, ...args], {
    uid: NOBODY,
    gid: NOBODY,
    encoding: 'utf8',
    timeout: 20_000,
  });
}

function nobodyCanRead(file: string): boolean {
  return asNobody(['-e', `require('fs').accessSync(${JSON.stringify(file)}, 4)`]).status === 0;
}

const skip =
  process.getuid?.() !== 0
    ? 'needs root, to run a client as another user'
    : !nobodyCanRead(path.join(ROOT, 'dist/client/index.js'))
      ? `user nobody cannot read ${ROOT}/dist`
      : !nobodyCanRead(path.join(ROOT, 'build/Release/nccld.node'))
        ? `user nobody cannot read ${ROOT}/build/Release/nccld.node`
        : false;

/** The descriptors `pid` holds on memfds of these names: where another user would look for them. */
function memfdPaths(pid: number, names: string[]): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir)
    .map((fd) => path.join(dir, fd))
    .filter((p) => {
      try {
        const target = readlinkSync(p);
        return names.some((n) => target === `/memfd:${n} (deleted)`);
      } catch {
        return false;
      }
    });
}

t.test('another user cannot name or take this user\'s registered buffers', { skip }, async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--socket-mode', '666']);
  t.teardown(() => d.stop());
  chmodSync(d.dir, 0o755);
  accessSync(d.socket, constants.F_OK);
  const client = await connect(d.socket);
  t.teardown(() => client.close());
  const mine = [HostBuffer.alloc(4096), HostBuffer.alloc(4096)];
  t.teardown(() => mine.forEach((b) => b.free()));
  mine.forEach((b, r) => b.view('f32').fill(r + 1));
  const numbers = await Promise.all(mine.map((b) => client.register(b)));
  // The descriptors of this memory: this process's own, and the daemon's (it keeps one to map the
  // buffer into restarted device processes).
  const names = mine.map((b) => b.name);
  const fdPaths = [...memfdPaths(process.pid, names), ...memfdPaths(d.proc.pid!, names)];
  t.ok(fdPaths.length >= 4, `found the memory's descriptors: ${fdPaths.join(', ')}`);

  const script = `
    import { connect, HostBuffer } from ${JSON.stringify(path.join(ROOT, 'dist/client/index.js'))};
    import { openSync } from 'node:fs';
    const outcome = (p) => p.then(() => 'ACCEPTED', (e) => e.code + ' ' + e.message);
    const c = await connect(${JSON.stringify(d.socket)});
    const out = { uid: process.getuid() };
    // The other user's buffer numbers, as if guessed: not registered on this connection.
    out.name = await outcome(c.allReduce({ buffers: ${JSON.stringify(numbers)}, dtype: 'f32', op: 'sum', count: 16 }));
    out.slots = await outcome(c.allReduce({ buffers: ${JSON.stringify(numbers.map((buffer) => ({ buffer, offset: 4 })))}, dtype: 'f32', op: 'sum', count: 16 }));
    out.release = await outcome(c.release(${JSON.stringify(numbers)}));
    // The memory itself: its descriptors live in other users' processes, out of reach.
    out.open = ${JSON.stringify(fdPaths)}.map((p) => { try { openSync(p, 'r+'); return 'OPENED ' + p; } catch (e) { return e.code; } });
    // A register frame must carry the descriptor: one it does not hold cannot be named instead.
    out.bare = await outcome(c.request({ type: 'register' }));
    out.byName = await outcome(c.request({ type: 'register', memfd: ${JSON.stringify(names[0])}, fd: 3 }));
    // Its own memory is served, under numbers of its own.
    const own = [HostBuffer.alloc(4096), HostBuffer.alloc(4096)];
    own.forEach((b, r) => b.view('f32').fill(10 * (r + 1)));
    out.own = await outcome(c.allReduce({ buffers: own, dtype: 'f32', op: 'sum', count: 1024 }));
    out.ownNumbers = await Promise.all(own.map((b) => c.register(b)));
    out.ownResult = [own[0].view('f32')[0], own[1].view('f32')[1023]];
    await c.close();
    console.log(JSON.stringify(out));`;
  const r = asNobody(['--input-type=module', '-e', script]);
  t.equal(r.status, 0, 'the client ran');
  t.equal(r.stderr, '', 'and printed no error');
  const out = JSON.parse(r.stdout);
  t.equal(out.uid, NOBODY, 'as user nobody');
  t.match(out.name, /^NCCLD_ERR_NO_SUCH_BUFFER .*not registered on this connection/, 'the other user\'s buffer numbers name nothing');
  t.match(out.slots, /^NCCLD_ERR_NO_SUCH_BUFFER /, 'nor in slots');
  t.match(out.release, /^NCCLD_ERR_NO_SUCH_BUFFER /, 'and cannot be released');
  t.same(out.open, fdPaths.map(() => 'EACCES'), 'the memory\'s descriptors cannot be opened');
  t.match(out.bare, /^NCCLD_ERR_BAD_REQUEST .*memfd sent with its frame/, 'a register frame without a descriptor is refused');
  t.match(out.byName, /^NCCLD_ERR_BAD_REQUEST /, 'naming a descriptor instead of sending it is refused');
  t.equal(out.own, 'ACCEPTED', 'its own buffers are served');
  t.same(out.ownResult, [30, 30], 'correctly');
  t.notOk(out.ownNumbers.some((n: number) => numbers.includes(n)), 'under numbers of its own');

  // Nothing it did touched this user's memory, which still serves here.
  t.same([mine[0].view('f32')[0], mine[1].view('f32')[1023]], [1, 2], 'this user\'s buffers are untouched');
  await client.allReduce({ buffers: mine, dtype: 'f32', op: 'sum', count: 1024 });
  t.same([mine[0].view('f32')[0], mine[1].view('f32')[1023]], [3, 3], 'and still serve their owner');
  // Registrations are per connection, even for the same user.
  const second = await connect(d.socket);
  t.teardown(() => second.close());
  await t.rejects(second.allReduce({ buffers: numbers, dtype: 'f32', op: 'sum', count: 16 }), { code: 'NCCLD_ERR_NO_SUCH_BUFFER' }, 'another connection of the same user cannot name them either');
});
