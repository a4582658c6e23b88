// Where the sockets live when nobody says: one rule for the daemon and its clients, so that
// `nccld` and `ncclctl` with no flags find each other, for root and for ordinary users.
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

export function defaultDebugSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.NCCLD_DEBUG_SOCKET || path.join(defaultRuntimeDir(env), 'debug.sock');
}
