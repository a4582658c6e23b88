// Finding: "Silent wrong results: a segment unlinked and re-created under the same name (without
// release) is still served from the old mapping, and the client gets result for a buffer never
// touched. Unlinked segments also stay in memory until the client disconnects." Protocol 2 names
// registered memory by a number the daemon gave, never reused. These tests show that a `result`
// always means the registered memory was reduced (even when the client's descriptor numbers are
// reused for new memory), that a number no longer (or never) registered on the connection gets
// NCCLD_ERR_NO_SUCH_BUFFER, and that release lets go of the memory everywhere without a
// disconnect. A well-behaved client runs throughout.
import t from 'tap';
import fs from 'node:fs';
import { connect, ErrorCodes, HostBuffer, type Client } from '../../dist/client/index.js';
import { native, type ShmSegment } from '../../dist/shared/native.js';
import { alive, startDaemon, until } from '../helpers/daemon.js';
import { startGoodClient } from '../helpers/good-client.js';
import { debugJson, memfdLinks, status } from '../helpers/inspect.js';

/** Lines of /proc/<pid>/maps that map a memfd whose name contains `name`. */
function mapLines(pid: number, name: string): number {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.includes('memfd:') && l.includes(name)).length;
}

/** A second mapping of a HostBuffer's memory, from a dup of its descriptor, to read it after free(). */
function secondMapping(b: HostBuffer, label: string): ShmSegment {
  const dup = native.dupFd(b.registerRequest().fd);
  try {
    return native.ShmSegment.fromFd(dup, label);
  } finally {
    native.closeFd(dup);
  }
}

/** Whether every element of `v` is `x` (a spread of them, and the last). */
function allAre(v: Float32Array, x: number): boolean {
  for (let i = 0; i < v.length; i += 1021) if (v[i] !== x) return false;
  return v[v.length - 1] === x;
}

const count = 1 << 20; // 4 MiB of f32 per buffer
const bytes = count * 4;

