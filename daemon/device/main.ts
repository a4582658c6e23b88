// Entry of a device process: the daemon forks one per rank. It holds that rank's backend, runs
// collectives strictly in the order the daemon sends them, and exits when the daemon goes away.
import { createLogger, type Logger } from '../logger.js';
import { toNccldError } from '../../shared/errors.js';
import { HostRank } from './host-rank.js';
import type { FromDevice, InitMessage, ToDevice } from './messages.js';

function send(msg: FromDevice): void {
  process.send?.(msg);
}

// The daemon's death closes our IPC channel: a device process never outlives it.
process.on('disconnect', () => process.exit(0));

let log: Logger | undefined;
let rank: HostRank | undefined;
// Every message that touches buffers goes through this one chain, so collectives run in sequence
// order and a client's mappings are dropped only after its earlier collectives finished.
let chain: Promise<void> = Promise.resolve();

function serially(work: () => Promise<void> | void): void {
  chain = chain.then(work).catch((err) => log?.error({ err }, 'device process task failed'));
}

function init(msg: InitMessage): void {
  log = createLogger(msg.logLevel, { name: 'nccld-device', rank: msg.rank });
  rank = new HostRank(msg.rank, msg.nranks);
  log.info({ backend: msg.backend, nranks: msg.nranks }, 'device process ready');
  send({ t: 'ready', pid: process.pid, deviceName: null });
}

process.on('message', (raw) => {
  const msg = raw as ToDevice;
  switch (msg.t) {
    case 'init':
      init(msg);
      break;
    case 'run':
      serially(async () => {
        try {
          await rank!.run(msg);
          send({ t: 'done', seq: msg.seq });
        } catch (err) {
          const e = toNccldError(err);
          send({ t: 'done', seq: msg.seq, error: { code: e.code, message: e.message } });
        }
      });
      break;
    case 'forget':
      serially(() => rank?.forget(msg.client, msg.buffers));
      break;
    case 'stop':
      serially(() => {
        rank?.close();
        log?.info('device process stopping');
        process.disconnect();
      });
      break;
    default:
      log?.warn({ msg }, 'unknown message from the daemon');
  }
});
