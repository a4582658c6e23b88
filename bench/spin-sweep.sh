#!/usr/bin/env bash
# Serial 8-byte latency through the daemon (nccl backend) for a few --ring-spin-us values, direct
# alongside: how much the device worker's spin saves per collective. On the GPU machine:
#   bash .device/on-device.sh bash bench/spin-sweep.sh [spin values...]
set -uo pipefail
out=${OUT:-/tmp/spin-sweep}
mkdir -p "$out"
for spin in ${@:-50 300 2000}; do
  dir=$(mktemp -d /tmp/nccld-XXXX)
  node dist/daemon/main.js --backend nccl --ring-spin-us "$spin" --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > "$out/daemon-$spin.log" 2>&1 &
  d=$!
  for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
  echo "=== --ring-spin-us $spin"
  node dist/client/cli.js --socket "$dir/a.sock" bench -b 8 -e 8 --serial --direct --iters 2000 --warmup 200
  kill "$d"; wait "$d"
done
