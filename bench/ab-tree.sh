#!/usr/bin/env bash
# A/B of a whole earlier build against this tree, alternated on one machine: serial with direct
# alongside, and pipelined from one client. The earlier build travels untracked as
# bench/ab-old/js (its dist/) and bench/ab-old/nccld.node (its addon): dist/ and build/ are
# ignored, so they would not travel under their own names; they are put back in place here.
#   bash .device/on-device.sh bash bench/ab-tree.sh [backend args...]   (default: --backend nccl)
set -uo pipefail
old=/tmp/ab-old
rm -rf "$old" && mkdir -p "$old/build/Release"
cp -r bench/ab-old/js "$old/dist" && cp bench/ab-old/nccld.node "$old/build/Release/"
ln -s "$PWD/node_modules" "$old/node_modules"
args=("${@:---backend nccl}")
[ $# -eq 0 ] && args=(--backend nccl)
for round in 1 2; do
  for which in old new; do
    root=.; [ "$which" = old ] && root=$old
    dir=$(mktemp -d /tmp/nccld-XXXX)
    node "$root/dist/daemon/main.js" "${args[@]}" --socket "$dir/a.sock" --debug-socket "$dir/d.sock" --log-level warn > /dev/null 2>&1 &
    d=$!
    for _ in $(seq 300); do [ -S "$dir/a.sock" ] && break; sleep 0.1; done
    echo "=== $which, round $round"
    node "$root/dist/client/cli.js" --socket "$dir/a.sock" bench -b 8 -e 16M -f 2097152 --serial --direct --iters 1000 --warmup 100 | grep -E '^ +[0-9]'
    node "$root/dist/client/cli.js" --socket "$dir/a.sock" bench -b 8 -e 8 --iters 20000 --warmup 1000 | grep -E '^ +8 '
    kill "$d"; wait "$d"
  done
done
