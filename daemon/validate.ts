// Checks a request against this world before it is queued: the right number of buffers, each the
// right kind for the backend and for its rank, each big enough, none overlapping another.
// Everything a device process would trip over is caught here, with a code the client can act on.
import { statSync } from 'node:fs';
import path from 'node:path';
import { DTYPES } from '../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import { isShmRef, type AllReduceRequest, type ShmBufferRef } from '../shared/protocol.js';
import type { World } from './world.js';

/** Where Linux keeps POSIX shared-memory segments. */
export const SHM_DIR = '/dev/shm';

export interface Peer {
  pid: number;
  uid: number;
  gid: number;
}

export function validateAllReduce(req: AllReduceRequest, world: World, peer: Peer | null): void {
  const n = world.size;
  if (req.buffers.length !== n) {
    throw new NccldError(ErrorCodes.BUFFER_COUNT, `allreduce needs one buffer per rank: ${n}, in rank order; got ${req.buffers.length}`);
  }
  const elem = DTYPES[req.dtype].bytes;
  const bytes = req.count * elem;
  req.buffers.forEach((b, i) => {
    if (b.rank !== undefined && b.rank !== i) {
      throw new NccldError(ErrorCodes.WRONG_RANK, `buffers[${i}] says it is for rank ${b.rank}; buffers go in rank order`);
    }
    const offset = b.offset ?? 0;
    if (offset % elem !== 0) {
      throw new NccldError(ErrorCodes.BAD_ALIGNMENT, `buffers[${i}].offset ${offset} is not a multiple of ${req.dtype}'s ${elem} bytes`);
    }
    if (world.backend === 'host') {
      if (!isShmRef(b)) {
        throw new NccldError(ErrorCodes.WRONG_BACKEND, `buffers[${i}] is GPU memory, but this daemon runs the host backend: name a shared-memory segment`);
      }
      checkSegment(b, i, offset + bytes, peer);
    } else {
      if (isShmRef(b)) {
        throw new NccldError(ErrorCodes.WRONG_BACKEND, `buffers[${i}] is a shared-memory segment, but this daemon runs the nccl backend: pass a CUDA IPC handle`);
      }
      const want = world.ranks[i].device;
      if (b.device !== want) {
        throw new NccldError(ErrorCodes.WRONG_DEVICE, `buffers[${i}] is on device ${b.device}, but rank ${i} runs on device ${want}`);
      }
    }
  });
  if (world.backend === 'host') checkNoOverlap(req.buffers as ShmBufferRef[], bytes);
}

function checkSegment(b: ShmBufferRef, i: number, end: number, peer: Peer | null): void {
  let st;
  try {
    st = statSync(path.join(SHM_DIR, b.shm));
  } catch {
    throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `buffers[${i}]: shared-memory segment "${b.shm}" does not exist`);
  }
  if (!st.isFile()) throw new NccldError(ErrorCodes.NO_SUCH_BUFFER, `buffers[${i}]: "${b.shm}" is not a shared-memory segment`);
  // A client may only hand us its own memory: otherwise it could make us overwrite another user's.
  if (peer && peer.uid !== 0 && st.uid !== peer.uid) {
    throw new NccldError(ErrorCodes.PERMISSION, `buffers[${i}]: segment "${b.shm}" belongs to uid ${st.uid}, not to the client's uid ${peer.uid}`);
  }
  if (end > st.size) {
    throw new NccldError(ErrorCodes.BUFFER_TOO_SMALL, `buffers[${i}]: offset + count × element size is ${end} bytes, but segment "${b.shm}" holds ${st.size}`);
  }
}

/** Two ranks' buffers in one segment must not share bytes: each rank writes the result into all of them. */
function checkNoOverlap(buffers: ShmBufferRef[], bytes: number): void {
  if (bytes === 0) return;
  const byName = new Map<string, { start: number; index: number }[]>();
  buffers.forEach((b, index) => {
    const list = byName.get(b.shm) ?? [];
    list.push({ start: b.offset ?? 0, index });
    byName.set(b.shm, list);
  });
  for (const [name, list] of byName) {
    list.sort((a, b) => a.start - b.start);
    for (let k = 1; k < list.length; k++) {
      if (list[k].start < list[k - 1].start + bytes) {
        throw new NccldError(
          ErrorCodes.BUFFER_OVERLAP,
          `buffers[${list[k - 1].index}] and buffers[${list[k].index}] share bytes of segment "${name}"; each rank needs its own buffer`,
        );
      }
    }
  }
}
