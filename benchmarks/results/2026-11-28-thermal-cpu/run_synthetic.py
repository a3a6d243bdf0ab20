"""Temperature-aware models on synthetic data whose potential of mean force is known: the pair PMF
u(r, T) = e(r) - T s(r) of ``tests/test_thermal.py`` (Gaussian e and s), labels = its forces + noise.

Models trained on 250 K + 350 K (the same frames for all): the split form U = E(R) - T S(R), the form
with T as a network input, and a plain model (which can only learn the average, i.e. the 300 K PMF).
Score: force RMSE against the exact PMF forces (no noise) on frames no model saw, at 200 to 450 K.
Mean and standard error over independent seeds (data, noise and initial weights).

Run from the repository root (minutes on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-thermal-cpu/run_synthetic.py WORKDIR

Writes synthetic.json and synthetic.md next to this file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
TRAIN_T = (250.0, 350.0)
EVAL_T = (200.0, 250.0, 300.0, 350.0, 400.0, 450.0)
N_FRAMES = 20
EPOCHS = 20
MODELS = {"split": (True, "split"), "input": (True, "input"), "plain": (False, "split")}


def main(work: Path) -> None:
    from openmm_cgnn.files import versions, write_json_atomic, write_text_atomic
    from openmm_cgnn.training import TrainConfig, load_trained, predict_hippynn, train
    from tests._synthetic import make_synthetic_dataset
    from tests.test_thermal import _true_forces, thermal_dataset

    started = time.perf_counter()
    rmse = {name: {t: [] for t in EVAL_T} for name in MODELS}
    for seed in SEEDS:
        base = work / f"seed-{seed}"
        base.mkdir(parents=True, exist_ok=True)
        paths = [base / f"cg-{t:g}K.npz" for t in TRAIN_T]
        for k, (p, t) in enumerate(zip(paths, TRAIN_T)):
            if not p.exists():
                thermal_dataset(p, t, N_FRAMES, seed=100 * seed + k + 1)
        held_out = make_synthetic_dataset(None, n_frames=6, seed=1000 + seed, noise=0.0)
        for name, (aware, form) in MODELS.items():
            out = base / name
            if not (out / "metadata.json").exists():
                cfg = TrainConfig.from_preset("tiny")
                cfg.temperature_aware, cfg.temperature_form = aware, form
                cfg.max_epochs = cfg.termination_patience = EPOCHS
                cfg.learning_rate, cfg.fit_volume, cfg.seed = 1e-2, False, seed
                train(paths, cfg, out, overwrite=True, verbose=False)
            loaded = load_trained(out)
            for t in EVAL_T:
                kw = {"temperature": t} if aware else {}
                _, f = predict_hippynn(loaded, held_out.positions, held_out.boxes, held_out.bead_types, **kw)
                rmse[name][t].append(float(np.sqrt(np.mean((f - _true_forces(held_out, t)) ** 2))))
        print(f"[synthetic] seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {name: {f"{t:g}": {"mean": float(np.mean(v)), "se": float(np.std(v, ddof=1) / np.sqrt(len(v))),
                                 "per_seed": v} for t, v in per_t.items()} for name, per_t in rmse.items()}
    results = {"units": "kJ/mol/nm", "metric": "force RMSE against the exact PMF forces, held-out frames",
               "models": summary, "settings": {"seeds": SEEDS, "train_temperatures_K": TRAIN_T,
                                               "frames_per_temperature": N_FRAMES, "epochs": EPOCHS,
                                               "preset": "tiny", "learning_rate": 1e-2, "label_noise": 3.0},
               "seconds": time.perf_counter() - started, "versions": versions()}
    lines = ["# Temperature-aware models on a synthetic T-dependent PMF (CPU, 2026-11-28)", "",
             f"Pair PMF u(r, T) = e(r) - T s(r) (tests/test_thermal.py); 64 beads, {N_FRAMES} frames at each of "
             f"{', '.join(f'{t:g}' for t in TRAIN_T)} K, label noise 3 kJ/mol/nm; tiny preset, {EPOCHS} epochs. "
             f"Force RMSE (kJ/mol/nm) against the exact PMF forces on held-out frames, mean +- standard error "
             f"over {len(SEEDS)} seeds. Typical |force| component: ~45 kJ/mol/nm; the 250 K and 350 K PMF forces "
             "differ by ~10 kJ/mol/nm RMS.", "",
             "| model | " + " | ".join(f"{t:g} K" for t in EVAL_T) + " |",
             "|---" * (len(EVAL_T) + 1) + "|"]
    for name in MODELS:
        cells = [f"{summary[name][f'{t:g}']['mean']:.1f} +- {summary[name][f'{t:g}']['se']:.1f}" for t in EVAL_T]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Run time {results['seconds'] / 60:.0f} min on 2 shared CPU cores."]
    write_json_atomic(HERE / "synthetic.json", results)
    write_text_atomic(HERE / "synthetic.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "thermal-synthetic-work"))
