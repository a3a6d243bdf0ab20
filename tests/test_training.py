"""Training: a tiny hippynn run writes a complete model directory; configuration round trip; data set checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.errors import OutputExistsError
from openmm_cgnn.testing import make_synthetic_dataset
from openmm_cgnn.training import (TrainConfig, load_datasets, load_trained, predict_hippynn, read_prior,
                                  split_frames, train)

from .tiny_models import dataset_path_for_tests, tiny_model

MODEL_FILES = ("config.toml", "hippynn_weights.pt", "prior.json", "metrics.json", "metadata.json", "train.log")


@pytest.fixture(scope="module")
def dataset_path(request, tmp_path_factory):
    return dataset_path_for_tests(request, tmp_path_factory)


@pytest.fixture(scope="module")
def model_dir(dataset_path, tmp_path_factory):
    return tiny_model(dataset_path, tmp_path_factory)


def test_tiny_training_writes_every_documented_file(model_dir, dataset_path):
    for name in MODEL_FILES:
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.parent.glob(".*.tmp"))  # no staging leftovers

    meta = json.loads((model_dir / "metadata.json").read_text())
    ds = CGDataset.load(dataset_path)
    assert meta["type_names"] == ds.type_names
    assert meta["units"]["length"] == "nm" and meta["units"]["energy"] == "kJ/mol"
    assert meta["cutoff_nm"] == pytest.approx(max(0.7, meta["prior_cutoff_nm"]))
    assert meta["state_points"] == [ds.metadata["state"]]
    assert "torch" in meta["versions"] and "hippynn" in meta["versions"]
    splits = meta["datasets"][0]["splits"]
    frames = sorted(splits["train"] + splits["valid"] + splits["test"])
    assert frames == list(range(ds.n_frames))  # a partition of the frames
    assert len(splits["test"]) == max(1, round(0.1 * ds.n_frames))

    metrics = json.loads((model_dir / "metrics.json").read_text())
    test = metrics["test"]["all"]
    for key in ("rmse", "mae", "r2"):
        assert math.isfinite(test[key])
    assert 0 < test["mae"] <= test["rmse"]
    assert len(metrics["curve"]) >= 1
    assert all(math.isfinite(row["valid_force_rmse"]) for row in metrics["curve"])
    # residual and total errors are the same numbers: hippynn's own test RMSE matches ours
    assert metrics["hippynn_final"]["test"]["force_rmse"] == pytest.approx(test["rmse"], rel=1e-3)

    prior = read_prior(model_dir)
    assert prior.a > 0 and prior.cutoff > prior.taper > 0

    blob = torch.load(model_dir / "hippynn_weights.pt", weights_only=True)
    assert blob["network_class"] == "HipnnQuad" and blob["type_names"] == ds.type_names


def test_metrics_are_those_of_the_total_model(model_dir, dataset_path):
    """metrics.json's test RMSE = predict_hippynn (network + prior) against the mapped forces."""
    ds = CGDataset.load(dataset_path)
    meta = json.loads((model_dir / "metadata.json").read_text())
    test = np.array(meta["datasets"][0]["splits"]["test"])
    energies, forces = predict_hippynn(model_dir, ds.positions[test], ds.boxes[test], ds.bead_types)
    assert energies.shape == (len(test),) and forces.shape == (len(test), ds.n_beads, 3)
    rmse = float(np.sqrt(np.mean((forces - ds.forces[test]) ** 2)))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert rmse == pytest.approx(metrics["test"]["all"]["rmse"], rel=1e-9)


def test_load_trained_rebuilds_hippynn_modules(model_dir):
    loaded = load_trained(model_dir)
    assert type(loaded.network).__name__ == "HipnnQuad"
    assert loaded.config == TrainConfig.from_toml((model_dir / "config.toml").read_text())
    assert all(p.dtype == torch.float64 for p in loaded.network.parameters())
    assert loaded.cutoff_nm == pytest.approx(0.7)


