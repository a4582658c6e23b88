// Loads the C++ addon (built by cmake-js into build/Release) and gives its surface a type.
// The addon is thin on purpose: callers validate, it does the system calls and the loops.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface ShmSegment {
  readonly name: string;
  readonly size: number;
  readonly closed: boolean;
  buffer(): ArrayBuffer;
  currentSize(): number;
  close(): void;
}

export interface ShmSegmentClass {
  create(name: string, bytes: number, mode: number): ShmSegment;
  open(name: string): ShmSegment;
  /**
   * Maps the whole of a memfd sealed against shrinking (else NCCLD_ERR_BAD_BUFFER, as for an
   * empty one) MAP_SHARED read/write. Takes no ownership of `fd` and keeps none: close it
   * whenever you like, the mapping stays. `name` is `label`; currentSize() is the mapped size.
   */
  fromFd(fd: number, label: string): ShmSegment;
}

export interface UnixConnectionHandlers {
  /**
   * One call per recvmsg: the bytes, and any fds received with them (SCM_RIGHTS, already
   * CLOEXEC; JS owns and must close them). Fds come in the chunk that holds the first byte of
   * the write that carried them, never earlier or later. fdsTruncated: the kernel dropped some
   * (MSG_CTRUNC); those received are still given.
   */
  onData(chunk: Buffer, fds: number[], fdsTruncated: boolean): void;
  /** The write queue became empty after having been non-empty. */
  onDrain(): void;
  /**
   * Exactly once, never from inside a call into the connection: the peer closed, or close()
   * or end() (err null), or an error (err = errno name such as 'ECONNRESET' or 'EPIPE').
   * The fd is already closed by then.
   */
  onClose(err: string | null): void;
}

export interface UnixConnection {
  /** -1 once closed. */
  readonly fd: number;
  /** Bytes queued in user space, not yet accepted by the kernel. */
  readonly writableLength: number;
  /**
   * Sends now what the kernel takes and queues (copies) the rest. `fds` (at most 16) go with
   * the first byte of `data`, which must then hold at least one byte; they are dup'ed if they
   * must be queued, so the caller may close its own copies right after. Returns writableLength.
   * Throws NCCLD_ERR_CLOSED after close() or end(), EBADF for an fd that is not open; a failed
   * send closes the connection and is reported through onClose on a later turn.
   */
  write(data: Uint8Array, fds?: number[]): number;
  /** Stops reading (no onData until resume()). Nothing is watched while paused with nothing
   *  queued: a hang-up is noticed at resume(), or when a write fails. */
  pause(): void;
  resume(): void;
  /** Closes once the write queue is empty (now if it is), then onClose(null). Reading goes on until then. */
  end(): void;
  /** Closes now; queued bytes are dropped; onClose(null) follows (on a later turn) unless it fired already. */
  close(): void;
}

export interface UnixConnectionClass {
  /**
   * Takes ownership of a connected Unix stream socket fd (sets O_NONBLOCK) and starts reading.
   * If it throws, the fd is still the caller's. The handlers are read once, here.
   */
  adopt(fd: number, handlers: UnixConnectionHandlers): UnixConnection;
}

/**
 * Daemon side of one rank's shared-memory data plane (host backend): one per rank. A sealed
 * memfd holds a submission ring and a completion ring; two eventfds are the doorbells.
 */
