#!/usr/bin/env bash
# One GPU run, as the device tool's command: the whole suite with the GPU tests live, then the
# daemon on the nccl backend with a verified AllReduce and the benchmarks. Everything it prints
# goes to $OUT (the device tool brings that folder back). Stage first: bash ../shared/device/stage.sh
#   run: bash .device/on-device.sh bash bench/gpu-run.sh [test files...]
# With test files, only those run (no coverage check): for a quick look at a change.
set -uo pipefail
out=${OUT:-/tmp/gpu-run}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
if [ $# -gt 0 ]; then
  ( time npx tap --disable-coverage --reporter=terse "$@" ) > "$out/suite.log" 2>&1
else
  ( time npx tap --reporter=terse ) > "$out/suite.log" 2>&1
fi
tail -40 "$out/suite.log"
dir=$(mktemp -d /tmp/nccld-gpu-XXXX)
node dist/daemon/main.js --backend nccl --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > "$out/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
ctl() { node dist/client/cli.js --socket "$dir/a.sock" "$@"; }
{
  ctl allreduce --dtype bf16 --op sum --count 1000003 --verify
  echo "=== serial, direct alongside"
  ctl bench -b 8 -e 256M -f 32 --serial --direct --iters 200 --warmup 20
  echo "=== pipelined, one client"
  ctl bench -b 8 -e 8 --iters 20000 --warmup 1000
  echo "=== pipelined, 8 client processes at once"
  for i in $(seq 8); do ctl bench -b 8 -e 8 --iters 20000 --warmup 1000 > "$dir/p$i.txt" 2>&1 & done
  wait $(jobs -p | grep -v "^$daemon$") 2>/dev/null
  cat "$dir"/p*.txt | grep -E '^ +8 '
} > "$out/bench.txt" 2>&1
cat "$out/bench.txt"
kill "$daemon"; wait "$daemon"
# The host backend, 2 ranks, on this machine's CPUs, in the same run.
node dist/daemon/main.js --backend host --ranks 2 --socket "$dir/h.sock" --debug-socket "$dir/hd.sock" --log-level warn > "$out/daemon-host.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do [ -S "$dir/h.sock" ] && break; sleep 0.1; done
hctl() { node dist/client/cli.js --socket "$dir/h.sock" "$@"; }
{
  echo "=== host, 2 ranks: serial, direct alongside"
  hctl bench -b 8 -e 64M -f 8 --serial --direct --iters 300 --warmup 30
  echo "=== host, 2 ranks: pipelined, one client"
  hctl bench -b 8 -e 8 --iters 20000 --warmup 1000
  echo "=== host, 2 ranks: pipelined, 8 client processes at once"
  for i in $(seq 8); do hctl bench -b 8 -e 8 --iters 20000 --warmup 1000 > "$dir/h$i.txt" 2>&1 & done
  wait $(jobs -p | grep -v "^$daemon$") 2>/dev/null
  cat "$dir"/h*.txt | grep -E '^ +8 '
} > "$out/bench-host.txt" 2>&1
kill "$daemon"; wait "$daemon"
npm run --silent bench:host -- 2 64 >> "$out/bench-host.txt" 2>&1
cat "$out/bench-host.txt"
