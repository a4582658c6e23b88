// npm test's Python step: the Python client's and the torch backend's tests (pytest) against real
// daemons, with the project's .venv. Skips, saying why, when npm install made no .venv.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const py = path.join(root, '.venv', 'bin', 'python');
if (!existsSync(py)) {
  console.log('test-python: SKIP: no .venv (npm install found no python3 >= 3.10, or NCCLD_SKIP_PYTHON was set)');
  process.exit(0);
}
const r = spawnSync(py, ['-m', 'pytest', '-q', path.join(root, 'python', 'tests'), ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, NCCLD_NODE: process.execPath },
});
process.exit(r.status ?? 1);
