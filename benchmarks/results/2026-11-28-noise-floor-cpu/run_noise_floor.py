"""How far apart are two all-atom runs of one state point? The noise floor of the RDF MAD and ADF L1,
measured directly and from half-vs-half splits, on the CPU.

Three independent all-atom runs of 64 methanol molecules at 300 K and 0.787 g/cm^3 (NVT), with the
harness's "default" schedule (10 ps equilibration, 50 ps production, a frame every 0.5 ps), are
mapped onto beads and compared pairwise with the harness's metrics. For every pair this records:

* the metric between the two runs (the noise floor measured from independent runs) with its
  block-bootstrap standard error;
* the half-vs-half floor of each run alone (``analysis.noise_floor``), scaled to a comparison of the
  two runs, with its standard error; and whether the two agree (``analysis.significant_difference``).

Run from the repository root (about 5 minutes on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-noise-floor-cpu/run_noise_floor.py WORKDIR

WORKDIR keeps the runs (reused on a rerun). Writes noise_floor.json and noise_floor.md next to this file.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = (101, 102, 103)
SCHEDULE = dict(equilibration=10.0, production=50.0, frame_interval=0.5)   # HarnessConfig.preset("default")
N_RESAMPLES = 400


def _runs(work: Path) -> list[Path]:
    from openmm_cgnn.mapping import map_reference
    from openmm_cgnn.reference import ReferenceConfig, run_reference

    out = []
    for seed in SEEDS:
        aa, cg = work / f"aa-{seed}.npz", work / f"cg-{seed}.npz"
        if not cg.exists():
            if not aa.exists():
                run_reference(ReferenceConfig(species="methanol", n_molecules=64, temperature=300.0, density=0.787,
                                              cutoff=0.75, platform="CPU", seed=seed, **SCHEDULE), aa)
            map_reference(aa, cg)
        out.append(cg)
    return out


def main(work: Path) -> None:
    from openmm_cgnn import analysis as A
    from openmm_cgnn.dataset import CGDataset

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    sets = [CGDataset.load(p) for p in _runs(work)]
    simulated = time.perf_counter() - started
    r_max = min(A.minimum_image_radius(ds.boxes) for ds in sets)
    r, g0 = A.rdf(sets[0].positions, sets[0].boxes, r_max=r_max, bin_width=0.005)
    shell = A.first_minimum(r, g0)
    curves = [{"rdf": A.rdf_frames(ds.positions, ds.boxes, r_max=r_max, bin_width=0.005),
               "adf": A.adf_frames(ds.positions, ds.boxes, shell, n_bins=60)} for ds in sets]
    plans = [A.plan_blocks(A.block_observables(*c.values())) for c in curves]
    pairs = []
    for i, j in itertools.combinations(range(len(sets)), 2):
        row: dict = {"runs": [SEEDS[i], SEEDS[j]]}
        for name, metric, key in (("rdf", A.rdf_distances, "mad"), ("adf", A.adf_comparison(curves[i]["adf"].x), "l1")):
            direct = A.bootstrap_metric(metric, curves[i][name], curves[j][name], plans[i], plans[j],
                                        n_resamples=N_RESAMPLES)
            floor = A.noise_floor(metric, curves[i][name], plans[i], cg_plan=plans[j], n_resamples=N_RESAMPLES)
            row[f"{name}_{key}"] = {
                "between_runs": direct["value"][key], "between_runs_se": direct["se"][key],
                "halves_floor": floor["value"][key], "halves_floor_se": floor["se"][key],
                "halves_raw": floor["raw"][key], "scale": floor["scale"],
                "agree_2sigma": A.significant_difference(direct["value"][key], direct["se"][key],
                                                         floor["value"][key], floor["se"][key]) == 0}
        pairs.append(row)
    result = {
        "what": "RDF MAD and ADF L1 between independent all-atom runs of one state point (the noise floor), "
                "and the half-vs-half floor of each run scaled to that comparison",
        "system": "methanol x 64 (OPLS-AA), NVT 300 K, 0.787 g/cm^3, cutoff 0.75 nm, CPU",
        "schedule_ps": SCHEDULE, "seeds": list(SEEDS), "n_frames": [int(ds.n_frames) for ds in sets],
        "rdf_bin_width_nm": 0.005, "r_max_nm": r_max, "adf_shell_cutoff_nm": shell, "adf_bins": 60,
        "n_resamples": N_RESAMPLES, "blocks": [p.to_dict() for p in plans], "pairs": pairs,
        "seconds": {"simulation_and_mapping": simulated, "total": time.perf_counter() - started},
    }
    (HERE / "noise_floor.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "noise_floor.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(res: dict) -> str:
    lines = ["# Noise floor of the structural metrics (CPU)", "",
             f"{res['system']}; {res['schedule_ps']['production']:g} ps per run, a frame every "
             f"{res['schedule_ps']['frame_interval']:g} ps (the harness's default preset); RDF bins "
             f"{res['rdf_bin_width_nm']} nm up to {res['r_max_nm']:.3f} nm, ADF shell {res['adf_shell_cutoff_nm']:.3f} nm. "
             f"Errors: block bootstrap, {res['n_resamples']} resamples.", "",
             "| run | frames | statistical inefficiency (frames) | blocks x length | independent blocks |",
             "| --- | --- | --- | --- | --- |"]
    for seed, b in zip(res["seeds"], res["blocks"]):
        lines.append(f"| seed {seed} | {b['n_frames']} | {b['statistical_inefficiency']:.1f} | "
                     f"{b['n_blocks']} x {b['block_length']} | {'yes' if b['independent'] else 'no'} |")
    lines += ["", "| runs | metric | between the two runs | half-vs-half floor of the first, scaled | "
              "agree within 2 sigma |", "| --- | --- | --- | --- | --- |"]
    for p in res["pairs"]:
        for key, label in (("rdf_mad", "RDF MAD"), ("adf_l1", "ADF L1")):
            m = p[key]
            lines.append(f"| {p['runs'][0]} vs {p['runs'][1]} | {label} | {m['between_runs']:.4f} \u00b1 "
                         f"{m['between_runs_se']:.4f} | {m['halves_floor']:.4f} \u00b1 {m['halves_floor_se']:.4f} "
                         f"(raw {m['halves_raw']:.4f} x {m['scale']:.2f}) | {'yes' if m['agree_2sigma'] else 'no'} |")
    lines += ["", f"Total {res['seconds']['total']:.0f} s on a contended 2-core CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
