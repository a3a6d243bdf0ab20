#!/usr/bin/env bash
# The GPU session's one call (device tool): install the carried wheels (bash ../shared/tools/gpu-wheels.sh
# and `pip wheel --no-deps -w .whl .` fetch them into .whl/), check the CUDA path, run the full benchmarks.
# Results land in $OUT; copy them into benchmarks/results/.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site HIPPYNN_USE_CUSTOM_KERNELS=False PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "${CUDA_CHECK_SECONDS:-200}" python3 benchmarks/cuda_check.py --out "$OUT" --work /tmp/cuda-check 2>&1 \
  | grep -v Warning | tee "$OUT/cuda_check.log"
python3 benchmarks/run.py --full --total-budget "${BENCH_SECONDS:-240}" --out "$OUT" --workdir /tmp/bench 2>&1 \
  | grep -v Warning | tail -n 150 | tee "$OUT/bench.log"
