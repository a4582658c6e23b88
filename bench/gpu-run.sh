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
# One backend's figures: a verified AllReduce (nccl), serial with direct alongside, pipelined from
# one client and from 8 client processes at once.   figures NAME SIZES DAEMON-ARGS...
figures() {
  local name=$1 sizes=$2
  shift 2
  node dist/daemon/main.js "$@" --socket "$dir/$name.sock" --debug-socket "$dir/$name-d.sock" --log-level warn > "$out/daemon-$name.log" 2>&1 &
  local daemon=$!
  for _ in $(seq 300); do [ -S "$dir/$name.sock" ] && break; sleep 0.1; done
  ctl() { node dist/client/cli.js --socket "$dir/$name.sock" "$@"; }
  [ "$name" = nccl ] && ctl allreduce --dtype bf16 --op sum --count 1000003 --verify
  echo "=== $name: serial, direct alongside"
  ctl bench $sizes --serial --direct --iters 200 --warmup 20
  echo "=== $name: pipelined, one client"
  ctl bench -b 8 -e 8 --iters 20000 --warmup 1000
  echo "=== $name: pipelined, 8 client processes at once"
  for i in $(seq 8); do ctl bench -b 8 -e 8 --iters 20000 --warmup 1000 > "$dir/$name-p$i.txt" 2>&1 & done
  wait $(jobs -p | grep -v "^$daemon$") 2>/dev/null
  cat "$dir/$name"-p*.txt | grep -E '^ +8 '
  kill "$daemon"; wait "$daemon"
}
figures nccl "-b 8 -e 256M -f 32" --backend nccl > "$out/bench.txt" 2>&1
cat "$out/bench.txt"
# The host backend, 2 ranks, on this machine's CPUs, in the same run.
figures host "-b 8 -e 64M -f 8" --backend host --ranks 2 > "$out/bench-host.txt" 2>&1
npm run --silent bench:host -- 2 64 >> "$out/bench-host.txt" 2>&1
cat "$out/bench-host.txt"
