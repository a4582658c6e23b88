// The daemon's settings. One table says what each setting is; its value comes from the command
// line, else the environment (NCCLD_<NAME>), else the config file, else the default. Every value
// is checked, and a bad one stops start-up with a message naming the setting and where it came from.
import { existsSync, readFileSync } from 'node:fs';
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
  /** Requests one client process may have unfinished, over all its connections. */
  maxInFlight: number;
  maxQueued: number;
  maxFrameBytes: number;
  /** Buffers one client process may have registered, and all clients together. */
  maxBuffers: number;
  maxBuffersTotal: number;
  maxConnections: number;
  maxConnectionsPerUid: number;
  /** A connection that has not said hello by then is closed. */
  helloTimeoutMs: number;
  /** Reply bytes a client may leave unread before we stop reading from it... */
  replyBacklogBytes: number;
  /** ...and how long it may stay so before it is disconnected. */
  slowReaderMs: number;
  /** A collective unfinished on a rank after this long means the rank hangs: the world is rebuilt. */
  hangTimeoutMs: number;
  ringSpinUs: number;
  stallWarnMs: number;
  /** How long shutdown lets queued collectives start before failing them. */
  shutdownGraceMs: number;
  /** How long a device process may take to say it is ready. */
  startTimeoutMs: number;
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
  /** The config file read, if any. */
  configFile: string | null;
}

export class ConfigError extends Error {}

export const DEFAULT_CONFIG_FILE = '/etc/nccld/nccld.json';
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

type Kind = { int: [number, number] } | { oneOf: string[] } | 'string' | 'bool' | 'mode' | 'devices';

interface Setting {
  /** Flag name; the env var is NCCLD_ + this in upper snake case, the config key its camelCase. */
  flag: string;
  key: keyof Config;
  kind: Kind;
  help: string;
  /** Shown in --help. */
  shownDefault: string;
}

