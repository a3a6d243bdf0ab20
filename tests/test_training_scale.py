"""Training at scale: cached pairs = per-batch pair search, device choice, DDP with two CPU processes,
distillation of a student from a teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.errors import CGNNError
from openmm_cgnn.pair_cache import find_frame_pairs, precompute_pair_arrays
from openmm_cgnn.training import TrainConfig, TrainingStep, predict_hippynn, resolve_device, train

from openmm_cgnn.testing import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


# -- cached pairs ------------------------------------------------------------------------------------
def test_cached_pairs_are_every_pair_within_the_cutoff_once():
    rng = np.random.default_rng(1)
    box = np.diag([2.0, 2.2, 2.4])
    pos = rng.uniform(0, 1, (60, 3)) @ box
    i, j, shift = find_frame_pairs(pos, box, 0.7)
    vec = pos[i] - pos[j] + shift @ box
    assert np.all(np.linalg.norm(vec, axis=1) < 0.7)
    # brute force over the 27 images (the cutoff is below half the box)
    images = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T @ box
    d = np.linalg.norm(pos[:, None, None, :] - pos[None, :, None, :] + images[None, None], axis=-1)
    n_brute = (np.sum(d < 0.7) - len(pos)) // 2  # minus self pairs, each pair once
    assert len(i) == n_brute
    assert len({(min(a, b), max(a, b)) for a, b in zip(i, j)}) == n_brute


def test_pair_arrays_pad_frames_and_skip_padding_beads():
    rng = np.random.default_rng(2)
    box = np.broadcast_to(np.eye(3) * 2.0, (2, 3, 3))
    pos = rng.uniform(0, 2.0, (2, 30, 3))
    arrays = precompute_pair_arrays(pos, box, n_real=[30, 20], cutoff=0.6)
    assert arrays["pair_i"].dtype == np.int32 and arrays["pair_shift"].dtype == np.int8
    n0 = int((arrays["pair_i"][0] >= 0).sum())
    n1 = int((arrays["pair_i"][1] >= 0).sum())
    assert n0 == len(find_frame_pairs(pos[0], box[0], 0.6)[0])
    assert n1 == len(find_frame_pairs(pos[1, :20], box[1], 0.6)[0])
    assert arrays["pair_i"][1].max() < 20 and arrays["pair_j"][1].max() < 20


@pytest.mark.parametrize("pair_finder", ["kdtree", "periodic"])
def test_cached_pairs_give_the_same_loss_and_gradients_as_the_pair_finder(pair_finder):
    """One batch of three frames: the loss and every parameter gradient with pairs from the cache equal
    those with hippynn's own per-batch pair search (float64, same initial weights)."""
    ds = make_synthetic_dataset(None, n_frames=3, n_side=5, box_nm=2.0, seed=3)
    results = []
    for cache in (False, True):
        config = TrainConfig.from_preset("tiny")
        config.pair_finder = pair_finder
        config.cache_pairs = cache
        torch.manual_seed(0)
        results.append(TrainingStep(config, ds, device="cpu", dtype=torch.float64).gradients())
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-12)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-9, atol=1e-12, msg=name)


def test_training_step_learns_with_cached_pairs():
    ds = make_synthetic_dataset(None, n_frames=2, n_side=5, box_nm=2.0, seed=4, noise=0.0)
    torch.manual_seed(0)
    step = TrainingStep(TrainConfig.from_preset("tiny"), ds, device="cpu")
    losses = [step.step() for _ in range(15)]
    assert losses[-1] < losses[0]


# -- device ------------------------------------------------------------------------------------------
def test_auto_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CGNNError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(CGNNError, match="does not exist"):
        resolve_device("cuda:3")
    assert resolve_device("cpu") == torch.device("cpu")


