// The daemon's settings from its command line, each checked, with a message that names the
// setting when it is wrong.
import { parseArgs } from 'node:util';
import { DEFAULT_MAX_FRAME_BYTES } from '../shared/framing.js';
import { defaultDebugSocketPath, defaultSocketPath } from '../shared/paths.js';

export interface Config {
  backend: 'auto' | 'host' | 'nccl';
  /** World size on the host backend. */
  ranks: number;
  /** CUDA ordinals for the nccl backend; null means every visible GPU. */
  devices: number[] | null;
  socket: string;
  debugSocket: string;
  socketMode: number;
  debugSocketMode: number;
  maxInFlight: number;
  maxQueued: number;
  maxFrameBytes: number;
  logLevel: string;
  /** Deadline of a collective that names none, from when the daemon accepts it. */
  timeoutMs: number;
  /** Longest deadline a request may ask for. */
  maxTimeoutMs: number;
  /** World rebuilds allowed within restartWindowMs before the world is declared failed. */
  restartLimit: number;
  restartWindowMs: number;
  /** Lets the debug socket make ranks crash, hang or fail (tests and drills only). */
  faultInjection: boolean;
}

export class ConfigError extends Error {}

export const USAGE = `Usage: nccld [options]

A per-host daemon that owns GPU collective communication.

Options:
  --backend auto|host|nccl   auto (default) picks nccl where GPUs and NCCL are usable, else host
  --ranks N                  world size on the host backend (default 2)
  --devices 0,1,...          GPUs for the nccl backend (default: every visible GPU)
  --socket PATH              API socket (default ${defaultSocketPath()})
  --debug-socket PATH        debug socket (default ${defaultDebugSocketPath()})
  --socket-mode MODE         octal mode of the API socket (default 660)
  --max-in-flight N          requests one client may have in flight (default 1024)
  --max-queued N             collectives queued in the whole daemon (default 65536)
  --max-frame-bytes N        largest protocol frame accepted (default ${DEFAULT_MAX_FRAME_BYTES})
  --log-level LEVEL          trace, debug, info, warn, error, fatal (default info)
  --timeout-ms N             deadline of a collective that names none (default 30000)
  --max-timeout-ms N         longest deadline a request may ask for (default 600000)
  --restart-limit N          world rebuilds allowed within the window before it is failed (default 5)
  --restart-window-ms N      that window (default 60000)
  --enable-fault-injection   let the debug socket's 'inject' make ranks crash, hang or fail
  --help                     this text
  --version                  the version

Environment: NCCLD_SOCKET and NCCLD_DEBUG_SOCKET change the default socket paths.`;

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

function int(name: string, value: string | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new ConfigError(`--${name} must be an integer from ${min} to ${max}, not "${value}"`);
  }
  return n;
}

function mode(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^[0-7]{3,4}$/.test(value)) throw new ConfigError(`--${name} must be an octal mode such as 660, not "${value}"`);
  return parseInt(value, 8);
}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config | 'help' | 'version' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        backend: { type: 'string' },
        ranks: { type: 'string' },
        devices: { type: 'string' },
        socket: { type: 'string' },
        'debug-socket': { type: 'string' },
        'socket-mode': { type: 'string' },
        'max-in-flight': { type: 'string' },
        'max-queued': { type: 'string' },
        'max-frame-bytes': { type: 'string' },
        'log-level': { type: 'string' },
        'timeout-ms': { type: 'string' },
        'max-timeout-ms': { type: 'string' },
        'restart-limit': { type: 'string' },
        'restart-window-ms': { type: 'string' },
        'enable-fault-injection': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return 'help';
  if (v.version) return 'version';
  const backend = v.backend ?? 'auto';
  if (backend !== 'auto' && backend !== 'host' && backend !== 'nccl') {
    throw new ConfigError(`--backend must be auto, host or nccl, not "${backend}"`);
  }
  let devices: number[] | null = null;
  if (v.devices !== undefined) {
    devices = v.devices.split(',').map((d) => int('devices', d.trim(), 0, 0, 1023));
    if (new Set(devices).size !== devices.length) throw new ConfigError(`--devices names a GPU twice: "${v.devices}"`);
  }
  const logLevel = v['log-level'] ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, not "${logLevel}"`);
  const maxTimeoutMs = int('max-timeout-ms', v['max-timeout-ms'], 600_000, 100, 86_400_000);
  const timeoutMs = int('timeout-ms', v['timeout-ms'], Math.min(30_000, maxTimeoutMs), 100, maxTimeoutMs);
  return {
    backend,
    ranks: int('ranks', v.ranks, 2, 1, 1024),
    devices,
    socket: v.socket ?? defaultSocketPath(env),
    debugSocket: v['debug-socket'] ?? defaultDebugSocketPath(env),
    socketMode: mode('socket-mode', v['socket-mode'], 0o660),
    debugSocketMode: 0o600,
    maxInFlight: int('max-in-flight', v['max-in-flight'], 1024, 1, 1_000_000),
    maxQueued: int('max-queued', v['max-queued'], 65536, 1, 10_000_000),
    maxFrameBytes: int('max-frame-bytes', v['max-frame-bytes'], DEFAULT_MAX_FRAME_BYTES, 1024, 64 << 20),
    logLevel,
    timeoutMs,
    maxTimeoutMs,
    restartLimit: int('restart-limit', v['restart-limit'], 5, 0, 1000),
    restartWindowMs: int('restart-window-ms', v['restart-window-ms'], 60_000, 1000, 86_400_000),
    faultInjection: v['enable-fault-injection'] ?? false,
  };
}
