// Listening on a Unix socket path the way a daemon should: the directory must be one no one else
// can tamper with (ours or root's, not a symlink, not writable by others unless sticky), created
// private if missing; a live daemon's path is never stolen, a stale socket file is cleared, and
// the socket is bound with its final mode (umask held around bind), so no one can connect in a
// window before a chmod.
import net from 'node:net';
import { mkdirSync, lstatSync, unlinkSync, chmodSync } from 'node:fs';
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

export class UnsafeSocketDir extends Error {}

/**
 * Makes sure `dir` exists and is safe to put sockets in; creates it with `mode` if missing.
 * Refuses (naming the problem) a symlink, a non-directory, one owned by another user (other than
 * root), or one others may write into without the sticky bit.
 */
export function ensureSocketDir(dir: string, mode: number): void {
  const uid = process.geteuid?.() ?? 0;
  try {
    mkdirSync(dir, { mode });
    chmodSync(dir, mode); // mkdir's mode went through the umask
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        mkdirSync(path.dirname(dir), { recursive: true, mode: 0o755 });
        return ensureSocketDir(dir, mode);
      }
      throw err;
    }
  }
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw new UnsafeSocketDir(`socket directory ${dir} is a symbolic link; refusing to use it`);
  if (!st.isDirectory()) throw new UnsafeSocketDir(`socket directory ${dir} is not a directory`);
  if (st.uid !== uid && st.uid !== 0) {
    throw new UnsafeSocketDir(`socket directory ${dir} belongs to uid ${st.uid}, not to this user (${uid}) or root: another user could impersonate nccld there; remove it or choose another path`);
  }
  const sticky = (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !sticky) {
    throw new UnsafeSocketDir(`socket directory ${dir} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)}): anyone could replace the socket; make it 0700 or 0755`);
  }
}

export async function listenUnix(server: net.Server, socketPath: string, mode: number, dirMode: number): Promise<void> {
  ensureSocketDir(path.dirname(socketPath), dirMode);
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
    // Node binds inside listen(), synchronously: the umask gives the file its mode at creation.
    const old = process.umask(0o777 & ~mode);
    try {
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
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

/** A path and the modes of the socket and (if it is created) its directory; or a passed fd. */
export type ListenOn = { path: string; mode: number; dirMode: number } | { fd: number };

/** Listens where told; resolves with the socket file to remove on close (none for a passed fd). */
export async function listenOn(server: net.Server, where: ListenOn): Promise<string | null> {
  if ('fd' in where) {
    await listenFd(server, where.fd);
    return null;
  }
  await listenUnix(server, where.path, where.mode, where.dirMode);
  return where.path;
}