export const SETTINGS: Setting[] = [
  { flag: 'backend', key: 'backend', kind: { oneOf: ['auto', 'host', 'nccl'] }, shownDefault: 'auto', help: 'auto picks nccl where GPUs and NCCL are usable, else host' },
  { flag: 'ranks', key: 'ranks', kind: { int: [1, 1024] }, shownDefault: '2', help: 'world size on the host backend' },
  { flag: 'devices', key: 'devices', kind: 'devices', shownDefault: 'every visible GPU', help: 'GPUs for the nccl backend, e.g. 0,1,2,3' },
  { flag: 'socket', key: 'socket', kind: 'string', shownDefault: 'nccld.sock in /run/nccld (root), $XDG_RUNTIME_DIR/nccld or /tmp/nccld-<uid>', help: 'API socket path' },
  { flag: 'debug-socket', key: 'debugSocket', kind: 'string', shownDefault: 'debug.sock in the default socket directory', help: 'debug socket path' },
  { flag: 'socket-mode', key: 'socketMode', kind: 'mode', shownDefault: '660', help: 'octal mode of an API socket nccld creates itself' },
  { flag: 'max-in-flight', key: 'maxInFlight', kind: { int: [1, 1_000_000] }, shownDefault: '1024', help: 'requests one client process may have unfinished, over all its connections' },
  { flag: 'max-queued', key: 'maxQueued', kind: { int: [1, 10_000_000] }, shownDefault: '65536', help: 'collectives queued in the whole daemon' },
  { flag: 'max-frame-bytes', key: 'maxFrameBytes', kind: { int: [1024, 16 << 20] }, shownDefault: String(DEFAULT_MAX_FRAME_BYTES), help: 'largest protocol frame accepted' },
  { flag: 'max-buffers', key: 'maxBuffers', kind: { int: [1, 1_000_000] }, shownDefault: '4096', help: 'buffers one client process may have registered' },
  { flag: 'max-buffers-total', key: 'maxBuffersTotal', kind: { int: [1, 1_000_000] }, shownDefault: '32768', help: 'buffers registered by all clients together' },
  { flag: 'max-connections', key: 'maxConnections', kind: { int: [1, 1_000_000] }, shownDefault: '1024', help: 'client connections in all' },
  { flag: 'max-connections-per-uid', key: 'maxConnectionsPerUid', kind: { int: [1, 1_000_000] }, shownDefault: '256', help: 'client connections of one user (root is not limited)' },
  { flag: 'hello-timeout-ms', key: 'helloTimeoutMs', kind: { int: [10, 600_000] }, shownDefault: '5000', help: 'a connection that has not said hello by then is closed' },
  { flag: 'reply-backlog-bytes', key: 'replyBacklogBytes', kind: { int: [4096, 1 << 30] }, shownDefault: String(1 << 20), help: 'unread reply bytes after which a client is no longer read from' },
  { flag: 'slow-reader-ms', key: 'slowReaderMs', kind: { int: [10, 3_600_000] }, shownDefault: '10000', help: 'how long a client may stay over that before it is disconnected' },
  { flag: 'hang-timeout-ms', key: 'hangTimeoutMs', kind: { int: [100, 86_400_000] }, shownDefault: '300000', help: 'a collective unfinished on a rank after this long means a hung rank: the world is rebuilt' },
  { flag: 'ring-spin-us', key: 'ringSpinUs', kind: { int: [0, 1_000_000] }, shownDefault: '250', help: 'how long a device worker spins for the next collective before it sleeps (a core busy that long after each one; saves a wake-up per collective)' },
  { flag: 'stall-warn-ms', key: 'stallWarnMs', kind: { int: [10, 86_400_000] }, shownDefault: '60000', help: 'a group whose members have not all sent collective k after this long is logged as stalled, naming the missing ranks (once per period)' },
  { flag: 'shutdown-grace-ms', key: 'shutdownGraceMs', kind: { int: [0, 3_600_000] }, shownDefault: '10000', help: 'on stop, how long queued collectives may still start' },
  { flag: 'start-timeout-ms', key: 'startTimeoutMs', kind: { int: [100, 3_600_000] }, shownDefault: '120000', help: 'how long a device process may take to start' },
  { flag: 'log-level', key: 'logLevel', kind: { oneOf: LOG_LEVELS }, shownDefault: 'info', help: 'pino log level' },
  { flag: 'timeout-ms', key: 'timeoutMs', kind: { int: [1, 86_400_000] }, shownDefault: '30000', help: "deadline of a collective's reply when the request names none" },
  { flag: 'max-timeout-ms', key: 'maxTimeoutMs', kind: { int: [1, 86_400_000] }, shownDefault: '600000', help: 'longest deadline a request may ask for (longer ones are refused)' },
  { flag: 'restart-limit', key: 'restartLimit', kind: { int: [0, 1000] }, shownDefault: '5', help: 'world rebuilds allowed within the window before the world is failed' },
  { flag: 'restart-window-ms', key: 'restartWindowMs', kind: { int: [1000, 86_400_000] }, shownDefault: '60000', help: 'that window' },
  { flag: 'enable-fault-injection', key: 'faultInjection', kind: 'bool', shownDefault: 'off', help: "let the debug socket's 'inject' make ranks crash, hang or fail" },
];

const DEFAULTS = {
  backend: 'auto',
  ranks: 2,
  devices: null,
  socketMode: 0o660,
  debugSocketMode: 0o600,
  maxInFlight: 1024,
  maxQueued: 65536,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  maxBuffers: 4096,
  maxBuffersTotal: 32768,
  maxConnections: 1024,
  maxConnectionsPerUid: 256,
  helloTimeoutMs: 5_000,
  replyBacklogBytes: 1 << 20,
  slowReaderMs: 10_000,
  hangTimeoutMs: 300_000,
  ringSpinUs: 250,
  stallWarnMs: 60_000,
  shutdownGraceMs: 10_000,
  startTimeoutMs: 120_000,
  logLevel: 'info',
  timeoutMs: 30_000,
  maxTimeoutMs: 600_000,
  restartLimit: 5,
  restartWindowMs: 60_000,
  faultInjection: false,
} satisfies Partial<Config>;

export const envName = (flag: string) => `NCCLD_${flag.toUpperCase().replace(/-/g, '_')}`;

