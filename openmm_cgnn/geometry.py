"""Periodic-box geometry shared by every stage: box widths, the minimum-image check, the box edge of a
liquid, and the all-atom cutoff rule. Physical constants live in :mod:`openmm_cgnn.units`.

Lengths in nm, masses in amu, densities in g/cm^3. Boxes are given as their three box vectors as rows,
shape (3, 3), or a stack of them (..., 3, 3).

The minimum-image rule used everywhere: a pair model with cutoff ``rc`` (pairs at ``r < rc``) sees
every pair once when every perpendicular width of the box is at least ``2 rc``; a box with a width
below that is refused (:func:`cutoff_fits`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: nm; absorbs the rounding of widths computed from box vectors (a box of width exactly 2 rc fits).
WIDTH_TOLERANCE = 1e-12

#: the all-atom cutoff is at most this fraction of the box edge, and at most AA_CUTOFF_MAX nm.
AA_CUTOFF_FRACTION = 0.46
AA_CUTOFF_MAX = 1.0


def box_vectors_nm(box: Any) -> np.ndarray:
    """A box as a (3, 3) float array in nm, vectors as rows.

    ``box``: OpenMM box vectors (a Quantity, or three Vec3 Quantities, as from
    ``Topology.getPeriodicBoxVectors()``), a (3, 3) array of rows in nm, or (3,) edge lengths in nm of
    a rectangular box.
    """
    import openmm.unit as u

    if u.is_quantity(box):
        box = box.value_in_unit(u.nanometer)
    rows = np.array([[x.value_in_unit(u.nanometer) if u.is_quantity(x) else x for x in v]
                     if not np.isscalar(v) else v for v in box], dtype=np.float64)
    if rows.shape == (3,):
        return np.diag(rows)
    if rows.shape != (3, 3):
        raise ValueError(f"a box is (3, 3) rows of box vectors or (3,) edge lengths, got shape {rows.shape}")
    return rows


def box_widths(boxes: np.ndarray) -> np.ndarray:
    """Perpendicular widths (..., 3), nm: the distances between opposite faces of boxes (..., 3, 3)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    a, b, c = boxes[..., 0, :], boxes[..., 1, :], boxes[..., 2, :]
    volume = np.abs(np.einsum("...i,...i->...", a, np.cross(b, c)))
    return np.stack([volume / np.linalg.norm(np.cross(b, c), axis=-1),
                     volume / np.linalg.norm(np.cross(c, a), axis=-1),
                     volume / np.linalg.norm(np.cross(a, b), axis=-1)], axis=-1)


def as_frames(positions: Any, boxes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positions (F, N, 3) and boxes (F, 3, 3) as float64 arrays, from one frame ((N, 3), (3, 3)) or many;
    one box for many frames is repeated."""
    positions = np.asarray(positions, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    if boxes.ndim == 2:
        boxes = np.broadcast_to(boxes, (positions.shape[0], 3, 3))
    return positions, boxes


def cutoff_fits(boxes: np.ndarray, cutoff: float) -> bool:
    """Whether a pair cutoff (nm) obeys the minimum-image convention in every box (..., 3, 3): every
    perpendicular width at least twice the cutoff."""
    return bool(np.all(box_widths(boxes) >= 2.0 * float(cutoff) - WIDTH_TOLERANCE))


def box_edge(n_molecules: int, molecule_mass: float, density: float) -> float:
    """Edge (nm) of the cubic box that holds ``n_molecules`` molecules of ``molecule_mass`` amu at
    ``density`` g/cm^3."""
    from .units import volume_for_density_nm3

    return volume_for_density_nm3(molecule_mass * n_molecules, density) ** (1.0 / 3.0)


def aa_cutoff_for_edge(edge: float) -> float:
    """The default all-atom nonbonded cutoff (nm) for a cubic box of ``edge`` nm: 0.46 of the edge,
    rounded down to 0.01 nm, and at most 1 nm (it stays below half the edge as the box fluctuates
    under a barostat)."""
    return min(AA_CUTOFF_MAX, math.floor(AA_CUTOFF_FRACTION * edge * 100.0) / 100.0)
