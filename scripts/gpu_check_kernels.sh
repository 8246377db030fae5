#!/usr/bin/env bash
# GPU check of kernels/ on a lent device machine (torch + cupy-cuda13x, project NOT installed; run from the
# checkout root). The C extension may be absent there: the CPU side falls back to the torch reference.
#   bash scripts/gpu_check_kernels.sh            # logs go to $OUT (or ./gpu-check-logs)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$OUT"
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(kernels.backends())" \
    2>&1 | tee "$OUT/kernels-backends.log" || rc=1
python3 -m pytest -m gpu -q -ra tests/test_kernels*.py 2>&1 | tee "$OUT/gpu-kernels-tests.log" || rc=1
python3 -m benchmark.perf_kernels --device cuda --json-out "$OUT/perf-kernels-cuda.json" 2>&1 \
    | tee "$OUT/perf-kernels-cuda.log" || rc=1
exit $rc
