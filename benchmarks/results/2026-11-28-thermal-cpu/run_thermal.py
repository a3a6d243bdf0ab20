"""Temperature-aware vs single-temperature CG methanol on the CPU: force-matching error at held-out
temperatures.

All-atom methanol (64 molecules, OPLS-AA, NVT at 0.787 g/cm^3) at 250, 300, 350 and 400 K, mapped to
one bead per molecule. Models (tiny HIP-NN-TS preset, the same epochs for all):

* ``T-aware``   U(R, T) = E(R) - T S(R) trained on 250 K + 350 K (``--temperature-aware``);
* ``T-input``   the same data, with T given to the network as an input feature (``temperature_form = "input"``);
* ``pooled``    a plain model trained on the same 250 K + 350 K frames (it must average the two PMFs);
* ``single-350`` a plain model trained on 350 K only;
* ``oracle-T``  a plain model trained on the first half of the frames at the held-out temperature T
  (300 and 400 K): what force matching reaches with data at that temperature;
* ``T-aware/seed1``, ``pooled/seed1``: the T-aware and pooled models trained again with another seed
  (initial weights and frame split), scored at the held-out temperatures only (their test splits at
  250 and 350 K differ): how much of a difference between models is the training run's own scatter.

Each model is scored on frames it never saw: the second half of the 300 K and 400 K data, and the
test split (10 %) of the 250 K and 350 K data. The metric is the force RMSE against the mapped
forces (kJ/mol/nm); it is dominated by the mapped-force noise, so the table also gives each model's
excess over the oracle, with standard errors from blocks of consecutive frames (paired: the same
frames for every model).

Run from the repository root (about half an hour on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-thermal-cpu/run_thermal.py WORKDIR

Every stage reuses what WORKDIR already holds. Writes thermal.json and thermal.md next to this file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAIN_T = (250.0, 350.0)
HELD_OUT_T = (300.0, 400.0)
N_MOLECULES = 64
AA = dict(species="methanol", n_molecules=N_MOLECULES, density=0.787, cutoff=0.75, equilibration=5.0,
          production=20.0, frame_interval=0.2, platform="CPU")
EPOCHS = 25
N_BLOCKS = 5


def _reference(work: Path, temperature: float) -> Path:
    from openmm_cgnn.mapping import map_reference
    from openmm_cgnn.reference import ReferenceConfig, run_reference

    aa, cg = work / f"aa-{temperature:g}K.npz", work / f"cg-{temperature:g}K.npz"
    if not cg.exists():
        if not aa.exists():
            t0 = time.perf_counter()
            run_reference(ReferenceConfig(temperature=temperature, seed=int(temperature), **AA), aa, progress=False)
            print(f"[thermal] all-atom {temperature:g} K in {time.perf_counter() - t0:.0f} s", flush=True)
        map_reference(aa, cg)
    return cg


def _config(temperature_aware: bool, form: str = "split", seed: int = 0):
    from openmm_cgnn.training import TrainConfig

    cfg = TrainConfig.from_preset("tiny")
    cfg.max_epochs = EPOCHS
    cfg.termination_patience = EPOCHS
    cfg.fit_volume = False
    cfg.temperature_aware = temperature_aware
    cfg.temperature_form = form
    cfg.seed = seed
    return cfg


def _train(work: Path, name: str, data: list[Path], temperature_aware: bool, form: str = "split",
           seed: int = 0) -> Path:
    from openmm_cgnn.training import train

    out = work / name
    if not (out / "metadata.json").exists():
        t0 = time.perf_counter()
        train([str(p) for p in data], _config(temperature_aware, form, seed), out, overwrite=True, verbose=False)
        print(f"[thermal] trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _block_rmse(pred: np.ndarray, ref: np.ndarray, n_blocks: int) -> np.ndarray:
    """(n_blocks,) mean squared error per block of consecutive frames."""
    sq = np.mean((pred - ref) ** 2, axis=(1, 2))
    return np.array([b.mean() for b in np.array_split(sq, n_blocks)])


def main(work: Path) -> None:
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.training import load_trained, predict_hippynn

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    cg = {t: _reference(work, t) for t in TRAIN_T + HELD_OUT_T}
    sets = {t: CGDataset.load(p) for t, p in cg.items()}
    halves = {}
    for t in HELD_OUT_T:  # the oracle trains on the first half, everybody is scored on the second
        n = sets[t].n_frames
        first = work / f"cg-{t:g}K-first-half.npz"
        if not first.exists():
            sets[t].subset(slice(0, n // 2)).save(first)
        halves[t] = np.arange(n // 2, n)
    models = {
        "T-aware": _train(work, "t-aware", [cg[t] for t in TRAIN_T], True),
        "T-input": _train(work, "t-input", [cg[t] for t in TRAIN_T], True, form="input"),
        "pooled": _train(work, "pooled", [cg[t] for t in TRAIN_T], False),
        "single-350": _train(work, "single-350", [cg[350.0]], False),
    }
    models["T-aware/seed1"] = _train(work, "t-aware-seed1", [cg[t] for t in TRAIN_T], True, seed=1)
    models["pooled/seed1"] = _train(work, "pooled-seed1", [cg[t] for t in TRAIN_T], False, seed=1)
    for t in HELD_OUT_T:
        models[f"oracle-{t:g}"] = _train(work, f"oracle-{t:g}", [work / f"cg-{t:g}K-first-half.npz"], False)
    # scoring frames: held-out halves, and the test split of the training temperatures (identical for
    # T-aware and pooled: same seed and data-set order)
    meta = json.loads((models["T-aware"] / "metadata.json").read_text())
    frames = dict(halves)
    for entry, t in zip(meta["datasets"], TRAIN_T):
        frames[t] = np.asarray(entry["splits"]["test"])
    results: dict = {"temperatures": {}, "models": {k: str(v.name) for k, v in models.items()}}
    for t in sorted(frames):
        ds, idx = sets[t], frames[t]
        per_model = {}
        blocks = {}
        for name, mdir in models.items():
            if name.endswith("/seed1") and t in TRAIN_T:
                continue  # its frame split differs: these frames may be training frames of that model
            loaded = load_trained(mdir)
            kwargs = {"temperature": t} if loaded.thermal is not None else {}
            _, f = predict_hippynn(loaded, ds.positions[idx], ds.boxes[idx], ds.bead_types, **kwargs)
            blocks[name] = _block_rmse(f, ds.forces[idx], min(N_BLOCKS, len(idx)))
            per_model[name] = {"rmse": float(np.sqrt(np.mean((f - ds.forces[idx]) ** 2)))}
        oracle = f"oracle-{t:g}" if f"oracle-{t:g}" in models else None
        for name in list(per_model):
            if name.startswith("oracle") and name != oracle:
                del per_model[name]
                continue
            k = len(blocks[name])
            per_model[name]["mse"] = float(np.mean(blocks[name]))
            per_model[name]["rmse_se"] = float(np.std(np.sqrt(blocks[name]), ddof=1) / np.sqrt(k)) if k > 1 else None
            # paired differences of the mean squared error per block (the same frames for every model)
            for ref_name in ("T-aware",) + ((oracle,) if oracle else ()):
                d = blocks[name] - blocks[ref_name]
                per_model[name][f"excess_mse_over_{ref_name}"] = float(np.mean(d))
                per_model[name][f"excess_mse_over_{ref_name}_se"] = (float(np.std(d, ddof=1) / np.sqrt(k))
                                                                     if k > 1 else None)
        results["temperatures"][f"{t:g}"] = {"role": "training" if t in TRAIN_T else "held-out",
                                            "n_frames": int(len(idx)), "n_blocks": int(min(N_BLOCKS, len(idx))),
                                            "oracle": oracle, "models": per_model}
    results["settings"] = {"all_atom": AA, "train_temperatures_K": TRAIN_T, "held_out_temperatures_K": HELD_OUT_T,
                           "train_preset": "tiny", "epochs": EPOCHS, "blocks": N_BLOCKS}
    results["seconds"] = time.perf_counter() - started
    from openmm_cgnn.files import versions, write_json_atomic, write_text_atomic

    results["versions"] = versions()
    write_json_atomic(HERE / "thermal.json", results)
    write_text_atomic(HERE / "thermal.md", _markdown(results))
    print(_markdown(results))


def _markdown(results: dict) -> str:
    lines = ["# Temperature-aware CG methanol: force-matching error at held-out temperatures (CPU, 2026-11-28)", "",
             f"{N_MOLECULES} methanol, NVT 0.787 g/cm^3, all-atom {AA['equilibration']:g} + {AA['production']:g} ps "
             f"per temperature (a frame every {AA['frame_interval']:g} ps); tiny HIP-NN-TS preset, {EPOCHS} epochs "
             "for every model; 2 shared CPU cores.", "",
             "Force RMSE (kJ/mol/nm) against the mapped forces on frames no model saw (+- standard error over "
             f"{N_BLOCKS} blocks of consecutive frames). The RMSE is dominated by the noise of the mapped forces, "
             "so the last two columns give paired differences of the mean squared error ((kJ/mol/nm)^2, the "
             "same frames for every model, +- block standard error): to the T-aware model, and to the oracle "
             "trained on the other half of the frames at that temperature.", "",
             "| T (K) | role | model | force RMSE | MSE - MSE(T-aware) | MSE - MSE(oracle) |",
             "|---|---|---|---|---|---|"]

    def diff(m: dict, ref: str | None) -> str:
        if ref is None or f"excess_mse_over_{ref}" not in m:
            return "—"
        ex, se = m[f"excess_mse_over_{ref}"], m[f"excess_mse_over_{ref}_se"]
        if ex == 0.0 and (se or 0.0) == 0.0:
            return "(reference)"
        return f"{ex:+.0f} +- {se:.0f}" if se is not None else f"{ex:+.0f}"

    for t, entry in results["temperatures"].items():
        for name, m in entry["models"].items():
            lines.append(f"| {t} | {entry['role']} | {name} | {m['rmse']:.2f} +- {m['rmse_se']:.2f} | "
                         f"{diff(m, 'T-aware')} | {diff(m, entry['oracle'])} |")
    lines += ["", f"Run time of the last invocation {results['seconds'] / 60:.0f} min (it reuses what earlier ones "
                  "trained; all together: 4 all-atom runs of about 70 s, models of 80 to 400 s each)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "thermal-work"))
