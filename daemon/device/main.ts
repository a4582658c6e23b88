// Entry of a device process: the daemon forks one per rank. It holds that rank's backend and
// answers the daemon's control messages (start, buffers, communicators, faults, stop); the
// collectives themselves never reach JavaScript here: the backend's native worker takes them from
// the rank's shared-memory ring, in the order the daemon wrote them. It exits when the daemon goes.
import { createLogger, type Logger } from '../logger.js';
import { ErrorCodes, NccldError, toNccldError } from '../../shared/errors.js';
import { native } from '../../shared/native.js';
import { HostRank } from './host-rank.js';
import { NcclRank } from './nccl-rank.js';
import type { FromDevice, InitMessage, ToDevice, WireError } from './messages.js';

/** How long a rank waits for NCCL to build a communicator before giving up. */
const COMM_TIMEOUT_MS = 120_000;

function send(msg: FromDevice): void {
  process.send?.(msg);
}

function wire(err: unknown): WireError {
  const e = toNccldError(err);
  return { code: e.code, message: e.message };
}

// The daemon's death closes our IPC channel: a device process never outlives it. The kernel
// backs this up (parent-death signal, set in init) for when our event loop is stuck.
process.on('disconnect', () => process.exit(0));

let log: Logger | undefined;
let host: HostRank | undefined;
let nccl: NcclRank | undefined;
// Control messages that must not overtake one another (unmap, stop) go through this chain. The
// daemon unmaps a buffer only once no collective uses it, and the host worker holds a reference
// to each mapping it reduces, so collectives themselves need no ordering here.
let chain: Promise<void> = Promise.resolve();

function serially(work: () => Promise<void> | void): void {
  chain = chain.then(work).catch((err) => log?.error({ err }, 'device process task failed'));
}

function init(msg: InitMessage): void {
  if (!native.setParentDeathSignal(msg.parentPid)) process.exit(1);
  log = createLogger(msg.logLevel, { name: 'nccld-device', rank: msg.rank, device: msg.device });
  if (msg.fault === 'crash') {
    log.warn('injected fault: crashing at start');
    process.kill(process.pid, 'SIGKILL');
  }
  try {
    if (msg.backend === 'nccl') nccl = new NcclRank(msg.rank, msg.nranks, msg.device!, msg.ringSpinUs);
    else host = new HostRank(msg.rank, msg.nranks, msg.ringSpinUs);
  } catch (err) {
    log.error({ err }, 'device process cannot start its backend');
    send({ t: 'ready', pid: process.pid, deviceName: null, error: wire(err) });
    return;
  }
  const deviceName = nccl ? nccl.device.name : null;
  const deviceUuid = nccl ? (nccl.device.uuid ?? null) : null;
  log.info({ backend: msg.backend, nranks: msg.nranks, deviceName, deviceUuid }, 'device process ready');
  send({ t: 'ready', pid: process.pid, deviceName, deviceUuid });
}

/** This process's rank, whichever backend it runs. */
function backend(): HostRank | NcclRank {
  const b = host ?? nccl;
  if (!b) throw new NccldError(ErrorCodes.NOT_READY, 'this device process has no backend (its init failed)');
  return b;
}

function reply(call: number, work: () => unknown): void {
  try {
    send({ t: 'reply', call, value: work() ?? null });
  } catch (err) {
    send({ t: 'reply', call, error: wire(err) });
  }
}

process.on('message', (raw) => {
  const msg = raw as ToDevice;
  switch (msg.t) {
    case 'init':
      init(msg);
      break;
    case 'uniqueId':
      try {
        send({ t: 'uniqueId', uniqueId: NcclRank.uniqueId() });
      } catch (err) {
        send({ t: 'uniqueId', error: wire(err) });
      }
      break;
    case 'comm':
      nccl!.initComm(msg.uniqueId, msg.generation, COMM_TIMEOUT_MS).then(
        () => {
          log?.info({ generation: msg.generation }, 'NCCL communicator ready');
          send({ t: 'commReady', generation: msg.generation });
        },
        (err) => send({ t: 'commReady', generation: msg.generation, error: wire(err) }),
      );
      break;
    case 'abort':
      // The world broke: nothing may wait on a peer that is gone. Pending collectives reject.
      nccl?.abortComm();
      break;
    case 'logLevel':
      if (log) log.level = msg.level;
      break;
    case 'inject':
      log?.warn({ fault: msg.fault }, 'fault injected for the next collective');
      reply(msg.call, () => backend().inject(msg.fault));
      break;
    case 'ring':
      reply(msg.call, () => backend().attachRing());
      break;
    case 'map':
      reply(msg.call, () => host!.map(msg.id));
      break;
    case 'open':
      reply(msg.call, () => nccl!.open(msg.id, msg.ipc));
      break;
    case 'ping':
      reply(msg.call, () => true);
      break;
    case 'stats':
      reply(msg.call, () => (nccl ? nccl.stats() : { mapped: host?.mappedCount ?? 0 }));
      break;
    case 'unmap':
      // The daemon sends it once no collective uses the buffers; an NCCL mapping also keeps a user count.
      if (nccl) reply(msg.call, () => nccl!.unmap(msg.ids));
      else serially(() => reply(msg.call, () => host?.unmap(msg.ids)));
      break;
    case 'stop':
      serially(() => {
        host?.close();
        nccl?.shutdown();
        log?.info('device process stopping');
        process.disconnect();
      });
      break;
    default:
      log?.warn({ msg }, 'unknown message from the daemon');
  }
});
