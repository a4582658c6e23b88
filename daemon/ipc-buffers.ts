// A client's GPU buffers as the daemon knows them: opened once on their rank (which caches the
// mapping), and remembered here with their size, so later requests are checked without a trip
// to the device process.
import { DTYPES } from '../shared/dtypes.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import { ipcHandleKey as handleKey, isShmRef, type AllReduceRequest, type BufferRef } from '../shared/protocol.js';
import type { World } from './world.js';

interface Known {
  size: number;
  device: number;
}

export class IpcBufferTable {
  private readonly known = new Map<string, Promise<Known>>();

  constructor(
    private readonly world: World,
    private readonly client: number,
  ) {}

  /** Opens any buffer not seen before and checks that every buffer holds what the request needs. */
  async check(req: AllReduceRequest): Promise<void> {
    const bytes = req.count * DTYPES[req.dtype].bytes;
    await Promise.all(
      req.buffers.map(async (b, rank) => {
        const info = await this.info(rank, b);
        const end = (b.offset ?? 0) + bytes;
        if (end > info.size) {
          throw new NccldError(ErrorCodes.BUFFER_TOO_SMALL, `buffers[${rank}]: offset + count × element size is ${end} bytes, but the allocation holds ${info.size}`);
        }
      }),
    );
  }

  forget(buffers?: BufferRef[]): void {
    if (!buffers) return this.known.clear();
    for (const b of buffers) {
      if (isShmRef(b)) continue;
      for (let rank = 0; rank < this.world.size; rank++) this.known.delete(`${rank}:${handleKey(b.ipc)}`);
    }
  }

  private info(rank: number, b: BufferRef): Promise<Known> {
    if (isShmRef(b)) throw new NccldError(ErrorCodes.WRONG_BACKEND, `buffers[${rank}] is not GPU memory`);
    const key = `${rank}:${handleKey(b.ipc)}`;
    let p = this.known.get(key);
    if (!p) {
      p = this.world.openBuffer(this.client, rank, b);
      this.known.set(key, p);
      // A failed open is not remembered: the next request tries again.
      p.catch(() => this.known.delete(key));
    }
    return p;
  }
}
