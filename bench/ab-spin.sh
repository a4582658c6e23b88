#!/usr/bin/env bash
# A/B of two addon builds on the GPU machine, alternated: serial collectives through the daemon
# at 8 B and 16 MiB, and torch all_reduce with CUDA events. Copy each build's
# build/Release/nccld.node to bench/ab-old.node and bench/ab-new.node (untracked, so they travel
# with the working tree; delete them afterwards), stage, then
#   bash .device/on-device.sh bash bench/ab-spin.sh
set -uo pipefail
for round in 1 2; do
  for which in old new; do
    cp "bench/ab-$which.node" build/Release/nccld.node
    dir=$(mktemp -d /tmp/nccld-XXXX)
    node dist/daemon/main.js --backend nccl --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > /dev/null 2>&1 &
    d=$!
    for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
    echo "=== $which, round $round"
    node dist/client/cli.js --socket "$dir/a.sock" bench -b 8 -e 16M -f 2097152 --serial --iters 1000 --warmup 100 | grep -E '^ +[0-9]'
    node dist/client/cli.js --socket "$dir/a.sock" bench -b 8 -e 16M -f 2097152 --serial --group 1 --iters 1000 --warmup 100 | grep -E '^ +[0-9]'
    kill "$d"; wait "$d"
    ( cd python && PYTHONPATH=. timeout 200 python3 bench/torch_allreduce.py --cuda --procs 2 --scale 0.5 2>&1 | grep -E 'CUDA|client:|torch:' )
  done
done
