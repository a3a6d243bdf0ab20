"""Structure of the temperature-aware and pooled methanol models at held-out temperatures (CPU).

Needs the models and data of ``run_thermal.py`` in WORKDIR. For each of the T-aware and pooled models:
export, then ``openmm-cgnn compare`` at 300 and 400 K (0.787 g/cm^3, harness preset ``default``:
5 + 30 ps of CG, 64 beads) against the mapped all-atom frames of ``run_thermal.py`` (20 ps). The
harness reports no uncertainty yet, so this script adds a rough noise floor for each state point: the
RDF MAD between the two halves of the all-atom data, and between the two halves of each CG run.

Run from the repository root after run_thermal.py (about 20 minutes on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-thermal-cpu/run_structure.py WORKDIR

Reuses finished reports. Writes structure.json and structure.md next to this file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {"T-aware": "t-aware", "pooled": "pooled"}
STATES = {"300K:0.787g/cm3": 300.0, "400K:0.787g/cm3": 400.0}


def _halves_mad(positions: np.ndarray, boxes: np.ndarray, r_max: float, bin_width: float) -> float:
    """RDF MAD between the first and the second half of a trajectory (positions (F, N, 3) nm)."""
    from openmm_cgnn.analysis import rdf, rdf_metrics

    n = len(positions) // 2
    r, g1 = rdf(positions[:n], boxes[:n], r_max=r_max, bin_width=bin_width)
    _, g2 = rdf(positions[n:2 * n], boxes[n:2 * n], r_max=r_max, bin_width=bin_width)
    return float(rdf_metrics(r, g1, g2)["mad"])


def main(work: Path) -> None:
    from openmm_cgnn.cli import main as cli
    from openmm_cgnn.dataset import CGDataset

    started = time.perf_counter()
    refs = [str(work / f"cg-{t:g}K.npz") for t in STATES.values()]
    results: dict = {"models": {}, "noise_floor": {}}
    for label, name in MODELS.items():
        pt, report = work / f"{name}.pt", work / f"compare-{name}" / "report.json"
        if not pt.exists():
            cli(["export", str(work / name), "--out", str(pt)])
        if not report.exists():
            cli(["compare", "--model", str(pt), "--state-points", ",".join(STATES), "--reference-data", *refs,
                 "--preset", "default", "--platform", "CPU", "--out", str(report.parent), "--quiet"])
        data = json.loads(report.read_text())
        rows = {}
        for sp in data["state_points"]:
            frames = np.load(report.parent / sp["cg"]["folder"] / "frames.npz")
            rows[sp["label"]] = {"rdf_mad": sp["rdf"]["mad"], "adf_l1": sp["adf"]["l1"],
                                 "cg_temperature_K": sp["cg"]["temperature_mean_K"],
                                 "cg_halves_rdf_mad": _halves_mad(frames["positions"], frames["boxes"],
                                                                  sp["rdf"]["r_max_nm"], sp["rdf"]["bin_width_nm"])}
        results["models"][label] = rows
    for label, t in STATES.items():
        ds = CGDataset.load(work / f"cg-{t:g}K.npz")
        sp = json.loads((work / "compare-t-aware" / "report.json").read_text())["state_points"]
        r_max = next(s["rdf"]["r_max_nm"] for s in sp if s["label"] == label)
        results["noise_floor"][label] = {"aa_halves_rdf_mad": _halves_mad(ds.positions, ds.boxes, r_max, 0.005),
                                         "aa_frames": int(ds.n_frames)}
    results["seconds"] = time.perf_counter() - started
    lines = ["# Temperature-aware vs pooled CG methanol: structure at held-out temperatures (CPU, 2026-11-28)", "",
             "Models of run_thermal.py (trained at 250 and 350 K), `openmm-cgnn compare --preset default` "
             "(CG 5 + 30 ps, 64 beads, NVT 0.787 g/cm^3) against 20 ps of mapped all-atom frames. One CG run per "
             "model and state point; the noise-floor columns are the RDF MAD between the two halves of the "
             "all-atom data and of each CG run (a rough scale of sampling noise: half-length runs are noisier "
             "than the full ones).", "",
             "| state point | model | RDF MAD | ADF L1 | RDF MAD CG half vs half | RDF MAD AA half vs half |",
             "|---|---|---|---|---|---|"]
    for label in STATES:
        for model, rows in results["models"].items():
            m = rows[label]
            lines.append(f"| {label} | {model} | {m['rdf_mad']:.4f} | {m['adf_l1']:.3f} | "
                         f"{m['cg_halves_rdf_mad']:.4f} | {results['noise_floor'][label]['aa_halves_rdf_mad']:.4f} |")
    from openmm_cgnn.files import write_json_atomic, write_text_atomic

    write_json_atomic(HERE / "structure.json", results)
    write_text_atomic(HERE / "structure.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "thermal-work"))
