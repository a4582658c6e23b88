// The frame layer alone: no socket, no daemon.
import t from 'tap';
import { pack } from 'msgpackr';
import { FrameDecoder, encodeFrame } from '../dist/shared/framing.js';

function frameOf(body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

t.test('frames split across chunks come out whole and in order', async (t) => {
  const d = new FrameDecoder(1024);
  const bytes = Buffer.concat([encodeFrame({ type: 'a', id: 1 }), encodeFrame({ type: 'b', id: 2, blob: Buffer.alloc(100, 7) })]);
  const out = [];
  for (let i = 0; i < bytes.length; i++) out.push(...d.push(bytes.subarray(i, i + 1)));
  t.same(
    out.map((f) => ('message' in f ? f.message.type : 'error')),
    ['a', 'b'],
  );
  t.equal(d.pendingBytes, 0);
});

t.test('a body that is not MessagePack, or not a map, is an error and the stream goes on', async (t) => {
  const d = new FrameDecoder(1024);
  const bad = frameOf(Buffer.from([0xc1])); // 0xc1 is never used in MessagePack
  const arr = frameOf(pack([1, 2, 3]));
  const good = encodeFrame({ type: 'ok' });
  const out = [...d.push(Buffer.concat([bad, arr, good]))];
  t.equal(out.length, 3);
  t.match(out[0], { error: { code: 'NCCLD_ERR_BAD_FRAME' } });
  t.match(out[1], { error: { code: 'NCCLD_ERR_BAD_FRAME', message: /not a map/ } });
  t.match(out[2], { message: { type: 'ok' } });
});

t.test('a length over the maximum throws before any body is read', async (t) => {
  const d = new FrameDecoder(16);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(17);
  t.throws(() => [...d.push(head)], { code: 'NCCLD_ERR_FRAME_TOO_LARGE' });
});

t.test('a truncated frame waits for the rest', async (t) => {
  const d = new FrameDecoder(1024);
  const f = encodeFrame({ type: 'x' });
  t.same([...d.push(f.subarray(0, f.length - 1))], []);
  t.equal(d.pendingBytes, f.length - 1);
  t.equal([...d.push(f.subarray(f.length - 1))].length, 1);
});

t.test('frames are plain MessagePack maps (no msgpackr records)', async (t) => {
  const f = encodeFrame({ type: 'hello', protocol: 1 });
  // fixmap with 2 entries right after the header
  t.equal(f[4], 0x82);
});
