"""Wall time of one comparison sweep in this process (serial) and on a local Dask cluster.

Run from the repository root (about 15 minutes on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-cpu-dask-sweep/run_sweep.py WORKDIR [--workers=2]

Makes a tiny model (64 methanol, 300 K, 0.787 g/cm^3, HIP-NN-TS tiny preset, 2 epochs; reused from
WORKDIR), then compares it at four state points twice, each into a fresh folder: with ``cluster=None``
(one piece after the other in this process, OpenMM on every core) and on a local Dask cluster of
``--workers`` single-threaded worker processes. Both runs compute their own all-atom references (the
300 K one is given). Writes sweep.json and sweep.md next to this file, with the load average before and
after (other work on the machine slows both runs).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATES = "300K:0.787g/cm3,350K:0.787g/cm3,400K:0.787g/cm3,300K:1bar"


def _model(work: Path) -> tuple[Path, Path]:
    from openmm_cgnn.export import export_model
    from openmm_cgnn.mapping import map_reference
    from openmm_cgnn.reference import ReferenceConfig, run_reference
    from openmm_cgnn.training import TrainConfig, train

    aa, cg, pt = work / "train-aa.npz", work / "train-cg.npz", work / "model.pt"
    if not aa.exists():
        run_reference(ReferenceConfig(species="methanol", n_molecules=64, temperature=300.0, density=0.787,
                                      cutoff=0.75, equilibration=2.0, production=4.0, frame_interval=0.05,
                                      platform="CPU", seed=7), aa, progress=False)
    if not cg.exists():
        map_reference(aa, cg)
    if not pt.exists():
        cfg = TrainConfig.from_preset("tiny")
        cfg.max_epochs = 2
        cfg.device = "cpu"
        train([cg], cfg, work / "model", verbose=False, overwrite=True)
        export_model(work / "model", pt)
    return pt, cg


def main(work: Path, workers: int) -> None:
    from openmm_cgnn.files import cpu_model
    from openmm_cgnn.cluster import ClusterConfig
    from openmm_cgnn.harness import HarnessConfig, compare

    work.mkdir(parents=True, exist_ok=True)
    model, dataset = _model(work)
    config = HarnessConfig.from_preset("tiny", platform="CPU", aa_production=4.0, cg_production=4.0)
    rows = []
    for name, cluster in (("serial (this process)", None), (f"Dask, {workers} local workers",
                                                             ClusterConfig(workers=workers))):
        out = work / ("serial" if cluster is None else "dask")
        shutil.rmtree(out, ignore_errors=True)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        report = compare(model, STATES, out, config, reference_datasets=[dataset], progress=False, cluster=cluster)
        wall = time.perf_counter() - t0
        pieces = sum(v or 0.0 for sp in report["state_points"] for v in sp["timing_s"].values())
        rows.append({"run": name, "wall_s": wall, "sum_of_pieces_s": pieces, "load_before": load0,
                     "load_after": os.getloadavg()[0],
                     "complete": report["summary"]["n_complete"], "n_state_points": len(report["state_points"])})
        print(json.dumps(rows[-1]), flush=True)
    result = {"what": "one comparison sweep, serial vs local Dask cluster", "state_points": STATES,
              "harness": {"preset": "tiny", "aa_production_ps": 4.0, "cg_production_ps": 4.0, "n_molecules": 64},
              "cpu": cpu_model(), "cores": os.cpu_count(), "rows": rows,
              "speedup": rows[0]["wall_s"] / rows[1]["wall_s"]}
    (HERE / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Sweep wall time: serial vs local Dask cluster", "",
             f"{result['cpu']}, {result['cores']} cores (shared with other work: see the load averages). "
             f"Four state points ({STATES}), 64 methanol, 4 ps all-atom and 4 ps CG per state point.", "",
             "| run | wall (s) | sum of piece times (s) | load before | load after |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | {r['wall_s']:.0f} | {r['sum_of_pieces_s']:.0f} | {r['load_before']:.1f} | "
              f"{r['load_after']:.1f} |" for r in rows]
    lines += ["", f"Serial / Dask wall time: {result['speedup']:.2f}.", ""]
    (HERE / "sweep.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--workers=")), 2)
    if len(args) != 1:
        sys.exit(__doc__)
    main(Path(args[0]), n)
