"""Synthetic CG data sets for tests, examples and benchmarks: no all-atom run needed.

Beads sit on a lattice; their "mapped" forces come from a Lennard-Jones pair potential plus Gaussian
noise, like the noisy labels of force matching. Useful wherever a data set of the right shape is
needed and its physics is not the point (speed does not depend on the weights, a loss must go down
on any data). Units follow the data-set format: nm, kJ/mol, kJ/mol/nm, amu.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .dataset import CGDataset
from .units import density_g_cm3

__all__ = ["lennard_jones", "lennard_jones_dataset", "make_synthetic_dataset"]


def lennard_jones(positions: np.ndarray, box: np.ndarray, sigma: float, epsilon: float,
                  cutoff: float) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and forces (N, 3) kJ/mol/nm of a truncated (not shifted) Lennard-Jones pair
    potential ``4 epsilon ((sigma/r)^12 - (sigma/r)^6)`` for ``r < cutoff`` in a periodic box.

    :param positions: (N, 3) nm.  :param box: (3, 3) nm, box vectors as rows.
    :param sigma: nm.  :param epsilon: kJ/mol.  :param cutoff: nm, at most half the box width.
    """
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=positions, box=box, periodic=True, quantities="ijD")
    r = np.linalg.norm(d, axis=1)
    sr6 = (sigma / r) ** 6
    energy = float(np.sum(4 * epsilon * (sr6 * sr6 - sr6)))
    fmag = 24 * epsilon * (2 * sr6 * sr6 - sr6) / r  # -dU/dr, positive = repulsive
    fvec = (fmag / r)[:, None] * d  # force on j along r_j - r_i
    forces = np.zeros_like(positions)
    np.add.at(forces, j, fvec)
    np.add.at(forces, i, -fvec)
    return energy, forces


def lennard_jones_dataset(frame_positions: Callable[[int], np.ndarray], n_frames: int, box_nm: float,
                          rng: np.random.Generator, sigma: float, epsilon: float, cutoff: float, noise: float,
                          type_names: Sequence[str], bead_mass: float, temperature_K: float,
                          source: str, seed: int) -> CGDataset:
    """A CGDataset of ``n_frames`` frames in a cubic box of ``box_nm`` nm: frame ``f`` has the positions
    ``frame_positions(f)`` (N, 3) nm, the Lennard-Jones forces of :func:`lennard_jones` plus Gaussian
    noise of ``noise`` kJ/mol/nm (drawn from ``rng`` after each frame's positions) and its energy.

    The beads take the ``type_names`` in turn and have ``bead_mass`` amu each; the metadata record the
    state (``temperature_K``, the density), ``source`` and ``seed``.
    """
    box = np.eye(3) * box_nm
    positions, forces, energies = [], [], np.empty(n_frames)
    for f in range(n_frames):
        pos = frame_positions(f)
        energies[f], frc = lennard_jones(pos, box, sigma, epsilon, cutoff)
        positions.append(pos)
        forces.append(frc + rng.normal(scale=noise, size=frc.shape))
    n = len(positions[0])
    masses = np.full(n, float(bead_mass))
    meta = {
        "state": {"temperature_K": temperature_K, "pressure_bar": None,
                  "density_g_cm3": density_g_cm3(float(masses.sum()), box_nm ** 3)},
        "mapping": {"kind": "synthetic"},
        "source": {"kind": source, "seed": seed},
    }
    return CGDataset(np.array(positions), np.array(forces), np.broadcast_to(box, (n_frames, 3, 3)).copy(), energies,
                     np.arange(n) % len(type_names), list(type_names), masses, np.arange(n), meta)


def make_synthetic_dataset(path: str | Path | None = None, n_frames: int = 20, n_side: int = 4,
                           box_nm: float = 1.6, type_names: tuple[str, ...] = ("MEOH",), seed: int = 0,
                           temperature_K: float = 300.0, jitter_nm: float = 0.04,
                           noise: float = 20.0) -> CGDataset:
    """A CGDataset with ``n_side**3`` beads (methanol's mass) on a simple-cubic lattice in a cubic box of
    ``box_nm`` nm, each frame jittered by Gaussian ``jitter_nm``; Lennard-Jones forces (sigma 0.36 nm,
    epsilon 1.5 kJ/mol, cutoff 0.7 nm or less than half the box) plus ``noise``. Saved to ``path`` if
    given. With several ``type_names`` the beads alternate between the types.
    """
    rng = np.random.default_rng(seed)
    n = n_side ** 3
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), axis=-1).reshape(n, 3)
    lattice = (grid + 0.5) * (box_nm / n_side)

    def jittered(_frame: int) -> np.ndarray:
        return np.mod(lattice + rng.normal(scale=jitter_nm, size=(n, 3)), box_nm)

    ds = lennard_jones_dataset(jittered, n_frames, box_nm, rng, sigma=0.36, epsilon=1.5,
                               cutoff=min(0.7, 0.49 * box_nm), noise=noise, type_names=type_names,
                               bead_mass=32.042, temperature_K=temperature_K,
                               source="synthetic Lennard-Jones lattice", seed=seed)
    if path is not None:
        ds.save(path)
    return ds


def ar1_series(phi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """A stationary AR(1) series x_t = phi x_(t-1) + e_t with unit normal innovations, shape (n,):
    variance 1 / (1 - phi^2), statistical inefficiency (1 + phi) / (1 - phi). A correlated series with a
    known answer for tests of error bars."""
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x
