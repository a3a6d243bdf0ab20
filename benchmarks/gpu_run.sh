#!/usr/bin/env bash
# The GPU session's one call (device tool): install the carried wheels (bash ../shared/tools/gpu-wheels.sh
# and `pip wheel --no-deps -w .whl .` fetch them into .whl/), check the CUDA path, run the full benchmarks.
# Results land in $OUT; copy them into benchmarks/results/.
set -uo pipefail
# Into the environment that holds torch, so the openmm-torch CUDA plugin finds libtorch beside it;
# a --target folder is the fall-back where that environment is read-only.
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site HIPPYNN_USE_CUSTOM_KERNELS=False PYTHONUNBUFFERED=1
# The openmm-torch CUDA plugin links libtorch; with the wheels in a --target folder apart from torch's
# own site-packages its loader cannot find libtorch unless torch's lib folder is on the search path.
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):${LD_LIBRARY_PATH:-}"
python3 -c 'import openmm, openmmtorch; print("plugin load failures:", openmm.Platform.getPluginLoadFailures())' 
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "${CUDA_CHECK_SECONDS:-200}" python3 benchmarks/cuda_check.py --out "$OUT" --work /tmp/cuda-check 2>&1 \
  | grep -v Warning | tee "$OUT/cuda_check.log"
python3 benchmarks/run.py --full --total-budget "${BENCH_SECONDS:-240}" --out "$OUT" --workdir /tmp/bench 2>&1 \
  | grep -v Warning | tail -n 150 | tee "$OUT/bench.log"
