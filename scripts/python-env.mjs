// npm install's Python step: a project-local virtual environment (.venv) with the Python client
// (python/, editable) and what its tests need, torch's CPU build included. Skipped, saying why,
// where there is no python3 >= 3.10: the Node side works without it.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const venv = path.join(root, '.venv');
const py = path.join(venv, 'bin', 'python');

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  return r.status === 0;
}

if (process.env.NCCLD_SKIP_PYTHON) {
  console.log('python-env: NCCLD_SKIP_PYTHON is set: no Python environment');
  process.exit(0);
}
const probe = spawnSync('python3', ['-c', 'import sys; print(sys.version_info >= (3, 10))'], { encoding: 'utf8' });
if (probe.status !== 0 || probe.stdout.trim() !== 'True') {
  console.log('python-env: no python3 >= 3.10 here: the Python client and its tests are skipped');
  process.exit(0);
}
if (!existsSync(py) && !run('python3', ['-m', 'venv', venv])) process.exit(1);
// An unreachable default index must fail fast, not retry for minutes: the packages come from
// whatever index pip is configured with.
const ok = run(py, ['-m', 'pip', 'install', '-q', '--disable-pip-version-check', '-e', `${path.join(root, 'python')}[test,torch]`], {
  PIP_RETRIES: process.env.PIP_RETRIES ?? '0',
  PIP_TIMEOUT: process.env.PIP_TIMEOUT ?? '10',
});
process.exit(ok ? 0 : 1);
