// Finding: "Shrinking a segment mid-collective kills every device process (SIGBUS): each rank
// reads every buffer. A few rounds fail the world." Protocol 2 takes only memfds sealed against
// shrinking and growing, handed over as descriptors. These tests attack a real daemon with what
// is not such a memfd, with truncation of a sealed one while big collectives run on it, and with
// a client that lets go of its own descriptor and mapping mid-collective; a well-behaved client
// runs throughout, and the world must neither lose a rank nor rebuild.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync, execFileSync } from 'node:child_process';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { connect, ErrorCodes, HostBuffer, type Client } from '../../dist/client/index.js';
import { native, type ShmSegment } from '../../dist/shared/native.js';
import { alive, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient } from '../helpers/good-client.js';
import { debugJson, fdCount, memfdLinks, quietFdCount, status } from '../helpers/inspect.js';

const MiB = 1 << 20;

t.test('buffers that could shrink are refused; a sealed one cannot be shrunk under big collectives', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const daemonPid = d.proc.pid!;
  const good = await startGoodClient(d.socket);
  t.teardown(() => good.stop());
  const attacker: Client = await connect(d.socket, { name: 'shrinker' });
  t.teardown(() => attacker.close());
  // The good client has registered its buffers once its first collective ran.
  await until('the good client registered its buffers', async () => (await status(d.debugSocket)).registeredBuffers >= 2);
  const start = await status(d.debugSocket);
  const pids = start.ranks.map((r) => r.pid!);
  t.equal(start.world.state, 'ready');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nccld-shrink-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

  await t.test('descriptors that are not sealed memfds are refused with BAD_BUFFER', async (t) => {
    const fdsBefore = await quietFdCount(daemonPid);
    const refuse = async (what: string, fd: number) => {
      await t.rejects(attacker.request({ type: 'register' }, [fd]), { code: ErrorCodes.BAD_BUFFER }, what);
    };

    // (a) A regular file: anyone holding it (or its path) can truncate it.
    const file = path.join(tmp, 'regular');
    fs.writeFileSync(file, Buffer.alloc(MiB, 1));
    const fileFd = fs.openSync(file, 'r+');
    await refuse('a regular file', fileFd);
    const readOnly = fs.openSync(file, 'r');
    await refuse('a regular file opened read-only', readOnly);

    // (b) A /dev/shm file, the protocol 1 kind of buffer: tmpfs, but not sealed.
    const shmPath = `/dev/shm/nccld-attack-${process.pid}`;
    const shmFd = fs.openSync(shmPath, 'w+');
    fs.ftruncateSync(shmFd, MiB);
    t.teardown(() => fs.rmSync(shmPath, { force: true }));
    await refuse('a /dev/shm file', shmFd);
    fs.unlinkSync(shmPath);
    await refuse('an unlinked /dev/shm file', shmFd);

    // (c) Sockets, pipes, devices, directories.
    const [s1, s2] = native.socketPair('stream');
    await refuse('a stream socket', s1);
    const [q1, q2] = native.socketPair('seqpacket');
    await refuse('a seqpacket socket', q1);
    const fifo = path.join(tmp, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const fifoFd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    await refuse('a pipe (FIFO)', fifoFd);
    const devNull = fs.openSync('/dev/null', 'r+');
    await refuse('/dev/null', devNull);
    const dirFd = fs.openSync(tmp, 'r');
    await refuse('a directory', dirFd);
    // /proc/self/fd/N opened again is a new open file of the same inode: still not sealed.
    const reopened = fs.openSync(`/proc/self/fd/${shmFd}`, 'r+');
    await refuse('a /dev/shm file reopened through /proc', reopened);

    // A sealed memfd, but opened read-only: the daemon could not write results into it.
    const memfd = native.memfdCreate('read-only', 4096);
    const memfdRo = fs.openSync(`/proc/self/fd/${memfd}`, 'r');
    await refuse('a sealed memfd opened read-only', memfdRo);
    native.closeFd(memfd);
    fs.closeSync(memfdRo);

    // No descriptor at all, and two descriptors with one frame (the second is a stray).
    await t.rejects(attacker.request({ type: 'register' }), { code: ErrorCodes.BAD_REQUEST }, 'register without a descriptor');
    await t.rejects(attacker.request({ type: 'register' }, [fileFd, s2]), { code: ErrorCodes.BAD_BUFFER }, 'a file with a stray socket');

    for (const fd of [fileFd, readOnly, shmFd, s1, s2, q1, q2, fifoFd, devNull, dirFd, reopened]) fs.closeSync(fd);
    // Every refused descriptor was closed by the daemon: nothing piles up there.
    await until('the daemon closed every refused descriptor', () => fdCount(daemonPid) <= fdsBefore, 5_000).catch(() => {});
    t.ok(fdCount(daemonPid) <= fdsBefore, `the daemon holds no more descriptors than before (${fdCount(daemonPid)}, ${fdsBefore} before)`);
    const s = await status(d.debugSocket);
    t.equal(s.registeredBuffers, start.registeredBuffers, 'nothing was registered');
  });

  await t.test('(d) a sealed memfd cannot shrink or grow, however it is attacked, while big collectives run on it', async (t) => {
    const count = 4 << 20; // 16 MiB of f32 per rank
    const bytes = count * 4;
    const fds: number[] = [];
    const segs: ShmSegment[] = [];
    const handles: number[] = [];
    for (let r = 0; r < 2; r++) {
      const fd = native.memfdCreate(`nccld-shrink-${r}`, bytes);
      fds.push(fd);
      segs.push(native.ShmSegment.fromFd(fd, `shrink-${r}`));
      const reply = await attacker.request({ type: 'register' }, [fd]);
      t.equal(reply.bytes, bytes, `rank ${r}'s buffer registered whole`);
      handles.push(reply.buffer as number);
    }
    t.teardown(() => {
      segs.forEach((s) => s.close());
      fds.forEach((fd) => native.closeFd(fd));
    });

    // The seal holds against every way this process (or another of the same user) could try.
    t.throws(() => fs.ftruncateSync(fds[0], 0), { code: 'EPERM' }, 'ftruncate to 0');
    t.throws(() => fs.ftruncateSync(fds[0], bytes / 2), { code: 'EPERM' }, 'ftruncate to half');
    t.throws(() => fs.ftruncateSync(fds[0], bytes * 2), { code: 'EPERM' }, 'ftruncate to double');
    t.throws(() => fs.truncateSync(`/proc/self/fd/${fds[0]}`, 0), { code: 'EPERM' }, 'truncate through /proc/self/fd');
    const again = fs.openSync(`/proc/self/fd/${fds[1]}`, 'r+');
    t.throws(() => fs.ftruncateSync(again, 4096), { code: 'EPERM' }, 'ftruncate of the memfd opened again');
    fs.closeSync(again);
    const other = spawnSync('truncate', ['-s', '0', `/proc/${process.pid}/fd/${fds[1]}`], { encoding: 'utf8' });
    t.not(other.status, 0, `another process cannot truncate it either (${other.stderr.trim()})`);
    t.equal(native.fdInfo(fds[0]).size, bytes);
    t.equal(native.fdInfo(fds[1]).size, bytes);

    const views = segs.map((s) => new Float32Array(s.buffer(), 0, count));
    const deadline = Date.now() + 4_000;
    let rounds = 0;
    let attempts = 0;
    let refused = 0;
    let wrong = 0;
    const shrinkers = [
      (fd: number) => fs.ftruncateSync(fd, 0),
      (fd: number) => fs.ftruncateSync(fd, 4096),
      (fd: number) => fs.ftruncateSync(fd, bytes + 4096),
      (fd: number) => fs.truncateSync(`/proc/self/fd/${fd}`, bytes / 4),
    ];
    while (rounds < 100 && Date.now() < deadline) {
      const k = rounds + 1;
      views[0].fill(k);
      views[1].fill(2 * k);
      let settled = false;
      const run = attacker.allReduce({ buffers: handles, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 }).finally(() => (settled = true));
      // Hammer the seal while the ranks read and write both buffers.
      while (!settled) {
        for (const shrink of shrinkers) {
          for (const fd of fds) {
            attempts++;
            try {
              shrink(fd);
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code === 'EPERM') refused++;
            }
          }
        }
        await yieldLoop();
      }
      await run;
      rounds++;
      // Every element of both buffers must be 3k; check a spread of them (and the last).
      for (let i = 0; i < count; i += 4099) if (views[0][i] !== 3 * k || views[1][i] !== 3 * k) wrong++;
      if (views[0][count - 1] !== 3 * k || views[1][count - 1] !== 3 * k) wrong++;
    }
    t.comment(`${rounds} collectives of ${bytes / MiB} MiB per rank; ${attempts} truncation attempts while they ran, ${refused} refused with EPERM`);
    t.ok(rounds >= 5, `ran ${rounds} big collectives`);
    t.ok(attempts > rounds, 'truncation was tried while collectives ran');
    t.equal(refused, attempts, 'every truncation attempt was refused (EPERM)');
    t.equal(wrong, 0, 'every result was right');
    t.equal(native.fdInfo(fds[0]).size, bytes, 'the memfd kept its size');

    const s = await status(d.debugSocket);
    t.same(s.ranks.map((r) => r.pid), pids, 'the same device processes: none died');
    t.ok(pids.every(alive), 'and all of them are alive');
    t.equal(s.world.state, 'ready');
    t.equal(s.world.rebuilds, 0, 'no rebuild');
    await attacker.release(handles);
  });

  await t.test('(e) the client closes its descriptor and unmaps its buffers while the daemon still uses them', async (t) => {
    const count = 4 << 20;
    const bytes = count * 4;

    // Freed while the collective runs: the daemon's own descriptor and the ranks' mappings hold the memory.
    const bufs = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    bufs[0].view('f32').fill(1);
    bufs[1].view('f32').fill(2);
    const names = bufs.map((b) => b.name);
    const handles = await Promise.all(bufs.map((b) => attacker.register(b)));
    const run = attacker.allReduce({ buffers: handles, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    bufs.forEach((b) => b.free());
    t.equal(memfdLinks(process.pid, names[0]) + memfdLinks(process.pid, names[1]), 0, 'the client holds no descriptor of them');
    t.equal(memfdLinks(daemonPid, names[0]), 1, 'the daemon holds its own descriptor of buffer 0');
    t.equal(memfdLinks(daemonPid, names[1]), 1, 'and of buffer 1');
    const r1 = await run;
    t.ok(r1.seq > 0, `the collective completed (seq ${r1.seq})`);
    // The memory still lives: another collective on it runs too.
    const r2 = await attacker.allReduce({ buffers: handles, dtype: 'f32', op: 'max', count, timeoutMs: 20_000 });
    t.ok(r2.seq > r1.seq, 'and another one after it');
    await attacker.release(handles);
    t.equal(memfdLinks(daemonPid, names[0]) + memfdLinks(daemonPid, names[1]), 0, 'released: the daemon closed its descriptors before answering');

    // Freed right after registering, with a second mapping of our own (from a dup) to read the result.
    const more = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    more[0].view('f32').fill(5);
    more[1].view('f32').fill(7);
    const dups = more.map((b) => native.dupFd(b.registerRequest().fd));
    const readers = dups.map((fd, r) => native.ShmSegment.fromFd(fd, `reader-${r}`));
    dups.forEach((fd) => native.closeFd(fd)); // the mappings stay
    t.teardown(() => readers.forEach((s) => s.close()));
    const numbers = await Promise.all(more.map((b) => attacker.register(b)));
    more.forEach((b) => b.free());
    await attacker.allReduce({ buffers: numbers, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    let wrong = 0;
    for (const seg of readers) {
      const v = new Float32Array(seg.buffer(), 0, count);
      for (let i = 0; i < count; i += 4099) if (v[i] !== 12) wrong++;
      if (v[count - 1] !== 12) wrong++;
    }
    t.equal(wrong, 0, 'the result is in the memory registered, though the client had freed it');
    await attacker.release(numbers);

    const s = await status(d.debugSocket);
    t.same(s.ranks.map((r) => r.pid), pids, 'the same device processes: none died');
    t.equal(s.world.state, 'ready');
    t.equal(s.world.rebuilds, 0, 'no rebuild');
  });

  const report = await good.stop();
  t.comment(`good client: ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`);
  t.ok(report.ok > 10, `the good client was served throughout (${report.ok} collectives)`);
  t.equal(report.wrong, 0, 'every one of its results was right');
  t.same(report.errors, {}, 'and it saw no error');
  const end = await status(d.debugSocket);
  t.equal(end.world.state, 'ready', 'the world is ready');
  t.equal(end.world.rebuilds, 0, 'and was never rebuilt');
  t.same(end.ranks.map((r) => r.pid), pids, 'with the device processes it started with');
  t.ok(pids.every(alive));
  const stats = await debugJson<{ errors: Record<string, number> }>(d.debugSocket, 'stats');
  t.notOk(stats.errors[ErrorCodes.INTERNAL], 'no INTERNAL error anywhere');
});
