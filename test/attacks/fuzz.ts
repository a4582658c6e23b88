// A seeded protocol fuzzer for nccld: it sends frames to a real daemon over several connections at
// once and counts the replies. Random MessagePack maps with plausible and implausible fields (types,
// ids, huge counts, nested junk, bad buffer lists), registrations with and without descriptors
// (good memfds, read-only ones, sockets, files, /dev/null), descriptors stuck to frames that are no
// registration, releases of too many buffers, random bytes as frame bodies, MessagePack that is not
// a map or claims lengths it does not have, raw random byte streams, truncated frames followed by
// a disconnect, and lengths over the maximum (which close the connection); then it reconnects.
//
// Every whole frame the daemon reads gets exactly one reply (an error or an answer), so the
// fuzzer knows how many replies each connection is owed: it checks that count, and that a
// connection the daemon must close (a length over the maximum, a protocol version it refuses) is
// closed, and that no other is.
//
// Run it alone (it starts a daemon, host backend, 2 ranks, with a well-behaved client beside it,
// and checks both at the end; exit status 0 when everything held):
//   node --import=@tapjs/typescript/import test/attacks/fuzz.ts [seed] [frames]
// (from the repository root, after `npx tsc -p tsconfig.json`; TS_NODE_TRANSPILE_ONLY=1 starts it
// faster). Or against a daemon already running, as test/attacks/fuzz.test.ts does:
//   node --import=@tapjs/typescript/import test/attacks/fuzz.ts --socket PATH [seed] [frames]
// The last line printed is a JSON report. The seed fixes what each connection sends, except the
// buffer numbers it learns from replies (which depend on timing). FUZZ_TRACE=1 also prints, for a
// connection whose replies do not add up, every frame it sent and the replies it got, by code.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';
import { FrameDecoder, type Message } from '../../dist/shared/framing.js';
import { native } from '../../dist/shared/native.js';

export interface FuzzOptions {
  socket: string;
  seed: number;
  frames: number;
  /** Connections fuzzing at once (default 6). */
  connections?: number;
  /** Requests sent and not yet answered, per connection (default 48). */
  window?: number;
  log?: (line: string) => void;
}

export interface FuzzReport {
  seed: number;
  ms: number;
  /** Whole frames sent (each owed one reply). */
  frames: number;
  /** Of those: bodies that are MessagePack maps, and bodies that are not. */
  decodable: number;
  undecodable: number;
  /** Frames with descriptors attached, and registrations among them. */
  withFds: number;
  /** Connections opened, and how they ended. */
  connections: number;
  endings: Record<string, number>;
  replies: number;
  /** Replies owed and never received, and replies beyond those owed. */
  missing: number;
  extra: number;
  /** Connections the daemon closed though it had no reason to, or kept though it should have closed. */
  unexpectedCloses: number;
  missedCloses: number;
  /** Replies by code ('result' and 'hello' for answers). */
  byCode: Record<string, number>;
  /** Errors with a null id, by code. */
  unmatched: Record<string, number>;
  /** Buffers registered (results of register). */
  registered: number;
  /** Errors about descriptors piling up on frames that are no registration (owed to no frame). */
  fdOverflows: number;
}

/** mulberry32: small, fast, seedable. */
function prng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    next,
    int,
    chance: (p: number) => next() < p,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)],
    bytes: (n: number) => {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i++) b[i] = int(256);
      return b;
    },
  };
}
type Rng = ReturnType<typeof prng>;

const packr = new Packr({ useRecords: false, variableMapSize: true });
const DTYPES = ['i8', 'u8', 'i32', 'u32', 'i64', 'u64', 'f16', 'f32', 'f64', 'bf16'];
const OPS = ['sum', 'prod', 'max', 'min', 'avg'];
const TYPES = ['allreduce', 'register', 'release', 'hello', 'allgather', '', 'ALLREDUCE', '__proto__', 'constructor', 'toString'];
const KEYS = ['type', 'id', 'dtype', 'op', 'count', 'buffers', 'buffer', 'offset', 'timeoutMs', 'ipc', 'device', 'protocol', 'client', '__proto__', 'constructor', 'prototype', 'x', ''];

