"""Estimate the run time of `openmm-cgnn study transfer --preset medium` from measured pieces.

Each kind of piece is run briefly at the preset's size (216 molecules) and its rate read from the run's own
record: the all-atom reference's and the CG run's ns/day (production steps only), the training's seconds
per epoch (metrics.json), plus the fixed cost of each run (wall time minus the timed part). The study's
total is the sum over its pieces at their real lengths, run one after the other; a local Dask cluster of
two workers can overlap them. Writes estimate.json and estimate.md next to this file. From the
repository root:

    OMP_NUM_THREADS=1 HIPPYNN_USE_CUSTOM_KERNELS=False python benchmarks/results/2026-11-28-study-medium-estimate/estimate.py
"""
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HIPPYNN_USE_CUSTOM_KERNELS", "False")
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from openmm_cgnn.baselines import fit_pair_force_matching  # noqa: E402
from openmm_cgnn.dataset import CGDataset  # noqa: E402
from openmm_cgnn.export import export_model  # noqa: E402
from openmm_cgnn.harness import analysis_piece  # noqa: E402
from openmm_cgnn.mapping import map_reference  # noqa: E402
from openmm_cgnn.reference import ReferenceConfig, run_reference  # noqa: E402
from openmm_cgnn.simulate import run_cg_simulation  # noqa: E402
from openmm_cgnn.statepoints import parse_state_point  # noqa: E402
from openmm_cgnn.study import StudyConfig, _auto_aa_cutoff, _harness_config, _training_labels  # noqa: E402
from openmm_cgnn.training import TrainConfig, train  # noqa: E402

HERE = Path(__file__).parent
cfg = StudyConfig.from_preset(sys.argv[1] if len(sys.argv) > 1 else "medium")
hc = _harness_config(cfg)
work = Path(tempfile.mkdtemp(prefix="study-estimate-"))
out: dict = {"preset": cfg.preset, "n_molecules": cfg.n_molecules, "measured": {},
             "note": "measured on a shared 2-core CPU with other jobs running (OMP_NUM_THREADS=1, one torch thread); "
                     "an extrapolation, not a run of the study"}


def s_per_ps(ns_per_day: float) -> float:
    return 86400.0 / (ns_per_day * 1000.0)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# 1. all-atom reference (300 K, reference density): 0.2 ps equilibration + 3 ps, a frame every 0.1 ps
sp = parse_state_point("300K:0.787g/cm3")
cut = hc.reference_cutoff or _auto_aa_cutoff(cfg, sp)
rc = ReferenceConfig(species=cfg.species, n_molecules=cfg.n_molecules, temperature=300.0, density=0.787, cutoff=cut,
                     timestep=hc.reference.timestep, equilibration=0.2, production=3.0, frame_interval=0.1,
                     platform="CPU", seed=1)
wall = timed(lambda: run_reference(rc, work / "aa.npz", progress=False))
with np.load(work / "aa.npz") as z:
    rate = s_per_ps(json.loads(str(z["metadata_json"]))["ns_per_day"])
out["measured"]["aa"] = {"s_per_ps": rate, "fixed_s": max(wall - 3.2 * rate, 0.0), "wall_s": wall, "cutoff_nm": cut}
print("all-atom", out["measured"]["aa"], flush=True)
map_reference(work / "aa.npz", work / "cg.npz")

# 2. training: the train preset's l=2 network (the dearest of l = 0, 1, 2) on the 30 mapped frames above,
#    3 epochs at the preset's starting batch size (later epochs, with larger batches, are cheaper: an upper
#    bound)
frames = CGDataset.load(work / "cg.npz").n_frames
tc = TrainConfig.from_preset(cfg.train_preset)
tc.max_epochs, tc.termination_patience, tc.fit_volume = 3, 3, False
wall = timed(lambda: train([work / "cg.npz"], tc, work / "model", verbose=False))
curve = [c["seconds"] for c in json.loads((work / "model" / "metrics.json").read_text())["curve"]]
per_epoch = statistics.median(np.diff([0.0] + curve))
out["measured"]["training"] = {"frames": frames, "beads": cfg.n_molecules, "s_per_epoch": float(per_epoch),
                               "s_per_epoch_per_frame": float(per_epoch) / frames, "fixed_s": max(wall - curve[-1], 0.0)}
print("training", out["measured"]["training"], flush=True)
model_pt = export_model(work / "model", work / "model.pt", dtype="float32")

# 3. CG runs (2 ps at the preset's frame interval) of that network and of a pair baseline, from the mapped
#    all-atom frame; the temperature-aware model has one more read-out on the same network: taken as equal
pair_json = fit_pair_force_matching([CGDataset.load(work / "cg.npz")], cutoff=0.9, fit_volume=False).save(
    work / "pair.json")
for name, model in (("cg_gnn", model_pt), ("cg_pair", pair_json)):
    c = replace(hc.cg, model=str(model), temperature=300.0, start_dataset=str(work / "cg.npz"), start_frame=-1,
                equilibration=0.0, production=2.0, platform="CPU", torch_threads=1, seed=3)
    wall = timed(lambda: run_cg_simulation(c, work / name, progress=False))
    rate = s_per_ps(json.loads((work / name / "simulation.json").read_text())["ns_per_day"])
    out["measured"][name] = {"s_per_ps": rate, "fixed_s": max(wall - 2.0 * rate, 0.0), "wall_s": wall}
    print(name, out["measured"][name], flush=True)