def test_train_on_a_missing_gpu_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from openmm_cgnn.cli import main as cli_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "data.npz"
    make_synthetic_dataset(data, n_frames=4)
    assert cli_main(["train", "--data", str(data), "--device", "cuda", "--out", str(tmp_path / "m")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_device_settings_are_checked():
    with pytest.raises(ValueError, match="devices"):
        TrainConfig(devices=0)
    assert TrainConfig.from_toml(TrainConfig(devices=4, num_nodes=2).to_toml()).devices == 4


# -- DDP ---------------------------------------------------------------------------------------------
def _learnable(path, noise, seed):
    """64 beads near a lattice (soft Lennard-Jones forces plus noise): the tiny preset learns it in a few epochs."""
    make_synthetic_dataset(path, n_frames=24, n_side=4, box_nm=1.6, seed=seed, noise=noise, jitter_nm=0.02)
    config = TrainConfig.from_preset("tiny")
    config.learning_rate = 1e-2
    config.max_epochs = config.termination_patience = 5
    return config


def test_ddp_on_two_cpu_processes_converges_like_one_process(tmp_path):
    """Two gloo processes (batch 2 each, 4 frames per step) and one process (batch 4) train the same tiny
    model on the same frames: DDP learns (validation error falls) and ends at the same held-out error."""
    pytest.importorskip("pytorch_lightning")
    data = tmp_path / "data.npz"
    config = _learnable(data, noise=5.0, seed=6)
    single_config = TrainConfig.from_toml(config.to_toml())
    single_config.batch_size, single_config.max_batch_size = 4, 16
    single = train([data], single_config, tmp_path / "single", verbose=False)

    (tmp_path / "ddp.toml").write_text(config.to_toml())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "openmm_cgnn.cli", "train", "--data", str(data), "--config", str(tmp_path / "ddp.toml"),
           "--devices", "2", "--device", "cpu", "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("[train] model in") == 1  # only rank 0 reports and writes

    config_ddp = TrainConfig.from_toml((tmp_path / "ddp" / "config.toml").read_text())
    assert (config_ddp.devices, config_ddp.num_nodes) == (2, 1)
    ds = CGDataset.load(data)
    splits = json.loads((tmp_path / "ddp" / "metadata.json").read_text())["datasets"][0]["splits"]
    held_out = np.array(splits["test"] + splits["valid"])

    def rmse(model_dir):
        _, f = predict_hippynn(model_dir, ds.positions[held_out], ds.boxes[held_out], ds.bead_types)
        return float(np.sqrt(np.mean((f - ds.forces[held_out]) ** 2)))

    curve = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["curve"]
    assert len(curve) == 5 and all(np.isfinite(row["valid_force_rmse"]) for row in curve)
    assert min(row["valid_force_rmse"] for row in curve) < 0.7 * curve[0]["valid_force_rmse"]
    r_single, r_ddp = rmse(single), rmse(tmp_path / "ddp")
    print(f"held-out force RMSE: one process {r_single:.4g}, DDP {r_ddp:.4g} kJ/mol/nm")
    assert r_ddp == pytest.approx(r_single, rel=0.3)


# -- distillation ------------------------------------------------------------------------------------
def test_distilled_student_is_closer_to_the_teacher_than_a_student_of_the_mapped_forces(tmp_path):
    """Teacher: a small network fitted to noisy synthetic forces. Two identical tiny students, one trained
    on the teacher's forces, one on the noisy mapped forces of the same frames: on held-out frames the
    distilled one reproduces the teacher's forces more closely."""
    from openmm_cgnn.cli import main as cli_main
    from openmm_cgnn.distill import distillation_info

    data = tmp_path / "data.npz"
    teacher_cfg = _learnable(data, noise=150.0, seed=8)  # noise well above the signal, as in mapped forces
    teacher = train([data], teacher_cfg, tmp_path / "teacher", verbose=False)

    student_cfg = TrainConfig.from_toml(teacher_cfg.to_toml())
    student_cfg.n_features = 6
    student_cfg.seed = 1
    (tmp_path / "student.toml").write_text(student_cfg.to_toml())
    assert cli_main(["distill", "--teacher", str(teacher), "--data", str(data), "--config",
                     str(tmp_path / "student.toml"), "--device", "cpu", "--out", str(tmp_path / "student")]) == 0
    student = tmp_path / "student"
    direct = train([data], student_cfg, tmp_path / "direct", verbose=False)
    assert distillation_info(student)["teacher"] == str(teacher) and distillation_info(direct) is None

    ds = CGDataset.load(data)
    meta = json.loads((student / "metadata.json").read_text())
    held_out = np.array(meta["datasets"][0]["splits"]["test"] + meta["datasets"][0]["splits"]["valid"])
    _, f_teacher = predict_hippynn(teacher, ds.positions[held_out], ds.boxes[held_out], ds.bead_types)

    def rmse_to_teacher(model_dir):
        _, f = predict_hippynn(model_dir, ds.positions[held_out], ds.boxes[held_out], ds.bead_types)
        return float(np.sqrt(np.mean((f - f_teacher) ** 2)))

    distilled, mapped = rmse_to_teacher(student), rmse_to_teacher(direct)
    print(f"RMSE to the teacher on held-out frames: distilled {distilled:.4g}, direct {mapped:.4g} kJ/mol/nm")
    assert distilled < 0.8 * mapped


def test_teacher_labels_keep_the_all_atom_pressures(tmp_path):
    """Distillation replaces the forces (and energies), not the frames' all-atom pressures, so that the
    student's volume term is pressure-matched to the all-atom pressure like any model's."""
    from openmm_cgnn.distill import teacher_labels

    data = tmp_path / "data.npz"
    config = _learnable(data, noise=5.0, seed=3)
    config.max_epochs = 1
    teacher = train([data], config, tmp_path / "teacher", verbose=False)
    ds = CGDataset.load(data)
    ds.pressure = np.linspace(-50.0, 50.0, ds.n_frames)
    labelled = teacher_labels(teacher, ds)
    np.testing.assert_array_equal(labelled.pressure, ds.pressure)
    _, f_teacher = predict_hippynn(teacher, ds.positions, ds.boxes, ds.bead_types)
    np.testing.assert_allclose(labelled.forces, f_teacher, rtol=1e-6, atol=1e-6)
