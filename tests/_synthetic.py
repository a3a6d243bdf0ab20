"""A small synthetic CG data set for fast tests (fallback when no real mapped data set is at hand).

Beads sit on a jittered simple-cubic lattice in a cubic box; the "mapped" forces come from a
Lennard-Jones-like pair potential plus Gaussian noise, like the noisy labels of force matching.
Units follow the data-set format: nm, kJ/mol, kJ/mol/nm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openmm_cgnn.dataset import CGDataset


def _lj_forces(pos: np.ndarray, box: np.ndarray, sigma: float, eps: float, cutoff: float) -> tuple[float, np.ndarray]:
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=pos, box=box, periodic=True, quantities="ijD")
    r = np.linalg.norm(d, axis=1)
    sr6 = (sigma / r) ** 6
    energy = float(np.sum(4 * eps * (sr6 * sr6 - sr6)))
    fmag = 24 * eps * (2 * sr6 * sr6 - sr6) / r  # -dU/dr, positive = repulsive
    fvec = (fmag / r)[:, None] * d  # force on j along r_j - r_i
    forces = np.zeros_like(pos)
    np.add.at(forces, j, fvec)
    np.add.at(forces, i, -fvec)
    return energy, forces


def make_synthetic_dataset(path: str | Path | None = None, n_frames: int = 20, n_side: int = 4,
                           box_nm: float = 1.6, type_names: tuple[str, ...] = ("MEOH",), seed: int = 0,
                           temperature_K: float = 300.0, jitter_nm: float = 0.04,
                           noise: float = 20.0) -> CGDataset:
    """A CGDataset with ``n_side**3`` beads in a cubic box of ``box_nm`` nm; saved to ``path`` if given.

    With several ``type_names`` the beads alternate between the types.
    """
    rng = np.random.default_rng(seed)
    n = n_side ** 3
    spacing = box_nm / n_side
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), axis=-1).reshape(n, 3)
    lattice = (grid + 0.5) * spacing
    box = np.eye(3) * box_nm
    positions = np.empty((n_frames, n, 3))
    forces = np.empty((n_frames, n, 3))
    energies = np.empty(n_frames)
    for f in range(n_frames):
        pos = lattice + rng.normal(scale=jitter_nm, size=(n, 3))
        pos = np.mod(pos, box_nm)
        e, frc = _lj_forces(pos, box, sigma=0.36, eps=1.5, cutoff=min(0.7, 0.49 * box_nm))
        positions[f] = pos
        forces[f] = frc + rng.normal(scale=noise, size=frc.shape)
        energies[f] = e
    bead_types = np.arange(n) % len(type_names)
    masses = np.full(n, 32.042)
    meta = {
        "state": {"temperature_K": temperature_K, "pressure_bar": None,
                  "density_g_cm3": float(masses.sum() / 6.02214076e23 / (box_nm ** 3 * 1e-21))},
        "mapping": {"kind": "synthetic"},
        "source": {"kind": "synthetic Lennard-Jones lattice", "seed": seed},
    }
    ds = CGDataset(positions, forces, np.broadcast_to(box, (n_frames, 3, 3)).copy(), energies, bead_types,
                   list(type_names), masses, np.arange(n), meta)
    if path is not None:
        ds.save(path)
    return ds


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
        config = TrainConfig.preset("tiny")
        for k, v in overrides.items():
            setattr(config, k, v)
        work = tmp_path_factory.mktemp("model")
        if n_frames is not None:
            subset = work / f"first-{n_frames}-{Path(dataset).name}"
            CGDataset.load(dataset).subset(slice(0, n_frames)).save(subset)
            dataset = subset
        _MODELS[key] = train([dataset], config, work / "model", verbose=False)
    return _MODELS[key]
