// pino JSON to stdout: journald (or whatever runs us) keeps it. One root logger per process;
// components take children so every line says which rank or client it is about.
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, base: Record<string, unknown>): Logger {
  return pino({ level, base: { ...base, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
