"""Bonded CG terms for multi-bead molecules, fitted by Boltzmann inversion of the mapped reference.

Beads of one molecule are bonded in the order of the mapping (bead k to bead k+1 of the same
molecule), the same bonds :func:`openmm_cgnn.mapping.build_cg_topology` puts into the CG topology;
three consecutive beads of a molecule make an angle. For each bond type (the two bead type names,
sorted) the mapped distances r give the distribution P(r), inverted to the potential of mean force
U(r) = -kT ln(P(r) / r^2) (the r^2 removes the Jacobian of a distance in 3D), and a harmonic
U = k/2 (r - r0)^2 is fitted to it by least squares weighted with the counts. Angles likewise with
U(theta) = -kT ln(P(theta) / sin theta) and k/2 (theta - theta0)^2.

The terms are added to the CG System as OpenMM ``HarmonicBondForce`` and ``HarmonicAngleForce``
(periodic, since bead positions are wrapped into the box) and subtracted from the mapped forces before
the network is trained, as the repulsive prior is. Units: nm, rad, kJ/mol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import CGNNError
from .units import BOLTZMANN_KJ_PER_MOL_K


class BondedError(CGNNError, ValueError):
    """Bonded terms cannot be fitted or applied (no samples, a bond type the model does not know)."""


# -- which beads are bonded ----------------------------------------------------------------------------

def bonded_pairs(bead_residues: np.ndarray) -> np.ndarray:
    """(n_bonds, 2) indices of consecutive beads of the same molecule."""
    r = np.asarray(bead_residues)
    i = np.nonzero(r[:-1] == r[1:])[0]
    return np.stack([i, i + 1], axis=1).astype(np.int64)


def bonded_triples(bead_residues: np.ndarray) -> np.ndarray:
    """(n_angles, 3) indices of three consecutive beads of the same molecule (vertex in the middle)."""
    r = np.asarray(bead_residues)
    i = np.nonzero((r[:-2] == r[1:-1]) & (r[1:-1] == r[2:]))[0]
    return np.stack([i, i + 1, i + 2], axis=1).astype(np.int64)


def bond_key(a: str, b: str) -> str:
    return "-".join(sorted((a, b)))


def angle_key(a: str, b: str, c: str) -> str:
    ends = sorted((a, c))
    return f"{ends[0]}-{b}-{ends[1]}"


def topology_bonds_and_angles(topology) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Bonds of an OpenMM topology, and the angles (i, j, k) of every two bonds that share atom j."""
    bonds = [(b[0].index, b[1].index) for b in topology.bonds()]
    neighbours: dict[int, list[int]] = {}
    for i, j in bonds:
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    angles = []
    for j, ns in sorted(neighbours.items()):
        ns = sorted(ns)
        for a in range(len(ns)):
            for b in range(a + 1, len(ns)):
                angles.append((ns[a], j, ns[b]))
    return bonds, angles


# -- geometry -----------------------------------------------------------------------------------------

