#!/usr/bin/env bash
# Issue 11's figures: group AllReduce with 2 and 4 member processes on the host backend, against
# the single-client form and a direct call, 8 B and 16 MiB, one at a time. Then, on the GPU
# machine, the same for a group of 1 against the single-client form and direct (world of 1).
#   bash bench/groups-host.sh            (here)
#   bash .device/on-device.sh bash bench/groups-host.sh gpu   (GPU machine)
set -uo pipefail
out=${OUT:-/tmp/groups-bench}
mkdir -p "$out"
sizes=(-b 8 -e 16M -f 2097152 --iters 200 --warmup 20)
for n in 2 4; do
  dir=$(mktemp -d /tmp/nccld-XXXX)
  node dist/daemon/main.js --backend host --ranks "$n" --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > "$out/daemon-$n.log" 2>&1 &
  d=$!
  for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
  echo "=== host backend, $n ranks: single client (and direct) vs a group of $n processes"
  node dist/client/cli.js --socket "$dir/a.sock" bench "${sizes[@]}" --serial --direct
  node dist/client/cli.js --socket "$dir/a.sock" bench "${sizes[@]}" --serial --group "$n"
  kill "$d"; wait "$d"
done
if [ "${1:-}" = gpu ]; then
  dir=$(mktemp -d /tmp/nccld-XXXX)
  node dist/daemon/main.js --backend nccl --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > "$out/daemon-nccl.log" 2>&1 &
  d=$!
  for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
  echo "=== nccl backend, world of 1: single client (and direct) vs a group of 1"
  node dist/client/cli.js --socket "$dir/a.sock" bench "${sizes[@]}" --serial --direct
  node dist/client/cli.js --socket "$dir/a.sock" bench "${sizes[@]}" --serial --group 1
  kill "$d"; wait "$d"
fi
