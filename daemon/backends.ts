// What differs between the two backends, in one table, so the daemon asks a question ("do ranks
// share buffers?") instead of testing a backend's name across its files.
import type { Backend } from './device/messages.js';

export interface BackendTraits {
  readonly name: Backend;
  /**
   * Collectives handed to the ranks at once. Host ranks write into each other's buffers, so
   * collective k+1 may start on a rank only after every rank finished k; NCCL ranks order work
   * on their streams themselves.
   */
  readonly window: number;
  /** Every rank reads and writes every rank's buffer: one collective's slots must not overlap. */
  readonly ranksShareBuffers: boolean;
  /** Ranks that went ahead wait for those that failed: any partial failure breaks the world. */
  readonly partialFailureBreaksWorld: boolean;
  /** The ranks build a communicator together once they have started. */
  readonly needsCommunicator: boolean;
  /** What a client registers: a sealed memfd, or a CUDA IPC handle. */
  readonly registration: 'memfd' | 'ipc';
}

export const BACKENDS: Record<Backend, BackendTraits> = {
  host: { name: 'host', window: 1, ranksShareBuffers: true, partialFailureBreaksWorld: false, needsCommunicator: false, registration: 'memfd' },
  nccl: { name: 'nccl', window: 64, ranksShareBuffers: false, partialFailureBreaksWorld: true, needsCommunicator: true, registration: 'ipc' },
};