/** Sets an own property, even one named __proto__ (which plain assignment would turn into a prototype). */
function put(o: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

function junk(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 2 ? 9 : 12)) {
    case 0:
      return r.int(100);
    case 1:
      return r.pick([-1, -(2 ** 31), 2 ** 32, 2 ** 53, 2 ** 53 + 2, 2 ** 64, Number.MAX_VALUE, -0, 0.5, NaN, Infinity, -Infinity]);
    case 2:
      return r.pick([2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n]);
    case 3:
      return r.bytes(r.int(40)).toString('latin1');
    case 4:
      return 'x'.repeat(r.pick([0, 1, 200, 3000]));
    case 5:
      return new Uint8Array(r.bytes(r.pick([0, 1, 64, 1000])));
    case 6:
      return r.pick([true, false, null, undefined]);
    case 7:
      return r.pick(DTYPES.concat(OPS, TYPES));
    case 8:
      return r.next() * 1e6;
    case 9:
    case 10:
      return Array.from({ length: r.pick([0, 1, 2, 3, 50]) }, () => junk(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(6); i > 0; i--) put(o, r.chance(0.7) ? r.pick(KEYS) : r.bytes(r.int(8)).toString('hex'), junk(r, depth + 1));
      return o;
    }
  }
}

/** One frame to send and what the daemon owes for it. */
interface Planned {
  bytes: Buffer;
  fds?: number[];
  /** Replies owed for it. */
  replies: number;
  /** The daemon closes the connection after it. */
  closes: boolean;
  decodable: boolean;
  /** One whole frame (header and body): over the maximum, it is refused and the connection closed. */
  whole?: boolean;
}

