// What systemd gives and asks of a service: sockets passed in (LISTEN_FDS), and notifications
// out (READY=1, STATUS=, WATCHDOG=1, STOPPING=1). Both are optional: without systemd, nothing here
// does anything. The datagrams go out through native code, since Node cannot send them.
import { native } from '../shared/native.js';
import type { Logger } from './logger.js';

const SD_LISTEN_FDS_START = 3;

export interface PassedSockets {
  api: number | null;
  debug: number | null;
}

/**
 * The sockets systemd passed us, by FileDescriptorName= (`api`, `debug`), else in order. Clears
 * the variables, so no child process takes the sockets for its own.
 */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env): PassedSockets | null {
  const pid = Number(env.LISTEN_PID);
  const count = Number(env.LISTEN_FDS);
  const names = env.LISTEN_FDNAMES?.split(':') ?? [];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (pid !== process.pid || !Number.isInteger(count) || count < 1) return null;
  const fds = Array.from({ length: count }, (_, i) => SD_LISTEN_FDS_START + i);
  const named = (name: string) => {
    const i = names.indexOf(name);
    return i >= 0 ? fds[i] : null;
  };
  if (names.includes('api') || names.includes('debug')) return { api: named('api'), debug: named('debug') };
  return { api: fds[0] ?? null, debug: fds[1] ?? null };
}

export class Notifier {
  private watchdog: NodeJS.Timeout | undefined;
  private readonly enabled: boolean;

  constructor(
    private readonly log: Logger,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.enabled = Boolean(env.NOTIFY_SOCKET);
    const usec = Number(env.WATCHDOG_USEC);
    const forUs = !env.WATCHDOG_PID || Number(env.WATCHDOG_PID) === process.pid;
    this.watchdogMs = this.enabled && forUs && usec > 0 ? usec / 1000 : 0;
  }

  /** Half of WatchdogSec=, or 0 when systemd asked for no watchdog. */
  readonly watchdogMs: number;

  ready(status: string): void {
    this.send(`READY=1\nSTATUS=${status}`);
  }

  status(status: string): void {
    this.send(`STATUS=${status}`);
  }

  stopping(): void {
    this.stopWatchdog();
    this.send('STOPPING=1\nSTATUS=stopping: finishing requests in flight');
  }

  /** Pings WATCHDOG=1 at half the interval, but only while `healthy()` says so. */
  startWatchdog(healthy: () => boolean): void {
    if (!this.watchdogMs) return;
    this.watchdog = setInterval(() => {
      if (healthy()) this.send('WATCHDOG=1');
      else this.log.warn('not pinging the systemd watchdog: the world is not healthy');
    }, this.watchdogMs / 2);
    this.watchdog.unref();
  }

  stopWatchdog(): void {
    clearInterval(this.watchdog);
  }

  private send(state: string): void {
    if (!this.enabled) return;
    try {
      native.sdNotify(state);
    } catch (err) {
      this.log.warn({ err }, 'sd_notify failed');
    }
  }
}
