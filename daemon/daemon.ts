// The daemon as a whole: a world of device processes, one scheduler, the API socket and the
// debug socket, started in that order and stopped in the reverse one.
import { NCCLD_VERSION } from '../shared/version.js';
import { native } from '../shared/native.js';
import { ErrorCodes, type NccldError } from '../shared/errors.js';
import { ApiServer } from './api-server.js';
import { chooseBackend, gpuVersions } from './backend-select.js';
import type { Config } from './config.js';
import { DebugCommands } from './debug-commands.js';
import { DebugServer } from './debug-server.js';
import type { Logger } from './logger.js';
import { FlightRecorder } from './flight-recorder.js';
import { Groups } from './groups.js';
import { Scheduler } from './scheduler.js';
import { Stats } from './stats.js';
import { Notifier, takeListenFds } from './systemd.js';
import { rankStatus, type DaemonStatus } from './status.js';
import { World } from './world.js';

/** A crash fault may fire (on a collective already queued) before its acknowledgement comes back. */
function crashedAlready(err: NccldError): void {
  if (err.code !== ErrorCodes.DEVICE_LOST) throw err;
}

export class Daemon {
  readonly world: World;
  readonly scheduler: Scheduler;
  readonly groups: Groups;
  readonly api: ApiServer;
  readonly debug: DebugServer;
  readonly recorder = new FlightRecorder();
  readonly stats: Stats;
  private readonly startedAt = Date.now();
  private readonly notifier: Notifier;
  private readonly backendNote: string;
  private draining = false;
  private stopping: Promise<void> | null = null;

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
  ) {
    this.notifier = new Notifier(log);
    const choice = chooseBackend(cfg);
    this.backendNote = choice.backend === 'nccl' ? `${choice.note}; ${gpuVersions()}` : choice.note;
    log.info({ backend: choice.backend, devices: choice.devices, note: choice.note }, `backend: ${choice.backend} (${choice.note})`);
    this.world = new World({
      backend: choice.backend,
      devices: choice.devices,
      logLevel: cfg.logLevel,
      logger: log,
      restartLimit: cfg.restartLimit,
      restartWindowMs: cfg.restartWindowMs,
      hangTimeoutMs: cfg.hangTimeoutMs,
      ringSpinUs: cfg.ringSpinUs,
      startTimeoutMs: cfg.startTimeoutMs,
    });
    this.stats = new Stats(this.world.size);
    this.scheduler = new Scheduler(
      this.world,
      { window: this.world.traits.window, maxQueued: cfg.maxQueued },
      this.recorder,
      this.stats,
    );
    this.groups = new Groups({
      world: this.world,
      scheduler: this.scheduler,
      recorder: this.recorder,
      logger: log,
      timeoutMs: cfg.timeoutMs,
      maxTimeoutMs: cfg.maxTimeoutMs,
      stallWarnMs: cfg.stallWarnMs,
    });
    this.api = new ApiServer(
      {
        world: this.world,
        scheduler: this.scheduler,
        stats: this.stats,
        recorder: this.recorder,
        groups: this.groups,
        limits: {
          maxFrameBytes: cfg.maxFrameBytes,
          maxInFlight: cfg.maxInFlight,
          maxBuffers: cfg.maxBuffers,
          maxBuffersTotal: cfg.maxBuffersTotal,
          timeoutMs: cfg.timeoutMs,
          maxTimeoutMs: cfg.maxTimeoutMs,
          helloTimeoutMs: cfg.helloTimeoutMs,
          replyBacklogBytes: cfg.replyBacklogBytes,
          slowReaderMs: cfg.slowReaderMs,
        },
        draining: () => this.draining,
      },
      { maxConnections: cfg.maxConnections, maxConnectionsPerUid: cfg.maxConnectionsPerUid },
      log,
    );
    this.debug = new DebugServer(new DebugCommands(this), log);
  }

  async start(): Promise<void> {
    // Sockets passed by systemd are taken first: clients may already be waiting on them.
    const passed = takeListenFds();
    // Each registered buffer is a descriptor held here: use all the descriptors we may.
    const fdLimit = native.raiseFdLimit();
    this.log.debug({ fdLimit }, 'file descriptor limit');
    await this.world.start();
    // A user's daemon keeps its sockets in a directory only that user can enter; root's (for the
    // system service's group) in one anyone may enter but only root may write.
    const dirMode = process.geteuid?.() === 0 ? 0o755 : 0o700;
    await this.debug.listen(passed?.debug != null ? { fd: passed.debug } : { path: this.cfg.debugSocket, mode: this.cfg.debugSocketMode, dirMode });
    await this.api.listen(passed?.api != null ? { fd: passed.api } : { path: this.cfg.socket, mode: this.cfg.socketMode, dirMode });
    this.log.info(
      { socket: passed?.api != null ? `fd ${passed.api} from systemd` : this.cfg.socket, debugSocket: passed?.debug != null ? `fd ${passed.debug} from systemd` : this.cfg.debugSocket },
      'nccld serving',
    );
    this.notifier.ready(this.statusLine());
    this.world.on('state', () => this.notifier.status(this.statusLine()));
    this.notifier.startWatchdog(() => this.world.state === 'ready' && this.world.ranks.every((r) => r.state === 'ready'));
  }

  /** One line for systemd's STATUS=: world state, generation, ranks. */
  statusLine(): string {
    const w = this.world;
    return `world ${w.state}, generation ${w.generation}, ${w.size} rank${w.size === 1 ? '' : 's'} (${w.backend})${w.failure ? `: ${w.failure}` : ''}`;
  }

  /**
   * Stop accepting, let queued collectives start for a grace period (at once fail them if the
   * world cannot run them), stop the ranks (which ends whatever still runs), answer everyone,
   * close every connection (idle ones too) and remove the sockets. Ends from any world state.
   */
  shutdown(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('shutting down: finishing requests in flight');
      this.notifier.stopping();
      this.draining = true;
      const apiClosed = this.api.stopAccepting();
      await this.scheduler.drain(this.cfg.shutdownGraceMs);
      await this.world.stop();
      this.groups.close();
      await this.api.endSessions(1_000);
      await apiClosed;
      await this.debug.close();
      this.log.info('nccld stopped');
    })();
    return this.stopping;
  }

  /** Rebuilds the world, from `failed` too; says how it ended. */
  async rebuild(reason: string): Promise<string> {
    await this.world.retry(reason);
    const w = this.world;
    return w.state === 'ready' ? `world ready, generation ${w.generation}` : `world ${w.state}: ${w.failure ?? w.lastBreak}`;
  }

  /** Changes the log level here and in every device process, at run time. */
  setLogLevel(level: string): void {
    this.log.level = level;
    for (const r of this.world.ranks) r.send({ t: 'logLevel', level });
  }

  /** Resolves once the device process has taken the fault, so the next collective surely meets it. */
  async inject(rank: number, fault: string): Promise<string> {
    if (!this.cfg.faultInjection) throw new Error('fault injection is off; start nccld with --enable-fault-injection');
    const r = this.world.ranks[rank];
    if (!r) throw new Error(`no rank ${rank}; the world has ${this.world.size}`);
    switch (fault) {
      case 'crash':
      case 'hang':
      case 'fail':
        await r.call({ t: 'inject', fault }).catch(fault === 'crash' ? crashedAlready : (e) => Promise.reject(e));
        return `rank ${rank}: the next collective will ${fault === 'fail' ? 'fail' : fault}`;
      case 'crash-loop':
        r.startFault = 'crash';
        await r.call({ t: 'inject', fault: 'crash' }).catch(crashedAlready);
        return `rank ${rank}: crashes at its next collective and at every restart, until 'inject ${rank} clear'`;
      case 'clear':
        r.startFault = null;
        return `rank ${rank}: no fault at its next start`;
      default:
        throw new Error(`unknown fault "${fault.slice(0, 32)}": crash, hang, fail, crash-loop or clear`);
    }
  }

  /** Each limit with its setting, what is in use now, and how often it refused (by error code). */
  limits(): { name: string; limit: number; inUse: number | null; code: string; refused: number }[] {
    const c = this.cfg;
    const errors = this.stats.snapshot().errors;
    const procs = [...this.api.processes.all()];
    const max = (f: (p: (typeof procs)[number]) => number) => procs.reduce((m, p) => Math.max(m, f(p)), 0);
    return [
      { name: 'max-connections', limit: c.maxConnections, inUse: this.api.sessions.size, code: ErrorCodes.TOO_MANY_CONNECTIONS, refused: this.api.refused.total },
      { name: 'max-connections-per-uid', limit: c.maxConnectionsPerUid, inUse: max((p) => (p.uid === null || p.uid === 0 ? 0 : this.api.processes.connectionsOf(p.uid))), code: ErrorCodes.TOO_MANY_CONNECTIONS, refused: this.api.refused.perUid },
      { name: 'hello-timeout-ms', limit: c.helloTimeoutMs, inUse: null, code: ErrorCodes.HELLO_TIMEOUT, refused: errors[ErrorCodes.HELLO_TIMEOUT] ?? 0 },
      { name: 'max-in-flight (per client process)', limit: c.maxInFlight, inUse: max((p) => p.unfinished), code: ErrorCodes.BUSY, refused: errors[ErrorCodes.BUSY] ?? 0 },
      { name: 'max-queued', limit: c.maxQueued, inUse: this.scheduler.waiting + this.scheduler.running, code: ErrorCodes.BUSY, refused: 0 },
      { name: 'max-buffers (per client process)', limit: c.maxBuffers, inUse: max((p) => p.buffers), code: ErrorCodes.TOO_MANY_BUFFERS, refused: errors[ErrorCodes.TOO_MANY_BUFFERS] ?? 0 },
      { name: 'max-buffers-total', limit: c.maxBuffersTotal, inUse: this.world.registry.size, code: ErrorCodes.TOO_MANY_BUFFERS, refused: 0 },
      { name: 'max-frame-bytes', limit: c.maxFrameBytes, inUse: null, code: ErrorCodes.FRAME_TOO_LARGE, refused: errors[ErrorCodes.FRAME_TOO_LARGE] ?? 0 },
      { name: 'reply-backlog-bytes (per connection)', limit: c.replyBacklogBytes, inUse: [...this.api.sessions.values()].reduce((m, s) => Math.max(m, s.unreadBytes), 0), code: ErrorCodes.SLOW_READER, refused: errors[ErrorCodes.SLOW_READER] ?? 0 },
      { name: 'max-timeout-ms', limit: c.maxTimeoutMs, inUse: null, code: ErrorCodes.BAD_REQUEST, refused: 0 },
    ];
  }

  status(): DaemonStatus {
    const w = this.world;
    return {
      version: NCCLD_VERSION,
      backend: w.backend,
      backendNote: this.backendNote,
      world: { state: w.state, size: w.size, failure: w.failure, generation: w.generation, rebuilds: w.rebuilds, lastBreak: w.lastBreak },
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      requests: {
        served: this.stats.completedCount,
        failed: this.stats.failedCount,
        waiting: this.scheduler.waiting,
        running: this.scheduler.running,
        lastSeq: this.scheduler.lastSeq,
      },
      clients: this.api.sessions.size,
      registeredBuffers: w.registry.size,
      ranks: w.ranks.map(rankStatus),
    };
  }
}
