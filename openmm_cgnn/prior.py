"""The short-range repulsive prior: a pair energy U(r) = g exp(-a r) between all beads.

Its parameters come from the data, as in the pipeline of Shinkle et al. (2024):
* taper: the first distance at which the mapped bead-bead RDF exceeds ``rdf_threshold``;
* strength: the mean absolute mapped force component;
* the force -dU/dr equals ``strength`` at ``taper - dr`` and ``perc * strength`` at ``taper``,
  so ``a = ln(1/perc) / dr`` and ``g = strength / a * exp(a (taper - dr))``.
The pair energy is shifted to zero at ``cutoff = taper + cutoff_margin`` and is zero beyond it,
where it is smaller than 1e-8 of its value at the taper for the default parameters.

Units everywhere: nm, kJ/mol, kJ/mol/nm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .dataset import CGDataset
from .errors import ConfigError, InputFileError


@dataclass(frozen=True)
class PriorParams:
    """Repulsive pair prior, U(r) = g exp(-a r) - g exp(-a cutoff) for r < cutoff, nm and kJ/mol."""

    g: float            # kJ/mol
    a: float            # 1/nm
    cutoff: float       # nm
    taper: float        # nm (provenance: where the data start)
    strength: float     # kJ/mol/nm (provenance)

    @property
    def energy_at_taper(self) -> float:
        """U0 = g exp(-a taper), kJ/mol. Evaluating U as U0 exp(-a (r - taper)) keeps every
        intermediate inside float32 range (g itself can be ~1e24)."""
        return float(self.g * np.exp(-self.a * self.taper))

    def energy(self, r: np.ndarray) -> np.ndarray:
        """Pair energies (kJ/mol) at distances r (nm), any shape."""
        r = np.asarray(r, dtype=np.float64)
        e0 = self.energy_at_taper
        shift = np.exp(-self.a * (self.cutoff - self.taper))
        return np.where(r < self.cutoff, e0 * (np.exp(-self.a * (r - self.taper)) - shift), 0.0)

    def force(self, r: np.ndarray) -> np.ndarray:
        """Magnitude of the repulsive pair force -dU/dr (kJ/mol/nm) at r (nm)."""
        r = np.asarray(r, dtype=np.float64)
        e0 = self.energy_at_taper
        return np.where(r < self.cutoff, self.a * e0 * np.exp(-self.a * (r - self.taper)), 0.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def prior_from_taper(taper: float, strength: float, dr: float = 0.015, perc: float = 0.05,
                     cutoff_margin: float = 0.1) -> PriorParams:
    """Prior parameters from a taper distance (nm) and a force strength (kJ/mol/nm)."""
    if not (taper > dr > 0):
        raise ConfigError(f"taper ({taper} nm) must exceed dr ({dr} nm) > 0", "prior_dr")
    a = np.log(1.0 / perc) / dr
    g = strength / a * np.exp(a * (taper - dr))
    return PriorParams(g=float(g), a=float(a), cutoff=float(taper + cutoff_margin), taper=float(taper),
                       strength=float(strength))


def pair_distances(positions: np.ndarray, box: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodic pairs within ``cutoff`` (nm), each once: (i, j, vectors r_j - r_i) for one frame."""
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=positions, box=box, periodic=True, quantities="ijD")
    return i, j, d


def first_rdf_onset(datasets: list[CGDataset], threshold: float = 0.01, r_max: float = 1.0,
                    bin_width: float = 0.002, max_frames: int = 200) -> float:
    """The first distance (nm) at which the bead-bead RDF over all data sets exceeds ``threshold``."""
    edges = np.arange(0.0, r_max + bin_width, bin_width)
    counts = np.zeros(len(edges) - 1)
    ideal = np.zeros(len(edges) - 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    for ds in datasets:
        step = max(1, ds.n_frames // max_frames)
        for f in range(0, ds.n_frames, step):
            box = ds.boxes[f]
            r_cut = min(r_max, 0.5 * float(np.min(np.linalg.norm(box, axis=1))))
            _, _, d = pair_distances(ds.positions[f], box, r_cut)
            counts += np.histogram(np.linalg.norm(d, axis=1), bins=edges)[0]
            n = ds.n_beads
            ideal += shell * 0.5 * n * (n - 1) / abs(np.linalg.det(box))
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(ideal > 0, counts / ideal, 0.0)
    above = np.nonzero(g > threshold)[0]
    if len(above) == 0:
        raise InputFileError("the bead-bead RDF of the training data never exceeds the threshold; is the data set "
                             "empty?")
    return float(edges[above[0]])


def fit_prior(datasets: list[CGDataset], rdf_threshold: float = 0.01, dr: float = 0.015,
              perc: float = 0.05) -> PriorParams:
    """Derive the repulsive prior from mapped data (taper from the RDF, strength from the forces)."""
    taper = first_rdf_onset(datasets, threshold=rdf_threshold)
    strength = float(np.mean(np.concatenate([np.abs(ds.forces).ravel() for ds in datasets])))
    return prior_from_taper(taper, strength, dr=dr, perc=perc)


def prior_energy_forces(params: PriorParams, positions: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and forces (N, 3, kJ/mol/nm) of the prior for one frame."""
    i, j, d = pair_distances(positions, box, params.cutoff)
    r = np.linalg.norm(d, axis=1)
    energy = float(params.energy(r).sum())
    fvec = (params.force(r) / np.maximum(r, 1e-12))[:, None] * d  # force on j, along r_j - r_i
    forces = np.zeros_like(positions, dtype=np.float64)
    np.add.at(forces, j, fvec)
    np.add.at(forces, i, -fvec)
    return energy, forces