def test_existing_output_is_refused(model_dir, dataset_path):
    with pytest.raises(OutputExistsError, match="already exists"):
        train([dataset_path], TrainConfig.from_preset("tiny"), model_dir)


@pytest.mark.parametrize("preset", ["paper", "tiny"])
def test_config_round_trips_through_toml(preset, tmp_path):
    config = TrainConfig.from_preset(preset)
    assert TrainConfig.from_toml(config.to_toml()) == config
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config


def test_paper_preset_matches_the_paper():
    c = TrainConfig.from_preset("paper")
    assert (c.tensor_order, c.n_features, c.n_sensitivities, c.sensitivity_type) == (2, 128, 20, "inverse")
    assert (c.dist_soft_min, c.dist_soft_max, c.dist_hard_max) == (2.0, 13.0, 15.0)
    assert (c.n_interaction_layers, c.n_atom_layers, c.resnet) == (1, 3, True)
    assert (c.learning_rate, c.batch_size, c.max_batch_size, c.plateau_patience) == (1e-3, 1, 64, 10)
    assert (c.max_epochs, c.termination_patience, c.valid_fraction, c.test_fraction) == (200, 20, 0.1, 0.1)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_toml("[train]\nn_features = 8\nlearning_rat = 0.1\n")
    with pytest.raises(ValueError, match="tensor_order"):
        TrainConfig(tensor_order=3)
    assert TrainConfig.from_toml("[train]\nlearning_rate = 1\n").learning_rate == 1.0


def test_splits_are_seeded_and_disjoint():
    a = split_frames(40, 0.1, 0.1, seed=3)
    b = split_frames(40, 0.1, 0.1, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert len(a["test"]) == 4 and len(a["valid"]) == 4 and len(a["train"]) == 32
    assert len(set(a["test"]) | set(a["valid"]) | set(a["train"])) == 40
    assert not np.array_equal(split_frames(40, 0.1, 0.1, seed=3, index=1)["test"], a["test"])


def test_datasets_with_different_bead_types_are_refused(tmp_path):
    a = tmp_path / "a.npz"
    b = tmp_path / "b.npz"
    make_synthetic_dataset(a, n_frames=4, type_names=("MEOH",))
    make_synthetic_dataset(b, n_frames=4, type_names=("SOL",))
    with pytest.raises(ValueError, match="share bead type names"):
        load_datasets([a, b])
    with pytest.raises(ValueError, match="share bead type names"):
        train([a, b], TrainConfig.from_preset("tiny"), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_box_smaller_than_twice_the_cutoff_is_refused(tmp_path):
    path = tmp_path / "small.npz"
    make_synthetic_dataset(path, n_frames=4, n_side=3, box_nm=1.2)
    with pytest.raises(ValueError, match="twice"):
        train([path], TrainConfig.from_preset("tiny"), tmp_path / "model")


def test_training_on_two_datasets_at_once(dataset_path, tmp_path):
    """A second state point (same bead type, other bead count and box) trains together with the first."""
    ds = CGDataset.load(dataset_path)
    other = tmp_path / "other.npz"
    make_synthetic_dataset(other, n_frames=10, n_side=5, box_nm=2.0, type_names=tuple(ds.type_names),
                           temperature_K=350.0, seed=5)
    config = TrainConfig.from_preset("tiny")
    config.max_epochs = 1
    out = train([dataset_path, other], config, tmp_path / "model", verbose=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert [d["n_beads"] for d in meta["datasets"]] == [ds.n_beads, 125]
    assert meta["state_points"][1]["temperature_K"] == 350.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_dataset"]) == {dataset_path.name, "other.npz"}
    assert math.isfinite(metrics["test"]["all"]["rmse"])
    # overwrite=True replaces the directory
    again = train([other], config, out, overwrite=True, verbose=False)
    assert json.loads((again / "metadata.json").read_text())["datasets"][0]["name"] == "other.npz"
