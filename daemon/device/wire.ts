// Errors as device processes report them to the daemon: the system running out of something
// (descriptors, memory maps, memory) gets its own code, so the client knows to retry later.
import { ErrorCodes, NccldError, toNccldError } from '../../shared/errors.js';

const EXHAUSTED = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'EAGAIN', 'ENOSPC']);

export function wireResourceError(err: unknown, what: string): NccldError {
  const code = (err as { code?: string } | null)?.code;
  if (code && EXHAUSTED.has(code)) return new NccldError(ErrorCodes.RESOURCE_EXHAUSTED, `${what}: ${(err as Error).message}`);
  return toNccldError(err);
}