function frame(body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

/** A frame of `message` (plain MessagePack, as the protocol says). */
function msgFrame(message: unknown): Planned {
  return { bytes: frame(packr.pack(message)), replies: 1, closes: false, decodable: true, whole: true };
}

/** Descriptors the fuzzer hands over: memfds the daemon takes, and things it must refuse. */
interface FdPool {
  good: number[];
  bad: number[];
}

function makeFdPool(dir: string): FdPool {
  const good = [4096, 8192, 65536, 65536].map((n, i) => native.memfdCreate(`fuzz-${i}`, n));
  const file = path.join(dir, 'regular');
  fs.writeFileSync(file, Buffer.alloc(8192));
  const [s1] = native.socketPair('stream');
  const bad = [
    fs.openSync(file, 'r+'),
    fs.openSync('/dev/null', 'r+'),
    fs.openSync(`/proc/self/fd/${good[0]}`, 'r'), // a memfd, read-only
    s1,
    fs.openSync(dir, 'r'),
  ];
  return { good, bad };
}

class Connection {
  replies = 0;
  closed = false;
  /** Buffer numbers this connection registered (some released since: that is fine). */
  handles: number[] = [];
  byCode: Record<string, number> = {};
  unmatched: Record<string, number> = {};
  maxFrameBytes = 64 << 10;
  registered = 0;
  fdOverflows = 0;
  private readonly decoder = new FrameDecoder(1 << 30);
  private waiters: (() => void)[] = [];
  private constructor(private readonly conn: ReturnType<typeof native.UnixConnection.adopt>) {}

  static async open(socketPath: string): Promise<Connection> {
    const socket = net.connect(socketPath);
    socket.pause();
    await once(socket, 'connect');
    const fd = native.dupFd((socket as unknown as { _handle: { fd: number } })._handle.fd);
    socket.destroy();
    let self!: Connection;
    const conn = native.UnixConnection.adopt(fd, {
      onData: (chunk, fds) => {
        fds.forEach((f) => native.closeFd(f));
        for (const f of self.decoder.push(chunk)) if ('message' in f) self.onReply(f.message);
        self.wake();
      },
      onDrain: () => {},
      onClose: () => {
        self.closed = true;
        self.wake();
      },
    });
    self = new Connection(conn);
    return self;
  }

  private onReply(m: Message): void {
    // Descriptors that pile up past 16 on frames that are no registration: one error about the
    // connection, owed to no frame.
    if (m.type === 'error' && m.id === null && /too many file descriptors/.test(String(m.message))) {
      this.fdOverflows++;
      return;
    }
    this.replies++;
    const code = m.type === 'error' ? String(m.code) : String(m.type);
    this.byCode[code] = (this.byCode[code] ?? 0) + 1;
    if (m.type === 'error' && m.id === null) this.unmatched[code] = (this.unmatched[code] ?? 0) + 1;
    if (m.type === 'hello' && typeof m.maxFrameBytes === 'number') this.maxFrameBytes = m.maxFrameBytes;
    if (m.type === 'result' && typeof m.buffer === 'number') {
      this.registered++;
      this.handles.push(m.buffer);
      if (this.handles.length > 64) this.handles.shift();
    }
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once `cond` holds (checked on every reply and on close), or after `ms`: whether it held. */
  async until(cond: () => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
    return true;
  }

  send(p: Planned): void {
    if (this.closed) return;
    try {
      this.conn.write(p.bytes, p.fds);
    } catch {
      // closed under us: the close is accounted for by the caller
    }
  }

  close(): void {
    this.conn.close();
  }
}

/** Plans the frames of one request-like message, plausible or not. */
function planRequest(r: Rng, c: Connection, nextId: () => unknown, pool: FdPool): Planned {
  const handle = () => (c.handles.length > 0 && r.chance(0.8) ? r.pick(c.handles) : r.pick([0, 1, 2, 99, 2 ** 32 - 1, r.int(100000)]));
  const slot = () => (r.chance(0.7) ? handle() : r.chance(0.7) ? { buffer: handle(), offset: r.pick([0, 4, 8, 1024, 4093, 65536, -4, 2 ** 40]) } : junk(r, 2));
  const roll = r.int(100);
  if (roll < 30) {
    // A plausible allreduce: known dtype and op, counts from tiny to absurd, buffers of this connection.
    const msg: Record<string, unknown> = {
      type: 'allreduce',
      id: nextId(),
      dtype: r.chance(0.9) ? r.pick(DTYPES) : junk(r, 2),
      op: r.chance(0.9) ? r.pick(OPS) : junk(r, 2),
      count: r.pick([0, 1, 2, 3, 16, 100, 1024, 1024, 4096, 16384, 16385, 2 ** 31, 2 ** 53 - 1, -1, 1.5]),
      buffers: r.chance(0.85) ? [slot(), slot()] : Array.from({ length: r.pick([0, 1, 3, 4, 100]) }, slot),
    };
    if (r.chance(0.3)) msg.timeoutMs = r.pick([1, 5, 100, 1000, 30000, 600001, 0, -1, 'soon']);
    return msgFrame(msg);
  }
  if (roll < 42) {
    // register: with a good memfd, with something that is not one, or with nothing.
    const msg: Record<string, unknown> = { type: 'register', id: nextId() };
    if (r.chance(0.1)) msg.ipc = junk(r, 2);
    if (r.chance(0.1)) msg.device = junk(r, 2);
    const p = msgFrame(msg);
    const which = r.int(10);
    if (which < 5) p.fds = [r.pick(pool.good)];
    else if (which < 8) p.fds = [r.pick(pool.bad)];
    return p;
  }
  if (roll < 50) {
    // release: of known buffers, of junk, of too many.
    const n = r.pick([0, 1, 2, 5, 1024, 1025, 3000]);
    const buffers = r.chance(0.1) ? junk(r, 1) : Array.from({ length: n }, () => (r.chance(0.95) ? handle() : junk(r, 2)));
    return msgFrame({ type: 'release', id: nextId(), buffers });
  }
  if (roll < 58) {
    // Any type, any fields.
    const msg: Record<string, unknown> = {};
    for (let i = r.int(8); i > 0; i--) put(msg, r.pick(KEYS), junk(r));
    if (r.chance(0.7)) msg.type = r.pick(TYPES);
    if (r.chance(0.7)) msg.id = nextId();
    return msgFrame(msg);
  }
  if (roll < 64) {
    // A request of a known type with an id that is no id.
    return msgFrame({ type: r.pick(['allreduce', 'register', 'release']), id: junk(r, 2), buffers: [1, 2], dtype: 'f32', op: 'sum', count: 1 });
  }
  if (roll < 70) {
    // Random bytes as the body.
    const body = r.bytes(r.pick([0, 1, 2, 5, 30, 300, 3000]));
    return { bytes: frame(body), replies: 1, closes: false, decodable: false, whole: true };
  }
  if (roll < 75) {
    // MessagePack that is not a map, or whose headers promise more than there is.
    const bodies = [
      packr.pack([1, 2, 3]),
      packr.pack('hello'),
      packr.pack(42),
      packr.pack(null),
      Buffer.from([0xc1]),
      Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]), // array32 of 4 billion
      Buffer.from([0xdf, 0x7f, 0xff, 0xff, 0xff]), // map32 of 2 billion
      Buffer.from([0xdb, 0xff, 0xff, 0xff, 0xf0, 0x61]), // str32 of 4 GB
      Buffer.from([0xc6, 0x7f, 0xff, 0xff, 0xff]), // bin32 of 2 GB
      Buffer.from([0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01]), // ext32
      Buffer.from([0xd4, 0x00, 0x00]), // fixext1 type 0
      Buffer.from([0xd6, 0xff, 0, 0, 0, 0]), // timestamp ext
      Buffer.from([0x81, 0xa4, 0x74, 0x79, 0x70, 0x65]), // a map missing its value
      Buffer.concat([Buffer.from([0x81, 0xa2, 0x69, 0x64]), Buffer.alloc(200, 0x91)]), // deep nesting
    ];
    return { bytes: frame(r.pick(bodies)), replies: 1, closes: false, decodable: false, whole: true };
  }
  if (roll < 80) {
    // A plausible request with a descriptor it has no use for.
    const p = planRequest(r, c, nextId, pool);
    if (!p.fds && p.bytes.length > 4) p.fds = [r.pick(r.chance(0.5) ? pool.good : pool.bad)];
    return p;
  }
  if (roll < 84) {
    // A hello after the hello.
    return msgFrame({ type: 'hello', protocol: r.pick([1, 2, 3]), ...(r.chance(0.5) ? { id: nextId() } : {}) });
  }
  if (roll < 87) {
    // A large frame, still under the maximum.
    const room = c.maxFrameBytes - 64;
    return msgFrame({ type: r.pick(['allreduce', 'release', 'register']), id: nextId(), client: 'y'.repeat(Math.max(0, room - r.int(1000))) });
  }
  // Plain valid-looking requests again, to keep buffers in use.
  return msgFrame({ type: 'allreduce', id: nextId(), dtype: 'f32', op: r.pick(OPS), count: r.pick([1, 16, 1024]), buffers: [handle(), handle()], timeoutMs: 20000 });
}

