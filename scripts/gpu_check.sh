#!/usr/bin/env bash
# One prepared GPU check for a lent device machine (torch + cupy, project NOT installed; run from the checkout
# root): the gpu-marked tests, then the kernel, training-step and harness benchmarks on CUDA. Logs go to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$OUT"
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(kernels.backends())" 2>&1 | tee "$OUT/backends.log"
timeout 240 python3 -m pytest -m gpu -q -ra -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log" || rc=1
timeout 120 python3 -m benchmark perf kernels --device cuda 2>&1 | tee "$OUT/perf-kernels.log" || rc=1
timeout 120 python3 -m benchmark perf train --device cuda 2>&1 | tee "$OUT/perf-train.log" || rc=1
timeout 90 python3 -m benchmark perf harness --device cuda 2>&1 | tee "$OUT/perf-harness.log" || rc=1
exit $rc