export interface RankRing {
  /**
   * [memfd, submitEventfd, completeEventfd]: hand them to the device process (SCM_RIGHTS); they
   * stay open here until close() (all -1 after it). All three are CLOEXEC.
   */
  readonly fds: [number, number, number];
  /** Records that fit in the submission ring (create's capacity rounded up to a power of two). */
  readonly capacity: number;
  /**
   * Writes one record (kind: ring_layout.h's kKind*, 0 = allreduce) for the device's worker; returns false when
   * the submission ring is full (nothing written; never blocks, whatever state the device is in).
   * ids/offsets: one entry per buffer, in rank order (0..maxBuffers, same length; offsets in
   * bytes). seq: any integer 0..2^53-1, echoed back in the completion. Throws NCCLD_ERR_INVALID_ARG
   * on malformed arguments (unknown dtype/op, kind != 0...), NCCLD_ERR_CLOSED after close().
   */
  submit(
    seq: number,
    kind: number,
    dtype: number,
    op: number,
    count: number,
    ids: Uint32Array,
    offsets: Float64Array,
    /** [root, comm, share, nshares, color, key, flags] (ring_layout.h's SubmitHeader); default [-1, 0, 0, 0, 0, 0, 0]. */
    extra?: Int32Array,
    /** flags != 0: the two CUDA IPC event handles (128 bytes); only in a ring made withEvents. */
    events?: Uint8Array,
  ): boolean;
  /**
   * Starts watching the completion doorbell (uv_poll on the event loop): onComplete is called once
   * per wake with every completion posted since the last, in the order the worker took the records
   * (= submission order): seqs[i] finished with codes[i] (0 ok; else an index into
   * RANK_RING_CODES). The arrays are fresh and the caller's. A started ring keeps itself alive
   * until close(). Throws if already started or closed. An exception from onComplete goes to
   * process 'uncaughtException'.
   */
  start(onComplete: (seqs: Float64Array, codes: Int32Array) => void): void;
  /** Stops watching and closes the fds and the mapping. Idempotent; safe inside onComplete. */
  /** Delivers the completions posted so far to onComplete now (before acting on a worker's death). */
  drain(): void;
  close(): void;
}

export interface RankRingClass {
  /** capacity 1..65536 (rounded up to a power of two), maxBuffers 1..1024; the region at most 64 MiB. */
  create(capacity: number, maxBuffers: number, withEvents?: boolean): RankRing;
}

/**
 * Device side: attaches to the rings and runs a worker thread that takes records, reduces this
 * rank's slice of each (as reduceSlice does) and posts completions.
 */
export interface RingWorker {
  /**
   * Lets records name buffer `id` (0..2^32-1; replaces an earlier one). The segment's mapping is
   * kept alive by the worker while it may use it, whatever happens to the segment. The usable size
   * is fixed now (sealed memfds from fromFd are the safe kind: a POSIX segment truncated later
   * would SIGBUS this process). Throws NCCLD_ERR_BUFFER_CLOSED for a closed segment,
   * NCCLD_ERR_CLOSED after stop().
   */
  setBuffer(id: number, segment: ShmSegment): void;
  /** Records taken after this no longer find `id` (one being reduced keeps its mapping). No-op after stop(). */
  dropBuffer(id: number): void;
  /**
   * Fault injection for the next record: 'hang' (the worker stops taking records until
   * inject(null) or stop), 'fail' (that record completes with NCCLD_ERR_INTERNAL), 'crash'
   * (SIGKILL of this process when the worker takes it). null disarms.
   */
  inject(fault: 'hang' | 'fail' | 'crash' | null): void;
  /** Stops and joins the thread (a hung worker too), closes its fds and mapping. Idempotent. */
  stop(): void;
}

export interface RingWorkerClass {
  /**
   * Takes ownership of fds ([memfd, submitEventfd, completeEventfd], as received) at once: they
   * are closed by stop(), and by attach itself if it throws (unless `fds` is not even an array of
   * fd numbers). 0 <= rank < nranks.
   */
  /** spinUs: how long the thread spins for the next record before it sleeps (default 50). */
  attach(fds: number[], rank: number, nranks: number, spinUs?: number): RingWorker;
}

export interface FdInfo {
  size: number;
  /** F_GET_SEALS, or -1 when the fd is not a sealable memfd. */
  seals: number;
  uid: number;
  /** Permission bits (st_mode & 0o7777). */
  mode: number;
  type: 'file' | 'socket' | 'other';
  /** Bytes of storage reserved for the file (st_blocks × 512): less than size means sparse. */
  allocatedBytes: number;
  /** Open for reading and writing (O_RDWR). */
  readWrite: boolean;
}