/** Frames a stream of random bytes makes, as the daemon's decoder will cut it. */
function planStream(r: Rng, maxFrameBytes: number): Planned {
  const bytes = r.chance(0.5) ? r.bytes(r.pick([1, 3, 4, 7, 64, 600])) : Buffer.concat([frame(r.bytes(r.int(50))), r.bytes(r.int(20))]);
  const d = new FrameDecoder(maxFrameBytes);
  let replies = 0;
  let closes = false;
  try {
    for (const f of d.push(Buffer.from(bytes))) {
      void f;
      replies++;
    }
  } catch {
    replies++; // FRAME_TOO_LARGE, then the close
    closes = true;
  }
  return { bytes, replies, closes, decodable: false };
}

/** Fuzzes the daemon at `socket` with `frames` frames over several connections. */
export async function fuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const t0 = Date.now();
  const log = opts.log ?? (() => {});
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nccld-fuzz-'));
  const pool = makeFdPool(dir);
  const report: FuzzReport = {
    seed: opts.seed,
    ms: 0,
    frames: 0,
    decodable: 0,
    undecodable: 0,
    withFds: 0,
    connections: 0,
    endings: {},
    replies: 0,
    missing: 0,
    extra: 0,
    unexpectedCloses: 0,
    missedCloses: 0,
    byCode: {},
    unmatched: {},
    registered: 0,
    fdOverflows: 0,
  };
  const workers = opts.connections ?? 6;
  const window = opts.window ?? 48;
  let budget = opts.frames;
  const end = (how: string) => (report.endings[how] = (report.endings[how] ?? 0) + 1);

  const worker = async (w: number) => {
    const r = prng((opts.seed ^ Math.imul(w + 1, 0x9e3779b9)) >>> 0);
    let nextIdValue = 1;
    const recent: number[] = [];
    while (budget > 0) {
      const c = await Connection.open(opts.socket);
      report.connections++;
      let owed = 0;
      let mustClose = false;
      const trace: string[] = [];
      const sendPlanned = async (p: Planned) => {
        // Junk can outgrow the maximum frame: that one is refused (FRAME_TOO_LARGE) and ends the connection.
        if (p.whole && p.bytes.length - 4 > c.maxFrameBytes) p = { ...p, replies: 1, closes: true, decodable: false };
        // The daemon hangs up right after the error of a closing frame: replies to requests still
        // under way (registrations, collectives) are not sent. Collect those first.
        if (p.closes) await c.until(() => c.replies >= owed || c.closed, 30_000);
        if (process.env.FUZZ_TRACE) trace.push(`${p.replies}${p.closes ? 'C' : ''}${p.fds ? 'F' : ''}:${p.bytes.subarray(0, 120).toString('hex')}`);
        report.frames += p.replies;
        if (p.decodable) report.decodable++;
        else report.undecodable++;
        if (p.fds) report.withFds++;
        owed += p.replies;
        mustClose ||= p.closes;
        budget--;
        c.send(p);
      };
      const nextId = () => {
        if (recent.length > 0 && r.chance(0.05)) return r.pick(recent); // perhaps still in flight: a duplicate
        if (r.chance(0.03)) return junk(r, 2);
        const id = nextIdValue++;
        recent.push(id);
        if (recent.length > 16) recent.shift();
        return id;
      };

      // Before the hello: sometimes junk (each owed HELLO_REQUIRED or BAD_FRAME), sometimes a refused version.
      if (r.chance(0.1)) {
        for (let i = r.int(3) + 1; i > 0; i--) {
          await sendPlanned(r.chance(0.5) ? msgFrame({ type: r.pick(['allreduce', 'register', 'release', 'x']), id: nextId() }) : msgFrame({ type: 'hello', protocol: r.pick(['2', -1, 1.5, null]) }));
        }
      }
      if (r.chance(0.03)) {
        await sendPlanned({ ...msgFrame({ type: 'hello', protocol: r.pick([0, 1]) }), closes: true });
      } else {
        const client = r.chance(0.7) ? `fuzz-${w}` : junk(r, 2);
        await sendPlanned(msgFrame({ type: 'hello', protocol: r.pick([2, 2, 2, 3, 1000]), client }));
        // A hello whose client is no string is refused (BAD_REQUEST): say hello again, properly.
        if (typeof client !== 'string' && client !== undefined) await sendPlanned(msgFrame({ type: 'hello', protocol: 2, client: `fuzz-${w}` }));
        const length = 1 + r.int(400);
        for (let i = 0; i < length && budget > 0 && !c.closed; i++) {
          if (owed - c.replies >= window) {
            if (!(await c.until(() => owed - c.replies < window || c.closed, 30_000))) {
              log(`worker ${w}: no reply for 30 s (owed ${owed}, got ${c.replies})`);
              break;
            }
          }
          const roll = r.int(1000);
          if (roll < 6) {
            // A length over the maximum: FRAME_TOO_LARGE, then the daemon hangs up.
            const head = Buffer.alloc(4);
            head.writeUInt32BE(c.maxFrameBytes + 1 + r.int(2 ** 31));
            await sendPlanned({ bytes: Buffer.concat([head, r.bytes(r.int(100))]), replies: 1, closes: true, decodable: false });
            break;
          }
          if (roll < 14) {
            // Random bytes as the stream itself.
            const p = planStream(r, c.maxFrameBytes);
            await sendPlanned(p);
            if (p.closes) break;
            // What the stream left half-read would swallow the next frame: end this connection here.
            const d = new FrameDecoder(c.maxFrameBytes);
            for (const f of d.push(Buffer.from(p.bytes))) void f;
            if (d.pendingBytes > 0) break;
            continue;
          }
          await sendPlanned(planRequest(r, c, nextId, pool));
          if (mustClose) break;
        }
      }
      // Collect what is owed, then see how the connection ends.
      const got = await c.until(() => c.replies >= owed || (c.closed && !mustClose), 30_000);
      if (mustClose) {
        await c.until(() => c.closed, 10_000);
        if (!c.closed) report.missedCloses++;
        end(c.closed ? 'closed by the daemon, as owed' : 'not closed though owed');
      } else if (c.closed) {
        report.unexpectedCloses++;
        end('closed by the daemon unexpectedly');
      } else {
        // Leave: truncated mid-frame, or cleanly.
        if (r.chance(0.3)) {
          const whole = planRequest(r, c, nextId, pool).bytes;
          c.send({ bytes: whole.subarray(0, 1 + r.int(whole.length - 1)), replies: 0, closes: false, decodable: false });
          end('truncated frame, then closed by us');
        } else {
          end('closed by us');
        }
        c.close();
      }
      if (!got) log(`worker ${w}: owed ${owed} replies, got ${c.replies}`);
      if (!got && process.env.FUZZ_TRACE) log(`trace: ${trace.join('\n')}\nreplies: ${JSON.stringify(c.byCode)}`);
      // Replies may trail the close a little; they count as long as they came.
      report.replies += c.replies;
      if (c.replies < owed) report.missing += owed - c.replies;
      if (c.replies > owed) report.extra += c.replies - owed;
      report.registered += c.registered;
      report.fdOverflows += c.fdOverflows;
      for (const [k, v] of Object.entries(c.byCode)) report.byCode[k] = (report.byCode[k] ?? 0) + v;
      for (const [k, v] of Object.entries(c.unmatched)) report.unmatched[k] = (report.unmatched[k] ?? 0) + v;
    }
  };
  try {
    await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  } finally {
    for (const fd of [...pool.good, ...pool.bad]) native.closeFd(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  report.ms = Date.now() - t0;
  return report;
}

/** Standalone: parse arguments, start a daemon unless --socket names one, fuzz, check, report. */
async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let socket: string | null = null;
  const si = args.indexOf('--socket');
  if (si >= 0) {
    socket = args[si + 1];
    args.splice(si, 2);
  }
  const seed = args[0] !== undefined ? Number(args[0]) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  const frames = args[1] !== undefined ? Number(args[1]) : 100_000;
  console.error(`nccld fuzz: seed ${seed}, ${frames} frames${socket ? ` against ${socket}` : ''}`);
  if (socket) {
    const report = await fuzz({ socket, seed, frames, log: (l) => console.error(l) });
    console.log(JSON.stringify(report));
    return 0;
  }
  // Standalone: a daemon of our own, a good client beside the fuzzer, and the checks.
  const { startDaemon, debugCommand, alive } = await import('../helpers/daemon.js');
  const { startGoodClient } = await import('../helpers/good-client.js');
  const d = await startDaemon(['--backend', 'host', '--ranks', '2']);
  try {
    return await checkedRun(d, seed, frames, { debugCommand, alive, startGoodClient });
  } finally {
    await d.stop();
  }
}

