#!/usr/bin/env node
// Writes the C++ header of error codes from shared/errors.ts, the one table of them, so native
// code cannot use a code that TypeScript does not know. Run by CMake at build time:
//   node scripts/gen-error-codes.mjs <shared/errors.ts> <out/error_codes.h>
// Each `KEY: 'NCCLD_ERR_...'` entry of ErrorCodes becomes
//   constexpr const char* kErrKey = "NCCLD_ERR_...";   (BUFFER_TOO_SMALL -> kErrBufferTooSmall)
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import path from 'node:path';

function fail(message) {
  process.stderr.write(`gen-error-codes: ${message}\n`);
  process.exit(1);
}

const [input, output] = process.argv.slice(2);
if (!input || !output) fail('usage: gen-error-codes.mjs <errors.ts> <error_codes.h>');

const source = readFileSync(input, 'utf8');
const block = /export const ErrorCodes = \{([\s\S]*?)\n\} as const;/.exec(source);
if (!block) fail(`${input}: no "export const ErrorCodes = { ... } as const;" block`);

const entries = [];
const seen = new Set();
for (const [i, raw] of block[1].split('\n').entries()) {
  const line = raw.replace(/\/\*.*?\*\//g, '').replace(/\/\/.*$/, '').trim();
  if (line === '' || line.startsWith('/*') || line.startsWith('*')) continue;
  const m = /^([A-Z][A-Z0-9_]*)\s*:\s*(['"])(NCCLD_ERR_[A-Z0-9_]+)\2\s*,?$/.exec(line);
  // Anything else inside the block would be a code we silently missed: refuse instead.
  if (!m) fail(`${input}: cannot parse ErrorCodes line ${i + 1}: ${raw.trim()}`);
  const [, key, , value] = m;
  if (seen.has(key)) fail(`${input}: ErrorCodes.${key} appears twice`);
  seen.add(key);
  entries.push({ key, value });
}
if (entries.length === 0) fail(`${input}: ErrorCodes is empty`);

const camel = (key) =>
  key
    .split('_')
    .map((w) => w.charAt(0) + w.slice(1).toLowerCase())
    .join('');

const header = [
  `// Generated from shared/errors.ts by scripts/gen-error-codes.mjs: do not edit, do not commit.`,
  `#pragma once`,
  ``,
  `namespace nccld {`,
  ``,
  ...entries.map(({ key, value }) => `constexpr const char* kErr${camel(key)} = "${value}";`),
  ``,
  `}  // namespace nccld`,
  ``,
].join('\n');

// Rewrite only on change: the build treats an untouched header as up to date (restat), so
// editing a doc comment in errors.ts does not recompile every native file.
if (!existsSync(output) || readFileSync(output, 'utf8') !== header) {
  mkdirSync(path.dirname(output), { recursive: true });
  writeFileSync(output, header);
}