def _min_image(d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """d (F, M, 3) displacement vectors, boxes (F, 3, 3) rows -> shortest images."""
    from .mapping import minimum_image

    return minimum_image(d, boxes)


def bond_vectors(positions: np.ndarray, boxes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(F, n_bonds, 3) minimum-image vectors r_j - r_i, nm."""
    return _min_image(positions[:, pairs[:, 1]] - positions[:, pairs[:, 0]], boxes)


def angles(positions: np.ndarray, boxes: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """(F, n_angles) angles at the middle bead, rad."""
    a = _min_image(positions[:, triples[:, 0]] - positions[:, triples[:, 1]], boxes)
    b = _min_image(positions[:, triples[:, 2]] - positions[:, triples[:, 1]], boxes)
    cos = np.einsum("fmd,fmd->fm", a, b) / (np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2))
    return np.arccos(np.clip(cos, -1.0, 1.0))


# -- the parameters -----------------------------------------------------------------------------------

@dataclass
class BondedParams:
    """Harmonic bonds {key: {"r0" nm, "k" kJ/mol/nm^2}} and angles {key: {"theta0" rad, "k" kJ/mol/rad^2}},
    keyed by bead type names (:func:`bond_key`, :func:`angle_key`); provenance in each entry."""

    bonds: dict[str, dict[str, float]] = field(default_factory=dict)
    angles: dict[str, dict[str, float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.bonds or self.angles)

    def to_dict(self) -> dict[str, Any]:
        return {"bonds": self.bonds, "angles": self.angles, "form": "harmonic, Boltzmann inversion",
                "units": {"r0": "nm", "k_bond": "kJ/mol/nm^2", "theta0": "rad", "k_angle": "kJ/mol/rad^2"}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "BondedParams":
        data = data or {}
        return cls(dict(data.get("bonds") or {}), dict(data.get("angles") or {}))


def boltzmann_inversion(x: np.ndarray, kT: float, jacobian: str, bin_width: float,
                        min_count: int = 5) -> tuple[float, float, dict[str, float]]:
    """Harmonic (x0, k) fitted to U(x) = -kT ln(P(x) / J(x)), J = x^2 ("r2") or sin x ("sin").

    Bins with fewer than ``min_count`` samples are left out; the least-squares fit of a parabola is
    weighted by the square root of the counts. Falls back to the Gaussian moments (x0 = mean,
    k = kT / variance) when the inverted potential is not convex (too few samples)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 10:
        raise BondedError(f"only {x.size} samples of a bonded coordinate; map more frames")
    mean, var = float(x.mean()), float(x.var())
    lo, hi = x.min(), x.max()
    n_bins = max(3, int(np.ceil((hi - lo) / bin_width)))
    counts, edges = np.histogram(x, bins=n_bins, range=(lo, lo + n_bins * bin_width))
    centre = 0.5 * (edges[1:] + edges[:-1])
    keep = counts >= min_count
    stats = {"mean": mean, "std": float(np.sqrt(var)), "samples": int(x.size)}
    if keep.sum() >= 3:
        jac = centre ** 2 if jacobian == "r2" else np.sin(np.clip(centre, 1e-6, np.pi - 1e-6))
        u = -kT * np.log(counts[keep] / jac[keep])
        a, b, _ = np.polyfit(centre[keep], u, 2, w=np.sqrt(counts[keep]))
        if a > 0:
            return float(-b / (2 * a)), float(2 * a), {**stats, "fit": "boltzmann-inversion"}
    if var <= 0:
        raise BondedError("a bonded coordinate never varies in the data; cannot fit a force constant")
    return mean, float(kT / var), {**stats, "fit": "gaussian-moments"}


def fit_bonded(datasets: Sequence[Any], bond_bin: float = 0.002, angle_bin: float = np.radians(2.0)) -> BondedParams:
    """Fit harmonic bonds and angles to mapped CG data sets (molecules with two or more beads).

    Each data set is inverted at its own temperature; types that occur in several data sets get the
    sample-weighted mean of their parameters. Returns empty parameters when every molecule has one bead.
    """
    per_bond: dict[str, list[tuple[float, float, dict]]] = {}
    per_angle: dict[str, list[tuple[float, float, dict]]] = {}
    for ds in datasets:
        kT = BOLTZMANN_KJ_PER_MOL_K * float(ds.temperature)
        names = [ds.type_names[t] for t in ds.bead_types]
        pairs = bonded_pairs(ds.bead_residues)
        if len(pairs):
            r = np.linalg.norm(bond_vectors(ds.positions, ds.boxes, pairs), axis=2)
            keys = np.array([bond_key(names[i], names[j]) for i, j in pairs])
            for key in np.unique(keys):
                per_bond.setdefault(str(key), []).append(boltzmann_inversion(r[:, keys == key], kT, "r2", bond_bin))
        triples = bonded_triples(ds.bead_residues)
        if len(triples):
            th = angles(ds.positions, ds.boxes, triples)
            keys = np.array([angle_key(names[i], names[j], names[k]) for i, j, k in triples])
            for key in np.unique(keys):
                per_angle.setdefault(str(key), []).append(
                    boltzmann_inversion(th[:, keys == key], kT, "sin", angle_bin))
    return BondedParams({k: _combine(v, "r0") for k, v in per_bond.items()},
                        {k: _combine(v, "theta0") for k, v in per_angle.items()})


def _combine(fits: list[tuple[float, float, dict]], name: str) -> dict[str, float]:
    w = np.array([f[2]["samples"] for f in fits], dtype=np.float64)
    x0 = float(np.average([f[0] for f in fits], weights=w))
    k = float(np.average([f[1] for f in fits], weights=w))
    return {name: x0, "k": k, "samples": int(w.sum()), "reference_mean": float(np.average(
        [f[2]["mean"] for f in fits], weights=w)), "reference_std": float(np.average(
        [f[2]["std"] for f in fits], weights=w)), "fit": ",".join(sorted({f[2]["fit"] for f in fits}))}


# -- energies and forces (numpy, for training targets) -------------------------------------------------

def bonded_energy_forces(params: BondedParams, positions: np.ndarray, boxes: np.ndarray, bead_types: np.ndarray,
                         type_names: Sequence[str], bead_residues: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies (F,) kJ/mol and forces (F, N, 3) kJ/mol/nm of the bonded terms, for frames of one data set."""
    pos = np.asarray(positions, dtype=np.float64)
    single = pos.ndim == 2
    pos = pos[None] if single else pos
    box = np.asarray(boxes, dtype=np.float64)
    box = np.broadcast_to(box, (pos.shape[0], 3, 3)) if box.ndim == 2 else box
    names = [type_names[t] for t in bead_types]
    energy = np.zeros(pos.shape[0])
    forces = np.zeros_like(pos)
    pairs = bonded_pairs(bead_residues)
    if len(pairs) and params.bonds:
        k, r0 = _lookup(params.bonds, [bond_key(names[i], names[j]) for i, j in pairs], "r0", "bond")
        d = bond_vectors(pos, box, pairs)
        r = np.linalg.norm(d, axis=2)
        energy += (0.5 * k * (r - r0) ** 2).sum(1)
        f_i = (k * (r - r0) / r)[..., None] * d          # pulls i towards j when stretched
        np.add.at(forces, (slice(None), pairs[:, 0]), f_i)
        np.add.at(forces, (slice(None), pairs[:, 1]), -f_i)
    triples = bonded_triples(bead_residues)
    if len(triples) and params.angles:
        k, t0 = _lookup(params.angles, [angle_key(names[i], names[j], names[m]) for i, j, m in triples],
                        "theta0", "angle")
        a = _min_image(pos[:, triples[:, 0]] - pos[:, triples[:, 1]], box)
        b = _min_image(pos[:, triples[:, 2]] - pos[:, triples[:, 1]], box)
        la, lb = np.linalg.norm(a, axis=2), np.linalg.norm(b, axis=2)
        cos = np.clip(np.einsum("fmd,fmd->fm", a, b) / (la * lb), -1.0, 1.0)
        theta = np.arccos(cos)
        sin = np.maximum(np.sqrt(1.0 - cos ** 2), 1e-8)
        energy += (0.5 * k * (theta - t0) ** 2).sum(1)
        pref = (k * (theta - t0) / sin)[..., None]       # -dE/dtheta * (-1/sin) folded in below
        ua, ub = a / la[..., None], b / lb[..., None]
        f_a = pref * (ub - cos[..., None] * ua) / la[..., None]
        f_b = pref * (ua - cos[..., None] * ub) / lb[..., None]
        np.add.at(forces, (slice(None), triples[:, 0]), f_a)
        np.add.at(forces, (slice(None), triples[:, 2]), f_b)
        np.add.at(forces, (slice(None), triples[:, 1]), -(f_a + f_b))
    return (energy[0], forces[0]) if single else (energy, forces)


def _lookup(table: dict[str, dict[str, float]], keys: list[str], x0: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = sorted({k for k in keys if k not in table})
    if missing:
        raise BondedError(f"no fitted {what} parameters for bead types {', '.join(missing)}; the model knows "
                          f"{', '.join(sorted(table)) or 'none'}")
    return (np.array([table[k]["k"] for k in keys]), np.array([table[k][x0] for k in keys]))


# -- OpenMM ----------------------------------------------------------------------------------------

def add_bonded_forces(system, topology, params: BondedParams | dict[str, Any] | None) -> list:
    """Add a periodic HarmonicBondForce and HarmonicAngleForce for the bonds and angles of ``topology``
    (atom names = bead types) with the fitted parameters; returns the forces added (none without bonds)."""
    import openmm

    if isinstance(params, dict) or params is None:
        params = BondedParams.from_dict(params)
    if not params:
        return []
    names = [a.name for a in topology.atoms()]
    bonds, triples = topology_bonds_and_angles(topology)
    added = []
    if bonds and params.bonds:
        k, r0 = _lookup(params.bonds, [bond_key(names[i], names[j]) for i, j in bonds], "r0", "bond")
        force = openmm.HarmonicBondForce()
        for (i, j), kk, rr in zip(bonds, k, r0):
            force.addBond(int(i), int(j), float(rr), float(kk))
        force.setUsesPeriodicBoundaryConditions(True)
        system.addForce(force)
        added.append(force)
    if triples and params.angles:
        k, t0 = _lookup(params.angles, [angle_key(names[i], names[j], names[m]) for i, j, m in triples],
                        "theta0", "angle")
        force = openmm.HarmonicAngleForce()
        for (i, j, m), kk, tt in zip(triples, k, t0):
            force.addAngle(int(i), int(j), int(m), float(tt), float(kk))
        force.setUsesPeriodicBoundaryConditions(True)
        system.addForce(force)
        added.append(force)
    return added