export interface Seals {
  readonly SEAL: number;
  readonly SHRINK: number;
  readonly GROW: number;
  readonly WRITE: number;
  readonly FUTURE_WRITE: number;
}

export interface GpuDeviceInfo {
  ordinal: number;
  name: string;
  pciBusId: string;
  totalBytes: number;
}

export interface GpuProbe {
  available: boolean;
  reason?: string;
  driverVersion?: number;
  ncclVersion?: number;
  devices: GpuDeviceInfo[];
}

export interface IpcMapping {
  ptr: bigint;
  base: bigint;
  size: number;
  device: number;
}

export interface GpuDevice {
  readonly ordinal: number;
  readonly name: string;
  /** "GPU-xxxxxxxx-...", as nvidia-smi -L prints it (undefined in builds without it). */
  readonly uuid?: string;
  readonly pciBusId: string;
  openIpcHandle(handle: Uint8Array): IpcMapping;
  closeIpcHandle(ptr: bigint): void;
  stats(): { ipcOpens: number; ipcCloses: number };
  close(): void;
}

export interface GpuComm {
  readonly rank: number;
  readonly nranks: number;
  poll(): 'ready' | 'pending';
  allReduce(ptr: bigint, count: number, dtype: number, op: number): Promise<void>;
  asyncError(): string | null;
  abort(): void;
  destroy(): void;
}

export interface GpuDeviceBuffer {
  readonly ordinal: number;
  readonly bytes: number;
  readonly ptr: bigint;
  write(src: ArrayBufferView, byteOffset?: number): void;
  read(dst: ArrayBufferView, byteOffset?: number): void;
  ipcHandle(): Buffer;
  free(): void;
}

/**
 * The NCCL backend's end of a rank ring (see RingWorker): a native thread launches each record on
 * the communicator set last and posts its completion once the GPU has finished it.
 */
export interface NcclRingWorker {
  /**
   * Collectives run on `comm` from now on (null: none, they fail NOT_READY). What was in flight on
   * the previous one, and every record submitted before this call, ends ABORTED.
   */
  setComm(comm: GpuComm | null): void;
  /** Lets records name buffer `id`: `bytes` usable from device address `ptr`, mapped until dropBuffer. */
  setBuffer(id: number, ptr: bigint, bytes: number): void;
  dropBuffer(id: number): void;
  inject(fault: 'hang' | 'fail' | 'crash' | null): void;
  /** Communicators split from the world's (groups') that the worker holds now. */
  readonly splitComms: number;
  /** Joins the thread; closes the ring's fds. Idempotent. */
  stop(): void;
}

export interface GpuModule {
  probe(): GpuProbe;
  probeCuda(): GpuProbe;
  getUniqueId(): Buffer;
  version(): { cuda: number | null; nccl: number | null };
  Device: new (ordinal: number) => GpuDevice;
  Comm: { initRank(device: GpuDevice, uniqueId: Uint8Array, nranks: number, rank: number): GpuComm };
  DeviceBuffer: { alloc(ordinal: number, bytes: number): GpuDeviceBuffer };
  /** Takes ownership of fds ([memfd, submitEventfd, completeEventfd]) at once, as RingWorker.attach does. */
  NcclRingWorker: { attach(fds: number[], spinUs?: number): NcclRingWorker };
}

