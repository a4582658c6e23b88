#!/usr/bin/env bash
# The whole GPU run of a submission, in one device call: the full tap suite with the GPU tests
# live (coverage checked), the Python client's and torch backend's tests on CUDA, issue 11's group
# figures (host backend on this machine's CPUs, and a group of 1 on the GPU) and torch's
# all_reduce through "nccld" against "gloo" and "nccl". Logs go to $OUT.
#   bash .device/on-device.sh bash bench/gpu-final.sh [tests|figures]   (both when left out)
set -uo pipefail
part=${1:-all}
out=${OUT:-/tmp/gpu-final}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
if [ "$part" != figures ]; then
( time npx tap --reporter=terse ) > "$out/suite.log" 2>&1
echo "=== tap"; grep -E '^# \{|^not ok|ERROR' "$out/suite.log" | head; tail -4 "$out/suite.log"
echo "=== pytest (CUDA)"
( cd python && PYTHONPATH=. NCCLD_NODE="$(command -v node)" timeout 400 python3 -m pytest -q tests 2>&1 | tail -8 ) | tee "$out/pytest.log"
fi
[ "$part" = tests ] && exit 0
echo "=== group figures"
bash bench/groups-host.sh gpu 2>&1 | grep -v '^#.*bytes' | tee "$out/groups.txt"
echo "=== torch all_reduce"
( cd python && PYTHONPATH=. timeout 300 python3 bench/torch_allreduce.py --cuda 2>&1 | tail -30 ) | tee "$out/torch.txt"
