"""Tiny trained models shared by the tests (one training run per session and settings), on the real tiny
methanol data set when the session has it, else on :func:`openmm_cgnn.testing.make_synthetic_dataset`."""

from __future__ import annotations

from pathlib import Path

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.testing import make_synthetic_dataset

# -- shared, cached tiny training runs (one per session and settings) ------------------------------
_MODELS: dict[tuple, Path] = {}


def dataset_path_for_tests(request, tmp_path_factory) -> Path:
    """The real tiny methanol CG data set (conftest's ``methanol_dataset``) when that fixture exists,
    else a synthetic one written once per session."""
    import pytest

    try:
        return Path(request.getfixturevalue("methanol_dataset"))
    except pytest.FixtureLookupError:
        key = ("synthetic",)
        if key not in _MODELS:
            path = tmp_path_factory.mktemp("synthetic") / "synthetic-cg.npz"
            make_synthetic_dataset(path, n_frames=20)
            _MODELS[key] = path
        return _MODELS[key]


def tiny_model(dataset: Path, tmp_path_factory, n_frames: int | None = None, **overrides) -> Path:
    """A model directory trained with the "tiny" preset (plus ``overrides``) on ``dataset`` (or on its
    first ``n_frames`` frames), cached for the session."""
    from openmm_cgnn.training import TrainConfig, train

    key = (str(dataset), n_frames, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        config = TrainConfig.from_preset("tiny")
        for k, v in overrides.items():
            setattr(config, k, v)
        work = tmp_path_factory.mktemp("model")
        if n_frames is not None:
            subset = work / f"first-{n_frames}-{Path(dataset).name}"
            CGDataset.load(dataset).subset(slice(0, n_frames)).save(subset)
            dataset = subset
        _MODELS[key] = train([dataset], config, work / "model", verbose=False)
    return _MODELS[key]
