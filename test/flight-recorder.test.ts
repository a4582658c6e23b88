// The flight recorder reuses the record its ring pushes out: what `ops` shows must still be right.
import t from 'tap';
import { FlightRecorder } from '../dist/daemon/flight-recorder.js';

t.test('the last N finished, oldest first, right after the ring wraps and records are reused', async (t) => {
  const fr = new FlightRecorder(3);
  const recs = [];
  for (let i = 0; i < 5; i++) {
    const rec = fr.queued(1, 'c', i, 'allreduce', 'f32', 'sum', 10 + i, 40);
    fr.started(rec, 100 + i, 1, 2);
    rec.ranks[0] = 'done';
    rec.ranks[1] = i === 4 ? 'failed' : 'done';
    fr.finish(rec, i === 4 ? { code: 'NCCLD_ERR_X', message: 'bad' } : null);
    recs.push(rec);
  }
  const recent = fr.recent();
  t.same(recent.map((r) => r.requestId), [2, 3, 4], 'the newest three, oldest first');
  t.same(recent.map((r) => r.seq), [102, 103, 104]);
  t.same(recent[2].ranks, ['done', 'failed']);
  t.equal(recent[2].error, 'NCCLD_ERR_X: bad');
  t.same(fr.recent(1).map((r) => r.requestId), [4], 'recent(n) takes the newest n');
  // The next collective takes a record pushed out of the ring, not a new object...
  const next = fr.queued(2, null, 9, 'allreduce', 'f64', 'max', 7, 56);
  t.ok(recs.slice(0, 2).includes(next), 'a pushed-out record is reused');
  t.same(next.ranks, [], 'and starts clean');
  t.equal(next.state, 'queued');
  t.same(fr.inFlight(), [next], 'it is in flight');
  // ...and what recent() handed out earlier is a copy, untouched by the reuse.
  t.same(recent.map((r) => r.requestId), [2, 3, 4]);
  fr.started(next, 200, 2, 3);
  t.same(next.ranks, ['pending', 'pending', 'pending']);
  fr.finish(next, null);
  t.same(fr.recent().map((r) => r.requestId), [3, 4, 9]);
  t.same(fr.inFlight(), []);
});
