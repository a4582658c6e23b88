#!/usr/bin/env bash
# Issue 11 on the GPU machine: the GPU tests (every collective, single-client and group form, the
# ring worker, the nccl backend), group-demo, every collective with --verify, and a group of 1
# against the single-client form.   bash .device/on-device.sh bash bench/gpu-collectives.sh
set -uo pipefail
out=${OUT:-/tmp/o}; mkdir -p $out
npx tap --disable-coverage --reporter=tap test/gpu-collectives.test.ts test/gpu-ring.test.ts test/gpu.test.ts > $out/t.log 2>&1; echo "tap rc=$?"
grep -E "^# \{|not ok" $out/t.log | head -20
dir=$(mktemp -d)
node dist/daemon/main.js --backend nccl --socket $dir/a.sock --debug-socket $dir/d.sock --log-level warn > $out/daemon.log 2>&1 & d=$!
for _ in $(seq 300); do [ -S $dir/a.sock ] && break; sleep 0.1; done
ctl() { node dist/client/cli.js --socket $dir/a.sock "$@"; }
ctl group-demo --size 1 --count 1000003 --dtype bf16 2>&1 | tail -20
for c in broadcast reduce allgather reducescatter alltoall; do ctl $c --dtype f32 --op sum --count 1000003 --verify 2>&1 | tail -2; done
ctl bench -b 8 -e 16M -f 4096 --serial --iters 300 --warmup 30 2>&1 | tail -4
ctl bench -b 8 -e 16M -f 4096 --serial --group 1 --iters 300 --warmup 30 2>&1 | tail -4
kill $d; wait $d