async function checkedRun(
  d: import('../helpers/daemon.js').RunningDaemon,
  seed: number,
  frames: number,
  h: {
    debugCommand: typeof import('../helpers/daemon.js').debugCommand;
    alive: typeof import('../helpers/daemon.js').alive;
    startGoodClient: typeof import('../helpers/good-client.js').startGoodClient;
  },
): Promise<number> {
  const { debugCommand, alive, startGoodClient } = h;
  const status = async () => JSON.parse((await debugCommand(d.debugSocket, 'format json', 'status')).trim().split('\n')[1]).result;
  const stats = async () => JSON.parse((await debugCommand(d.debugSocket, 'format json', 'stats')).trim().split('\n')[1]).result;
  const before = await status();
  const daemonFds = fs.readdirSync(`/proc/${d.proc.pid}/fd`).length;
  const good = await startGoodClient(d.socket);
  const report = await fuzz({ socket: d.socket, seed, frames, log: (l) => console.error(l) });
  const goodReport = await good.stop();
  await new Promise((r) => setTimeout(r, 500));
  const after = await status();
  const s = await stats();
  // A debug connection may still be closing: give the count a moment to come down.
  let fdsAfter = fs.readdirSync(`/proc/${d.proc.pid}/fd`).length;
  for (let i = 0; i < 30 && fdsAfter > daemonFds; i++) {
    await new Promise((r) => setTimeout(r, 100));
    fdsAfter = fs.readdirSync(`/proc/${d.proc.pid}/fd`).length;
  }
  const checks = {
    daemonAlive: alive(d.proc.pid!),
    worldReady: after.world.state === 'ready',
    rebuilds: after.world.rebuilds,
    sameRanks: JSON.stringify(after.ranks.map((r: { pid: number }) => r.pid)) === JSON.stringify(before.ranks.map((r: { pid: number }) => r.pid)),
    goodOk: goodReport.ok,
    goodWrong: goodReport.wrong,
    goodErrors: goodReport.errors,
    goodP50Ms: Number(goodReport.p50.toFixed(2)),
    goodP99Ms: Number(goodReport.p99.toFixed(2)),
    internalErrors: s.errors.NCCLD_ERR_INTERNAL ?? 0,
    daemonFds: { before: daemonFds, after: fdsAfter },
    registeredAfter: after.registeredBuffers,
  };
  const ok =
    checks.daemonAlive && checks.worldReady && checks.rebuilds === 0 && checks.sameRanks && checks.goodOk > 0 && checks.goodWrong === 0 &&
    Object.keys(checks.goodErrors).length === 0 && checks.internalErrors === 0 && report.missing === 0 && report.extra === 0 &&
    report.unexpectedCloses === 0 && report.missedCloses === 0 && fdsAfter <= daemonFds && checks.registeredAfter === 0;
  console.log(JSON.stringify({ ok, checks, report }));
  return ok ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      console.error(err);
      process.exit(2);
    },
  );
}
