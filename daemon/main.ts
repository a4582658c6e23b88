#!/usr/bin/env node
// nccld: parse the settings, start the daemon, and stop it cleanly on SIGTERM or SIGINT.
import { ConfigError, USAGE, parseConfig } from './config.js';
import { Daemon } from './daemon.js';
import { createLogger } from './logger.js';
import { NCCLD_VERSION } from '../shared/version.js';

async function main(): Promise<number> {
  let cfg;
  try {
    cfg = parseConfig(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nccld: ${err.message}\n(nccld --help lists every setting)\n`);
      return 2;
    }
    throw err;
  }
  if (cfg === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (cfg === 'version') {
    process.stdout.write(`nccld ${NCCLD_VERSION}\n`);
    return 0;
  }
  const log = createLogger(cfg.logLevel, { name: 'nccld' });
  let daemon: Daemon;
  try {
    daemon = new Daemon(cfg, log);
  } catch (err) {
    log.fatal({ err }, `nccld cannot start: ${(err as Error).message}`);
    return 1;
  }
  const stop = (signal: string) => {
    log.info({ signal }, 'signal received');
    daemon.shutdown().then(
      () => process.exit(0),
      (err) => {
        log.fatal({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // SIGHUP: rebuild the world (what `rebuild` on the debug socket does), e.g. after a failure.
  process.on('SIGHUP', () => {
    log.info({ signal: 'SIGHUP' }, 'signal received: rebuilding the world');
    void daemon.rebuild('SIGHUP');
  });
  try {
    await daemon.start();
  } catch (err) {
    log.fatal({ err }, `nccld cannot start: ${(err as Error).message}`);
    await daemon.shutdown().catch(() => {});
    return 1;
  }
  return -1; // keep running
}

main().then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`nccld: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
