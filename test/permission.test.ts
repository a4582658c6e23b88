// A client may only hand the daemon its own memory: the daemon checks the peer's uid (SO_PEERCRED,
// which a client cannot forge) against the segment's owner. Needs root to become another user.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants } from 'node:fs';
import path from 'node:path';
import { HostBuffer } from '../dist/client/index.js';
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
      : false;

t.test('another user\'s segment is refused with NCCLD_ERR_PERMISSION', { skip }, async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2', '--socket-mode', '666']);
  t.teardown(() => d.stop());
  chmodSync(d.dir, 0o755);
  accessSync(d.socket, constants.F_OK);
  const mine = [HostBuffer.alloc(4096, { mode: 0o666 }), HostBuffer.alloc(4096, { mode: 0o666 })];
  t.teardown(() => mine.forEach((b) => b.free()));
  const script = `
    import { connect } from ${JSON.stringify(path.join(ROOT, 'dist/client/index.js'))};
    const c = await connect(${JSON.stringify(d.socket)});
    try {
      await c.allReduce({ buffers: ${JSON.stringify(mine.map((b) => ({ shm: b.name })))}, dtype: 'f32', op: 'sum', count: 16 });
      console.log('ACCEPTED');
    } catch (e) { console.log(e.code + ' ' + e.message); }
    await c.close();`;
  const r = asNobody(['--input-type=module', '-e', script]);
  t.equal(r.status, 0, 'the client ran');
  t.equal(r.stderr, '', 'and printed no error');
  t.match(r.stdout, /^NCCLD_ERR_PERMISSION .*belongs to uid 0, not to the client's uid 65534/);
});
