// Where the sockets live when nobody says: one rule for the daemon and its clients, so that
// `nccld` and `ncclctl` with no flags find each other, for root and for ordinary users.
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export function defaultRuntimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (process.getuid?.() === 0) return '/run/nccld';
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'nccld');
  return path.join(os.tmpdir(), `nccld-${process.getuid?.() ?? 'user'}`);
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.NCCLD_SOCKET || path.join(defaultRuntimeDir(env), 'nccld.sock');
}

/** Where the system service (systemd units) listens. */
export const SYSTEM_SOCKET = '/run/nccld/nccld.sock';

/**
 * The socket a client tries when it is given none: the user's own daemon if one runs, else the
 * system service's, so users on a GPU host with nccld.service need no setting.
 */
export function clientSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const own = defaultSocketPath(env);
  if (env.NCCLD_SOCKET || existsSync(own) || !existsSync(SYSTEM_SOCKET)) return own;
  return SYSTEM_SOCKET;
}

export function defaultDebugSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.NCCLD_DEBUG_SOCKET || path.join(defaultRuntimeDir(env), 'debug.sock');
}
