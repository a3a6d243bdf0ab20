"""Shared fixtures: a tiny but real all-atom methanol reference and its mapped CG data set."""

from __future__ import annotations

import pytest

from openmm_cgnn.reference import ReferenceConfig, run_reference

# 64 methanol molecules fill a 1.63 nm box at 0.787 g/cm^3, so the cutoff must stay below 0.81 nm.
TINY_REFERENCE = dict(species="methanol", n_molecules=64, temperature=300.0, cutoff=0.75,
                      equilibration=2.0, production=2.0, frame_interval=0.05, platform="CPU",
                      checkpoint_every=10, seed=7)


def tiny_reference_config(**overrides) -> ReferenceConfig:
    return ReferenceConfig(**{**TINY_REFERENCE, **overrides})


@pytest.fixture(scope="session")
def methanol_reference(tmp_path_factory):
    """Path of a tiny all-atom methanol reference file (64 molecules, 40 frames, CPU)."""
    out = tmp_path_factory.mktemp("reference") / "methanol-aa.npz"
    return run_reference(tiny_reference_config(), out, progress=False)


@pytest.fixture(scope="session")
def methanol_dataset(methanol_reference, tmp_path_factory):
    """Path of the tiny CG methanol data set (64 beads, one per molecule, 40 frames)."""
    from openmm_cgnn.mapping import map_reference

    out = tmp_path_factory.mktemp("dataset") / "methanol-cg.npz"
    map_reference(methanol_reference, out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(methanol_dataset, tmp_path_factory):
    """A HIP-NN-TS model (tiny preset, one epoch) trained on the tiny methanol data set."""
    from openmm_cgnn.training import TrainConfig, train

    cfg = TrainConfig.from_preset("tiny")
    cfg.max_epochs = 1
    return train([methanol_dataset], cfg, tmp_path_factory.mktemp("model") / "model", verbose=False)


@pytest.fixture(scope="session")
def tiny_model_pt(tiny_model_dir, tmp_path_factory):
    """The tiny model exported in float64 (for exact physics checks)."""
    from openmm_cgnn.export import export_model

    return export_model(tiny_model_dir, tmp_path_factory.mktemp("export") / "model-f64.pt", dtype="float64")