# 4. analysis of one state point: the 30 all-atom frames against a 1 ps CG run with 20 frames; scaled
#    linearly in frames below
c = replace(hc.cg, model=str(model_pt), temperature=300.0, start_dataset=str(work / "cg.npz"), start_frame=-1,
            equilibration=0.0, production=1.0, frame_interval=0.05, platform="CPU", torch_threads=1, seed=4)
run_cg_simulation(c, work / "cg_frames", progress=False)
an_frames = CGDataset.load(work / "cg.npz").n_frames + 20
an_s = timed(lambda: analysis_piece(sp, hc, work / "cg.npz", work / "cg_frames"))
out["measured"]["analysis"] = {"seconds": an_s, "frames_ref_plus_cg": an_frames}
print("analysis", out["measured"]["analysis"], flush=True)

# 5. the study: its pieces at their real lengths, one after the other
m = out["measured"]
ref, cg = hc.reference, hc.cg
labels = _training_labels(cfg)
n_aa = len(labels) + len([s for s in cfg.eval_states if s not in labels])
aa_ps = ref.equilibration + ref.production
ref_frames = ref.production / ref.frame_interval
single, multi = len(cfg.variants), int(cfg.multi_variant) + int(cfg.thermal_variant)
n_gnn, n_models = single + multi, single + multi + int(cfg.pair_baseline)
full_tc = TrainConfig.from_preset(cfg.train_preset)
epochs = cfg.max_epochs or full_tc.max_epochs
data_sets = single + 2 * multi                     # the two-temperature models train on two data sets
frames_per_set = ref_frames * (1 - full_tc.test_fraction)
train_s = epochs * m["training"]["s_per_epoch_per_frame"] * frames_per_set * data_sets + n_gnn * m["training"]["fixed_s"]
vol_ps = full_tc.volume_nvt_ps + full_tc.volume_nvt_equilibration_ps if full_tc.volume_source == "cg-nvt" else 0.0
volume_s = data_sets * (vol_ps * m["cg_gnn"]["s_per_ps"] + m["cg_gnn"]["fixed_s"]) if vol_ps else 0.0
cg_ps = cg.equilibration + cg.production
n_eval = len(cfg.eval_states)
cg_s = n_eval * (n_gnn * (cg_ps * m["cg_gnn"]["s_per_ps"] + m["cg_gnn"]["fixed_s"])
                 + int(cfg.pair_baseline) * (cg_ps * m["cg_pair"]["s_per_ps"] + m["cg_pair"]["fixed_s"]))
cg_frames = cg.production / cg.frame_interval
analysis_s = n_eval * n_models * m["analysis"]["seconds"] * (ref_frames + cg_frames) / an_frames
aa_s = n_aa * (aa_ps * m["aa"]["s_per_ps"] + m["aa"]["fixed_s"])
parts = {"all-atom references": aa_s, "training": train_s, "volume-term CG runs": volume_s, "CG runs": cg_s,
         "analysis": analysis_s}
out["counts"] = {"all_atom_runs": n_aa, "all_atom_ps_each": aa_ps, "gnn_models": n_gnn, "models": n_models,
                 "eval_states": n_eval, "cg_runs": n_eval * n_models, "cg_ps_each": cg_ps, "max_epochs": epochs,
                 "training_frames_per_data_set": frames_per_set}
out["estimate_hours"] = {k: v / 3600 for k, v in parts.items()}
out["estimate_hours"]["total"] = sum(parts.values()) / 3600
(HERE / "estimate.json").write_text(json.dumps(out, indent=2) + "\n")
desc = {"all-atom references": f"{m['aa']['s_per_ps']:.2f} s/ps + {m['aa']['fixed_s']:.0f} s set-up; {n_aa} runs "
                               f"x {aa_ps:g} ps",
        "training": f"{m['training']['s_per_epoch_per_frame'] * 1000:.0f} ms per frame and epoch at batch size "
                    f"{tc.batch_size}; {n_gnn} networks, {data_sets} data sets of {frames_per_set:.0f} frames, "
                    f"up to {epochs} epochs",
        "volume-term CG runs": f"{vol_ps:g} ps per data set ({full_tc.volume_source})",
        "CG runs": f"GNN {m['cg_gnn']['s_per_ps']:.2f} s/ps, pair {m['cg_pair']['s_per_ps']:.2f} s/ps; "
                   f"{n_eval * n_models} runs x {cg_ps:g} ps",
        "analysis": f"{m['analysis']['seconds']:.1f} s for {an_frames} frames; {n_eval * n_models} state points "
                    f"x {ref_frames + cg_frames:.0f} frames"}
rows = ["| piece | measured rate; count | hours |", "| --- | --- | --- |"]
rows += [f"| {k} | {desc[k]} | {v / 3600:.2f} |" for k, v in parts.items()]
rows.append(f"| **total, one piece after the other** | | **{out['estimate_hours']['total']:.1f}** |")
(HERE / "estimate.md").write_text(
    f"# Run time of `study transfer --preset {cfg.preset}`, estimated from measured pieces\n\n"
    f"{cfg.n_molecules} molecules; {out['note']}. Made by `estimate.py` in this folder.\n\n" + "\n".join(rows) + "\n")
print(json.dumps(out["estimate_hours"], indent=1))
