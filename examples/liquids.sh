#!/usr/bin/env bash
# The two built-in examples beyond methanol, at a size that runs on a CPU in well under an hour:
# ethanol (two beads, bonded CG terms) and a methanol-water mixture (two bead types).
# Usage: examples/liquids.sh [OUTPUT_FOLDER]   (default liquids-output; finished stages are reused)
set -euo pipefail
OUT=${1:-liquids-output}
CLI=${CLI:-openmm-cgnn}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
run() { local target=$1; shift; [ -e "$target" ] && echo "reuse $target" || "$@"; }

# ethanol: 100 molecules, OPLS-AA, NVT 300 K at 0.789 g/cm^3; 10 ps equilibration, 40 ps of frames every 0.2 ps
run "$OUT/ethanol-aa.npz" $CLI reference --species ethanol --molecules 100 --temperature 300 --density 0.789 \
    --cutoff 0.9 --equilibration 10 --ns 0.04 --frame-interval 0.2 --platform CPU --quiet --out "$OUT/ethanol-aa.npz"
run "$OUT/ethanol-cg.npz" $CLI map --in "$OUT/ethanol-aa.npz" --mapping "$HERE/ethanol-2bead.json" --out "$OUT/ethanol-cg.npz"
run "$OUT/ethanol-model" $CLI train --data "$OUT/ethanol-cg.npz" --preset tiny --epochs 8 --out "$OUT/ethanol-model"
run "$OUT/ethanol.pt" $CLI export "$OUT/ethanol-model" --out "$OUT/ethanol.pt"
run "$OUT/ethanol-report/report.json" $CLI compare --model "$OUT/ethanol.pt" --molecules 64 \
    --state-points 300K:0.789g/cm3,350K:0.789g/cm3 --platform CPU --quiet --out "$OUT/ethanol-report"

# methanol-water: 32 + 64 molecules (OPLS-AA methanol, SPC/E water with OPLS 1-4 scales), NVT 300 K at 0.90 g/cm^3
run "$OUT/mix-aa.npz" $CLI reference --components methanol:32,water:64 --temperature 300 --density 0.90 \
    --cutoff 0.75 --equilibration 10 --ns 0.02 --frame-interval 0.2 --platform CPU --quiet --out "$OUT/mix-aa.npz"
run "$OUT/mix-cg.npz" $CLI map --in "$OUT/mix-aa.npz" --out "$OUT/mix-cg.npz"
run "$OUT/mix-model" $CLI train --data "$OUT/mix-cg.npz" --preset tiny --epochs 8 --out "$OUT/mix-model"
run "$OUT/mix.pt" $CLI export "$OUT/mix-model" --out "$OUT/mix.pt"
# the harness runs the model's own mixture (the training counts) at the training state point
run "$OUT/mix-report/report.json" $CLI compare --model "$OUT/mix.pt" --state-points 300K:0.90g/cm3 \
    --platform CPU --quiet --out "$OUT/mix-report"
