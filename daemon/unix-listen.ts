// Listening on a Unix socket path the way a daemon should: create the directory, refuse to steal
// the path from a live daemon, clear a stale socket file left by a dead one, and set the mode.
import net from 'node:net';
import { mkdirSync, chmodSync, lstatSync, unlinkSync } from 'node:fs';
import path from 'node:path';

function probe(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function listenUnix(server: net.Server, socketPath: string, mode: number): Promise<void> {
  mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  let exists = false;
  try {
    exists = lstatSync(socketPath).isSocket();
    if (!exists) throw new Error(`${socketPath} exists and is not a socket; refusing to replace it`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (exists) {
    if (await probe(socketPath)) throw new Error(`another process is already listening on ${socketPath}`);
    unlinkSync(socketPath);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(socketPath, mode);
}

/** Closes the server and removes its socket file (only if it is still ours: a socket). */
export async function closeUnix(server: net.Server, socketPath: string | null): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!socketPath) return;
  try {
    if (lstatSync(socketPath).isSocket()) unlinkSync(socketPath);
  } catch {
    // already gone
  }
}

/** Listens on a socket someone else opened for us (systemd's socket activation). */
export function listenFd(server: net.Server, fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export type ListenOn = { path: string; mode: number } | { fd: number };

/** Listens where told; resolves with the socket file to remove on close (none for a passed fd). */
export async function listenOn(server: net.Server, where: ListenOn): Promise<string | null> {
  if ('fd' in where) {
    await listenFd(server, where.fd);
    return null;
  }
  await listenUnix(server, where.path, where.mode);
  return where.path;
}