t.test('a result always means the registered memory was reduced', async (t) => {
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  t.teardown(() => d.stop());
  const good = await startGoodClient(d.socket);
  t.teardown(() => good.stop());
  const c: Client = await connect(d.socket, { name: 'reuser' });
  t.teardown(() => c.close());
  await until('the good client registered its buffers', async () => (await status(d.debugSocket)).registeredBuffers >= 2);
  const pids = (await status(d.debugSocket)).ranks.map((r) => r.pid!);
  const readers: ShmSegment[] = [];
  t.teardown(() => readers.forEach((s) => s.close()));
  let hA: number[] = [];
  let B: HostBuffer[] = [];
  let hB: number[] = [];

  await t.test('memory freed by the client and its descriptor numbers reused: the registered memory is still what is reduced', async (t) => {
    const A = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    A[0].view('f32').fill(1);
    A[1].view('f32').fill(2);
    const aFds = A.map((b) => b.registerRequest().fd);
    const aRead = A.map((b, r) => secondMapping(b, `A-${r}`));
    readers.push(...aRead);
    hA = await Promise.all(A.map((b) => c.register(b)));
    // The client lets go of A here and makes new memory B, which gets A's descriptor numbers.
    A.forEach((b) => b.free());
    B = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    const bFds = B.map((b) => b.registerRequest().fd);
    t.comment(`A's descriptors were ${aFds.join(', ')}; B's are ${bFds.join(', ')}${bFds.some((f) => aFds.includes(f)) ? ' (reused)' : ''}`);
    B.forEach((b) => b.view('f32').fill(99));

    const r = await c.allReduce({ buffers: hA, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    t.ok(r.seq > 0, 'the collective naming A was answered with a result');
    t.ok(allAre(new Float32Array(aRead[0].buffer(), 0, count), 3), "A's rank 0 memory holds the sum");
    t.ok(allAre(new Float32Array(aRead[1].buffer(), 0, count), 3), "A's rank 1 memory holds the sum");
    t.ok(allAre(B[0].view('f32'), 99) && allAre(B[1].view('f32'), 99), 'B, never named, is untouched');

    // B registered gets numbers of its own, never A's.
    hB = await Promise.all(B.map((b) => c.register(b)));
    t.notOk(hB.some((h) => hA.includes(h)), `B got new numbers (${hB.join(', ')}), not A's (${hA.join(', ')})`);
    B[0].view('f32').fill(10);
    B[1].view('f32').fill(20);
    await c.allReduce({ buffers: hB, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    t.ok(allAre(B[0].view('f32'), 30) && allAre(B[1].view('f32'), 30), 'naming B reduces B');
    t.ok(allAre(new Float32Array(aRead[0].buffer(), 0, count), 3), 'and leaves A alone');
  });

  await t.test('a released number is refused with NO_SUCH_BUFFER, never answered with a result', async (t) => {
    await c.release(hA);
    await t.rejects(c.allReduce({ buffers: hA, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, 'both released');
    B[1].view('f32').fill(7);
    await t.rejects(c.allReduce({ buffers: [hA[0], hB[1]], dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, 'one released, one live');
    t.ok(allAre(B[1].view('f32'), 7), 'the live buffer named with it was not touched');
    await t.rejects(c.release([hA[0]]), { code: ErrorCodes.NO_SUCH_BUFFER }, 'releasing it again');
    // A release naming one buffer twice releases it once (it used to answer INTERNAL).
    const D = HostBuffer.alloc(4096);
    t.teardown(() => D.free());
    const hD = await c.register(D);
    t.match(await c.request({ type: 'release', buffers: [hD, hD, hD] }), { type: 'result' }, 'a release naming a buffer three times');
    await t.rejects(c.allReduce({ buffers: [hD, hB[1]], dtype: 'f32', op: 'sum', count: 1, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, 'and it is gone');
    await t.rejects(c.allReduce({ buffers: [123456, 123457], dtype: 'f32', op: 'sum', count: 1, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, 'numbers never given');
    // New registrations never get a released number back.
    const C = HostBuffer.alloc(4096);
    t.teardown(() => C.free());
    const hC = await c.register(C);
    t.notOk(hA.includes(hC), `a new registration gets a new number (${hC})`);
    await c.release([C]);
    await t.rejects(c.allReduce({ buffers: [hC, hB[1]], dtype: 'f32', op: 'sum', count: 1, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER });
  });

  await t.test("another connection's numbers are refused with NO_SUCH_BUFFER", async (t) => {
    const other = await connect(d.socket, { name: 'other' });
    t.teardown(() => other.close());
    const O = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    t.teardown(() => O.forEach((b) => b.free()));
    O[0].view('f32').fill(4);
    O[1].view('f32').fill(5);
    const hO = await Promise.all(O.map((b) => other.register(b)));
    await t.rejects(c.allReduce({ buffers: hO, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, "naming the other's buffers");
    await t.rejects(c.allReduce({ buffers: [hB[0], hO[1]], dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 }), { code: ErrorCodes.NO_SUCH_BUFFER }, 'mixed with one of its own');
    await t.rejects(c.release([hO[0]]), { code: ErrorCodes.NO_SUCH_BUFFER }, "releasing the other's buffer");
    t.ok(allAre(O[0].view('f32'), 4) && allAre(O[1].view('f32'), 5), "the other's memory was not touched");
    await other.allReduce({ buffers: hO, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    t.ok(allAre(O[0].view('f32'), 9), 'and its owner still uses it');
    await c.release(hB);
    B.forEach((b) => b.free());
  });

  await t.test('release lets go of the memory in the device processes and the daemon, without a disconnect', async (t) => {
    const daemonPid = d.proc.pid!;
    const mapped = async () => (await debugJson<{ mapped: number }[]>(d.debugSocket, 'buffers')).map((s) => s.mapped);
    // The earlier subtest's client may still be letting go of its buffers: start from steady counts.
    let base = await mapped();
    for (let steady = 0; steady < 3; ) {
      await new Promise((r) => setTimeout(r, 100));
      const now = await mapped();
      steady = JSON.stringify(now) === JSON.stringify(base) ? steady + 1 : 0;
      base = now;
    }
    const memfdsBefore = memfdLinks(daemonPid);
    const M = [HostBuffer.alloc(bytes), HostBuffer.alloc(bytes)];
    const names = M.map((b) => b.name);
    M[0].view('f32').fill(1);
    M[1].view('f32').fill(1);
    const read = M.map((b, r) => secondMapping(b, `M-${r}`));
    readers.push(...read);
    const hM = await Promise.all(M.map((b) => c.register(b)));
    M.forEach((b) => b.free()); // the client keeps only its read-only second mapping
    t.same(await mapped(), base.map((n) => n + 2), 'registered: each rank maps both buffers');
    for (const pid of pids) {
      t.ok(names.every((n) => mapLines(pid, n) >= 1), `rank pid ${pid}'s maps list both memfds`);
      t.equal(memfdLinks(pid, 'nccld-'), 0, `rank pid ${pid} holds no memfd descriptor (mapping kept, descriptor closed)`);
    }
    t.equal(memfdLinks(daemonPid) - memfdsBefore, 2, 'the daemon holds one descriptor per buffer');

    // Released while a collective on them runs: the collective ends, then they go.
    const run = c.allReduce({ buffers: hM, dtype: 'f32', op: 'sum', count, timeoutMs: 20_000 });
    const released = c.release(hM);
    await run;
    await released;
    t.ok(allAre(new Float32Array(read[0].buffer(), 0, count), 2), 'the collective released under it still completed, into the registered memory');
    // The release is answered once every rank has let go: nothing to wait for after it.
    t.same(await mapped(), base, 'debug socket buffers: mapped back to what it was');
    for (const pid of pids) t.ok(names.every((n) => mapLines(pid, n) === 0), `rank pid ${pid}'s maps no longer list them`);
    t.equal(memfdLinks(daemonPid, names[0]) + memfdLinks(daemonPid, names[1]), 0, 'the daemon closed its descriptors of them');
    t.equal(memfdLinks(daemonPid), memfdsBefore, 'the daemon holds as many memfds as before');
    t.equal(mapLines(daemonPid, 'nccld-'), 0, 'the daemon itself never maps client memory');

    // Still connected and served.
    const N = [HostBuffer.alloc(4096), HostBuffer.alloc(4096)];
    t.teardown(() => N.forEach((b) => b.free()));
    N[0].view('f32').fill(1);
    N[1].view('f32').fill(2);
    await c.allReduce({ buffers: N, dtype: 'f32', op: 'sum', count: 1024, timeoutMs: 20_000 });
    t.ok(allAre(N[0].view('f32'), 3), 'the same connection goes on being served');
    await c.release(N);
  });

  const report = await good.stop();
  t.comment(`good client: ${report.ok} ok, p50 ${report.p50.toFixed(2)} ms, p99 ${report.p99.toFixed(2)} ms, errors ${JSON.stringify(report.errors)}`);
  t.ok(report.ok > 10, `the good client was served throughout (${report.ok} collectives)`);
  t.equal(report.wrong, 0, 'every one of its results was right');
  t.same(report.errors, {}, 'and it saw no error');
  const end = await status(d.debugSocket);
  t.equal(end.world.state, 'ready');
  t.equal(end.world.rebuilds, 0, 'no rebuild');
  t.same(end.ranks.map((r) => r.pid), pids, 'the same device processes');
  t.ok(pids.every(alive));
});
