// The fd channel between the daemon and a device process: a seqpacket pair over which descriptors
// travel (SCM_RIGHTS), each packet tagged with a 32-bit number (a buffer id, or RING_TAG) so the
// fork-channel message that follows can check it is taking the descriptors meant for it.
import { native } from '../../shared/native.js';
import { ErrorCodes, NccldError } from '../../shared/errors.js';

/** The device process's end of the pair (fd 3 is Node's own channel). */
export const FD_CHANNEL = 4;
/** The tag of the ring's descriptors (buffer ids never reach it). */
export const RING_TAG = 0xffff_ffff;

/** Daemon side: one packet of `fds` under `tag`. Throws as sendmsg does (EAGAIN: the device has not caught up). */
export function sendTagged(sock: number, tag: number, fds: number[]): void {
  const data = Buffer.alloc(4);
  data.writeUInt32LE(tag);
  native.sendFds(sock, data, fds);
}

/** Device side: the next packet's descriptors, which must be `count` under `tag` (else all are closed and it throws). */
export function takeTagged(tag: number, count: number, what: string): number[] {
  const got = native.recvFds(FD_CHANNEL, 16);
  const found = got && got.data.length === 4 ? got.data.readUInt32LE(0) : -1;
  if (!got || found !== tag || got.fds.length !== count) {
    for (const fd of got?.fds ?? []) native.closeFd(fd);
    throw new NccldError(ErrorCodes.INTERNAL, `descriptor channel out of step: wanted ${count} for ${what}, got ${got ? `${got.fds.length} tagged ${found}` : 'nothing'}`);
  }
  return got.fds;
}
