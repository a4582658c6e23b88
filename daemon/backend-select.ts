// Which backend the world runs: NCCL where GPUs and the libraries are usable, else the host backend,
// and always a sentence saying why.
import { native } from '../shared/native.js';
import { ErrorCodes, NccldError } from '../shared/errors.js';
import type { Config } from './config.js';
import type { Backend } from './device/messages.js';

export interface BackendChoice {
  backend: Backend;
  /** One entry per rank: CUDA ordinal, or null on the host backend. */
  devices: (number | null)[];
  /** Why this backend, for the log and for `status`. */
  note: string;
}

/** The GPU stack as this machine has it, or why it cannot be used. */
function probeGpus(): { visible: number[] } | { reason: string } {
  if (!native.gpu) return { reason: 'this build of nccld has no GPU support' };
  const probe = native.gpu.probe();
  return probe.available ? { visible: probe.devices.map((d) => d.ordinal) } : { reason: probe.reason ?? 'unknown reason' };
}

export function gpuUnavailableReason(): string | null {
  const p = probeGpus();
  return 'reason' in p ? p.reason : null;
}

export function chooseBackend(cfg: Config): BackendChoice {
  if (cfg.backend === 'host') {
    return { backend: 'host', devices: Array(cfg.ranks).fill(null), note: 'chosen with --backend host' };
  }
  const probe = probeGpus();
  if ('reason' in probe) {
    if (cfg.backend === 'nccl') throw new NccldError(ErrorCodes.GPU_UNAVAILABLE, `the nccl backend is unavailable: ${probe.reason}`);
    return { backend: 'host', devices: Array(cfg.ranks).fill(null), note: `GPU backend unavailable: ${probe.reason}` };
  }
  const { visible } = probe;
  const devices = cfg.devices ?? visible;
  const missing = devices.filter((d) => !visible.includes(d));
  if (missing.length > 0) {
    throw new NccldError(ErrorCodes.GPU_UNAVAILABLE, `--devices names GPU ${missing.join(', ')}, but the visible GPUs are ${visible.join(', ')}`);
  }
  return { backend: 'nccl', devices, note: `${devices.length} GPU${devices.length === 1 ? '' : 's'}: ${devices.join(', ')}` };
}

/** "NCCL 2.28.3, CUDA driver 13.0" for logs and status. */
export function gpuVersions(): string {
  const v = native.gpu?.version() ?? { cuda: null, nccl: null };
  const nccl = v.nccl === null ? 'unknown' : `${Math.floor(v.nccl / 10000)}.${Math.floor((v.nccl % 10000) / 100)}.${v.nccl % 100}`;
  const cuda = v.cuda === null ? 'unknown' : `${Math.floor(v.cuda / 1000)}.${Math.floor((v.cuda % 1000) / 10)}`;
  return `NCCL ${nccl}, CUDA driver ${cuda}`;
}