export interface NativeAddon {
  ShmSegment: ShmSegmentClass;
  shmUnlink(name: string): void;
  reduceSlice(
    segments: ShmSegment[],
    byteOffsets: number[],
    count: number,
    dtype: number,
    op: number,
    rank: number,
    nranks: number,
  ): Promise<void>;
  sliceBounds(count: number, elemSize: number, rank: number, nranks: number): [number, number];
  /**
   * Test hook for the host backend's collective kernels (native/host_collectives.h): runs the
   * shares of one collective (kind 0 allreduce, 1 broadcast, 2 reduce, 3 allgather,
   * 4 reducescatter, 5 alltoall, 6 barrier) over one send and one receive buffer per rank, with
   * NCCL's sizes and in-place conventions (a view into the receive buffer as send buffer for
   * in-place allgather, and the reverse for reducescatter). Without `ranks`, every rank's share
   * runs on a thread of its own; with it, only those shares, in that order, on this thread.
   * Throws NCCLD_ERR_INVALID_ARG, BUFFER_TOO_SMALL, BAD_ALIGNMENT or BUFFER_OVERLAP.
   */
  hostCollective(
    kind: number,
    dtype: number,
    op: number,
    count: number,
    root: number,
    sendBuffers: (ArrayBuffer | Uint8Array)[],
    recvBuffers: (ArrayBuffer | Uint8Array)[],
    ranks?: number[],
  ): void;
  RankRing: RankRingClass;
  RingWorker: RingWorkerClass;
  /** Completion codes of a RankRing: index 0 'OK', then NCCLD_ERR_* codes. Frozen. */
  RANK_RING_CODES: readonly string[];
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  /** prctl(PR_SET_PDEATHSIG, SIGKILL); false if the parent is already gone. */
  setParentDeathSignal(expectedParentPid: number): boolean;
  /** One datagram to $NOTIFY_SOCKET; false when it is unset. */
  sdNotify(state: string): boolean;
  UnixConnection: UnixConnectionClass;
  /**
   * memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING) of `bytes` (> 0) bytes, pages reserved
   * (posix_fallocate: ENOSPC now rather than SIGBUS later), sealed SHRINK | GROW | SEAL.
   */
  memfdCreate(name: string, bytes: number): number;
  fdInfo(fd: number): FdInfo;
  SEALS: Seals;
  closeFd(fd: number): void;
  /** F_DUPFD_CLOEXEC. */
  dupFd(fd: number): number;
  /** AF_UNIX, SOCK_CLOEXEC | SOCK_NONBLOCK. */
  socketPair(type: 'stream' | 'seqpacket'): [number, number];
  /**
   * One sendmsg (MSG_NOSIGNAL | MSG_DONTWAIT) of `data` (at least one byte) with `fds` (at most
   * 16) attached. Meant for seqpacket sockets. Throws an errno error (EAGAIN included); on a
   * stream socket a partial send throws code EAGAIN with `bytesSent` (the fds did go).
   */
  sendFds(sock: number, data: Uint8Array, fds: number[]): void;
  /**
   * One recvmsg (MSG_DONTWAIT | MSG_CMSG_CLOEXEC) of up to `maxBytes` (at most 64 MiB) and 16
   * fds; null when nothing is waiting. Empty data with no fds: the peer closed. truncated: a
   * seqpacket message longer than maxBytes lost its tail; fdsTruncated: fds were dropped.
   */
  recvFds(
    sock: number,
    maxBytes: number,
  ): { data: Buffer; fds: number[]; truncated: boolean; fdsTruncated: boolean } | null;
  /** Raises RLIMIT_NOFILE's soft limit to the hard limit; the new values (Infinity if unlimited). */
  raiseFdLimit(): { soft: number; hard: number };
  gpu?: GpuModule;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// From dist/shared/ (compiled) or shared/ (sources run by a TypeScript loader).
const candidates = [
  path.resolve(here, '../../build/Release/nccld.node'),
  path.resolve(here, '../build/Release/nccld.node'),
];

function load(): NativeAddon {
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    throw new Error(`nccld's native addon is not built (looked for ${candidates.join(', ')}): run npm install`);
  }
  return createRequire(import.meta.url)(file) as NativeAddon;
}

export const native: NativeAddon = load();