export const USAGE = `Usage: nccld [options]

A per-host daemon that owns GPU collective communication.

Options (each also NCCLD_<NAME> in the environment, or its camelCase key in the config file):
${SETTINGS.map((s) => `  --${s.flag}${s.kind === 'bool' ? '' : ' VALUE'}`.padEnd(34) + `${s.help} (default ${s.shownDefault})`).join('\n')}
  --config PATH                   JSON config file (default ${DEFAULT_CONFIG_FILE} if it exists; NCCLD_CONFIG)
  --help                          this text
  --version                       the version

Precedence: command line, then environment, then config file, then defaults.`;

/** A raw value and where it came from, for messages that name both. */
interface Raw {
  value: unknown;
  from: string;
}

function check(s: Setting, raw: Raw): unknown {
  const { value, from } = raw;
  const bad = (what: string) => new ConfigError(`${from}: ${what}, not ${JSON.stringify(value)}`);
  const kind = s.kind;
  if (kind === 'bool') {
    if (typeof value === 'boolean') return value;
    if (value === 'true' || value === '1' || value === 'yes') return true;
    if (value === 'false' || value === '0' || value === 'no' || value === '') return false;
    throw bad('must be true or false');
  }
  if (kind === 'string') {
    if (typeof value !== 'string' || value === '') throw bad('must be a non-empty string');
    return value;
  }
  if (kind === 'mode') {
    const text = typeof value === 'number' ? value.toString(8) : value;
    if (typeof text !== 'string' || !/^0?[0-7]{3}$/.test(text)) throw bad('must be an octal mode such as 660');
    return parseInt(text, 8);
  }
  if (kind === 'devices') {
    const list = Array.isArray(value) ? value : typeof value === 'string' ? value.split(',').map((d) => d.trim()) : null;
    const nums = list?.map((d) => (typeof d === 'number' ? d : /^\d+$/.test(String(d)) ? Number(d) : NaN));
    if (!nums || nums.length === 0 || nums.some((n) => !Number.isSafeInteger(n) || n < 0 || n > 1023)) {
      throw bad('must list GPU ordinals, e.g. 0,1,2,3');
    }
    if (new Set(nums).size !== nums.length) throw bad('names a GPU twice');
    return nums;
  }
  if ('oneOf' in kind) {
    if (typeof value !== 'string' || !kind.oneOf.includes(value)) throw bad(`must be one of ${kind.oneOf.join(', ')}`);
    return value;
  }
  const [min, max] = kind.int;
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw bad(`must be an integer from ${min} to ${max}`);
  return n;
}

function readConfigFile(file: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`config file ${file}: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new ConfigError(`config file ${file}: must hold a JSON object`);
  const known = new Set(SETTINGS.map((s) => s.key as string));
  for (const key of Object.keys(data)) {
    if (!known.has(key)) throw new ConfigError(`config file ${file}: unknown setting "${key}"; known: ${[...known].join(', ')}`);
  }
  return data as Record<string, unknown>;
}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config | 'help' | 'version' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        ...Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: s.kind === 'bool' ? ('boolean' as const) : ('string' as const) }])),
        config: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  if (flags.help) return 'help';
  if (flags.version) return 'version';

  const explicitFile = (flags.config as string | undefined) ?? env.NCCLD_CONFIG;
  if (explicitFile !== undefined && !existsSync(explicitFile)) throw new ConfigError(`config file ${explicitFile} does not exist`);
  const configFile = explicitFile ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : null);
  const file = configFile ? readConfigFile(configFile) : {};

  const out: Record<string, unknown> = { ...DEFAULTS, configFile };
  for (const s of SETTINGS) {
    const raw: Raw | undefined =
      flags[s.flag] !== undefined
        ? { value: flags[s.flag], from: `--${s.flag}` }
        : env[envName(s.flag)] !== undefined
          ? { value: env[envName(s.flag)], from: envName(s.flag) }
          : file[s.key] !== undefined
            ? { value: file[s.key], from: `${s.key} in ${configFile}` }
            : undefined;
    if (raw) out[s.key] = check(s, raw);
  }
  out.socket ??= defaultSocketPath(env);
  out.debugSocket ??= defaultDebugSocketPath(env);
  const cfg = out as unknown as Config;
  if (cfg.timeoutMs > cfg.maxTimeoutMs) {
    throw new ConfigError(`timeout-ms (${cfg.timeoutMs}) must not be over max-timeout-ms (${cfg.maxTimeoutMs})`);
  }
  return cfg;
}
