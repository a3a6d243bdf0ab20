#!/usr/bin/env bash
# Check the CUDA path and run the GPU benchmarks on your own NVIDIA GPU.
#
# Set-up, once, in the Python environment that holds torch (openmm-torch's CUDA plugin loads libtorch
# from there; a CUDA 13 driver is needed):
#
#     pip install -e ".[cuda]"
#
# Then, from the repository root:
#
#     bash benchmarks/gpu_run.sh [OUTPUT_FOLDER]      # default: benchmarks/results/<date>-gpu
#
# Steps:
#   1. print the OpenMM platforms, any plugin that failed to load, and the GPU;
#   2. benchmarks/cuda_check.py: a tiny model trained on a small methanol data set and exported in float32
#      and float64; its energies and forces on OpenMM's CUDA platform (with and without CUDA graphs)
#      against the CPU's; short CG NVT and NPT runs on CUDA; the MLPotential("cgnn") route;
#   3. benchmarks/run.py --full: throughput against all-atom, TorchForce overhead, scaling from 512 to
#      32,768 beads, precision, training speed, profile and multiple time stepping, for the tiny and the
#      paper network, each benchmark inside its share of the time budget.
# Results in OUTPUT_FOLDER: <date>-<device>-full.json and .md, cuda_check.json, cuda_check.log, bench.log.
#
# Environment: CUDA_CHECK_SECONDS (default 600) limits step 2; BENCH_SECONDS (default 3600) is the
# total budget of step 3 (sizes predicted not to fit are skipped and recorded as such).
set -uo pipefail
OUT=${1:-benchmarks/results/$(date +%F)-gpu}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python -c 'import openmm, openmmtorch
print("OpenMM platforms:", [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())])
print("plugin load failures:", openmm.Platform.getPluginLoadFailures())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

timeout "${CUDA_CHECK_SECONDS:-600}" python benchmarks/cuda_check.py --out "$OUT" --work "$WORK/cuda-check" 2>&1 \
  | tee "$OUT/cuda_check.log"
python benchmarks/run.py --full --total-budget "${BENCH_SECONDS:-3600}" --out "$OUT" --workdir "$WORK/bench" 2>&1 \
  | tee "$OUT/bench.log"
