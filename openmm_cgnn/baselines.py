"""Classical baseline: a pairwise CG force field fitted by linear force matching (MS-CG).

The GNN (HIP-NN-TS) is compared against this model. The pair force between two beads of types
(a, b), ``f_ab(r) = -dU_ab/dr`` (positive = repulsive), is expanded in piecewise-linear "hat"
functions on the grid ``r_k = k * bin_width``, k = 0..K, ``K * bin_width = cutoff``::

    f_ab(r) = sum_k c_ab,k h_k(r),     F_j = sum_i f(r_ij) (r_j - r_i) / r_ij

so the hat coefficients are the force table at the grid nodes. The coefficients minimise, over
every frame of every data set, ``|F_mapped - F_prior - F_pair(c)|^2`` plus a smoothness penalty;
the normal equations are accumulated frame by frame, so memory does not grow with the data.

The short-range treatment is the GNN's: the same repulsive prior (``prior.fit_prior`` on the same
data) is subtracted from the labels and kept in the final model. The learned table starts at its
onset, ``max(prior.taper, first distance with pair data)``: its first free node is the last grid
node at or below the onset and every node below that is fixed to zero, so the learned force
vanishes for ``r <= (floor(onset / bin_width) - 1) * bin_width`` (one to two bin widths below the
onset) and only the prior acts where the data are empty. With ``zero_force_at_cutoff`` (default) the learned
force also goes to zero at the cutoff, so the force is continuous there.

The energy table integrates the force inward from ``U(cutoff) = 0`` (exact for piecewise-linear
forces). The simulated model (:mod:`openmm_cgnn.cgpair`: the OpenMM System, ``MLPotential("cgpair")``
and :meth:`~openmm_cgnn.cgpair.PairModel.energy_forces`) interpolates that energy with a natural cubic
spline on a grid ``table_points_per_bin`` times finer than the fit grid (OpenMM's
``Continuous1DFunction``), plus the analytic prior. This module fits the tables and reads and writes
their file.

File format (JSON, written atomically; every number in the units named in its ``units`` entry):

====================  ==========================================================================
key                   meaning
====================  ==========================================================================
format, version       ``"openmm-cgnn/pair-force-field"``, 1
units                 ``{"r": "nm", "force": "kJ/mol/nm", "energy": "kJ/mol", ...}``
type_names            bead type names, list of T strings
pair_types            list of P = T (T + 1) / 2 pairs ``[name_a, name_b]``, a <= b in type order
cutoff, bin_width     nm; the fit grid is ``r_k = k * bin_width``, K + 1 nodes from 0 to cutoff
r                     (K + 1,) grid nodes, nm
force                 (P, K + 1) learned pair force at the nodes, kJ/mol/nm (prior excluded)
energy                (P, K + 1) learned pair energy at the nodes, kJ/mol, zero at the cutoff
onset                 (P,) nm; the learned force is zero 1-2 bin widths below it (see above)
pair_counts           (P, K) number of pair distances per bin in the training data
table_points_per_bin  energy table refinement used for the OpenMM spline
prior                 ``PriorParams`` fields (g kJ/mol, a 1/nm, cutoff nm, taper nm, strength kJ/mol/nm)
volume_term           optional: the volume term U_V(V, N, T) of ``openmm_cgnn.volume`` (pressure matching),
                      run as a box-only TorchForce next to the pair force; absent or null: none
provenance            state points, frame counts, fit settings, training errors, package versions
====================  ==========================================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cgpair import FORMAT, PairForceFieldFormatError, PairModel, check_type_names, pair_index_matrix
from .files import versions, write_json_atomic
from .dataset import CGDataset
from .errors import MissingInputError
from .geometry import box_widths, cutoff_fits
from .prior import PriorParams, fit_prior, pair_distances

FORMAT_VERSION = 1
UNITS = {
    "r": "nm", "cutoff": "nm", "bin_width": "nm", "onset": "nm",
    "force": "kJ/mol/nm", "energy": "kJ/mol",
    "prior.g": "kJ/mol", "prior.a": "1/nm", "prior.cutoff": "nm", "prior.taper": "nm",
    "prior.strength": "kJ/mol/nm",
    "provenance.train_force_rmse": "kJ/mol/nm",
}

__all__ = ["PairForceField", "PairForceFieldFormatError", "fit_pair_force_matching", "FORMAT"]


_DENSE_LIMIT = 8_000_000  # entries of the per-frame design matrix above which it is built sparse


# -- helpers -----------------------------------------------------------------------------------

def _integrate_inward(force: np.ndarray, h: float) -> np.ndarray:
    """Energy at the nodes from a node force table, U(cutoff) = 0 (trapezoid = exact for hats)."""
    seg = 0.5 * h * (force[:-1] + force[1:])
    energy = np.zeros_like(force)
    energy[:-1] = np.cumsum(seg[::-1])[::-1]
    return energy


# -- the file ----------------------------------------------------------------------------------

class PairForceField(PairModel):
    """A fitted pair force field: the :class:`~openmm_cgnn.cgpair.PairModel` (tables, NumPy evaluator,
    OpenMM System) with its JSON file (the table in the module docstring).
    """

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "units": UNITS,
            "type_names": self.type_names, "pair_types": [list(p) for p in self.pair_types],
            "cutoff": self.cutoff, "bin_width": self.bin_width,
            "r": self.r.tolist(), "force": self.force.tolist(), "energy": self.energy.tolist(),
            "onset": self.onset.tolist(),
            "pair_counts": None if self.pair_counts is None else self.pair_counts.tolist(),
            "table_points_per_bin": self.table_points_per_bin,
            "prior": self.prior.to_dict(), "provenance": self.provenance,
            "volume_term": None if self.volume is None else self.volume.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the force field atomically as JSON (floats round-trip exactly)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "PairForceField":
        if d.get("format") != FORMAT:
            raise PairForceFieldFormatError(f"{source} has format {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != FORMAT_VERSION:
            raise PairForceFieldFormatError(f"{source} has version {d.get('version')!r}, expected {FORMAT_VERSION}")
        units = d.get("units", {})
        for key in ("r", "force", "energy", "cutoff"):
            if units.get(key) != UNITS[key]:
                raise PairForceFieldFormatError(f"{source}: unit of '{key}' is {units.get(key)!r}, expected {UNITS[key]!r}")
        try:
            ff = cls(r=d["r"], force=d["force"], energy=d["energy"], prior=PriorParams(**d["prior"]),
                     type_names=d["type_names"], cutoff=d["cutoff"], onset=d["onset"],
                     pair_counts=d.get("pair_counts"), table_points_per_bin=d.get("table_points_per_bin", 4),
                     provenance=d.get("provenance", {}), volume=_volume_from(d.get("volume_term")))
        except (KeyError, TypeError) as exc:
            raise PairForceFieldFormatError(f"{source} is missing or has a malformed entry: {exc}") from exc
        expect = np.array([_integrate_inward(f, ff.bin_width) for f in ff.force])
        scale = max(1.0, float(np.max(np.abs(expect))))
        if not np.allclose(ff.energy, expect, rtol=0, atol=1e-9 * scale):
            raise PairForceFieldFormatError(f"{source}: the energy table is not the integral of the force table")
        return ff

    @classmethod
    def load(cls, path: str | Path) -> "PairForceField":
        path = Path(path)
        if not path.exists():
            raise MissingInputError(f"pair force field '{path}' does not exist")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PairForceFieldFormatError(f"cannot read '{path}' as JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise PairForceFieldFormatError(f"'{path}' is not an openmm-cgnn pair force field")
        return cls.from_dict(d, source=f"'{path}'")


# -- fitting -----------------------------------------------------------------------------------

def _volume_from(d: dict[str, Any] | None):
    if not d:
        return None
    from .volume import VolumeTermParams

    return VolumeTermParams.from_dict(d)


def _second_difference(free: np.ndarray) -> np.ndarray:
    """Rows (c_{k-1} - 2 c_k + c_{k+1}) for every run of three consecutive free coefficients."""
    n = len(free)
    rows = [k for k in range(1, n - 1) if free[k - 1] and free[k] and free[k + 1]]
    d = np.zeros((len(rows), n))
    for row, k in enumerate(rows):
        d[row, k - 1:k + 2] = (1.0, -2.0, 1.0)
    return d


def _solve_normal(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve symmetric positive (semi)definite normal equations: Cholesky, else least squares."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    try:
        return cho_solve(cho_factor(lhs), rhs)
    except LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def fit_pair_force_matching(datasets: Sequence[CGDataset], cutoff: float = 1.2, bin_width: float = 0.01,
                            regularization: float = 1e-3, prior: PriorParams | None = None,
                            zero_force_at_cutoff: bool = True,
                            table_points_per_bin: int = 4, fit_volume: bool = True, volume_source: str = "mapped",
                            volume_nvt_ps: float = 2.0, volume_nvt_equilibration_ps: float = 0.5) -> PairForceField:
    """Fit a tabulated pair force field to mapped forces by linear least squares (MS-CG).

    ``regularization`` weighs a second-difference (smoothness) penalty on the force table relative
    to the mean diagonal of the normal matrix (dimensionless; 0 gives plain least squares, with a
    1e-12 relative ridge only to keep the system solvable). ``prior``: the repulsive prior, fitted
    with ``fit_prior(datasets)`` if not given. Units: nm, kJ/mol/nm. ``fit_volume``: when every data
    set carries all-atom pressures, also fit the volume term U_V by pressure matching (as ``train``
    does for the GNN; ``openmm_cgnn.volume``), with the CG pressure from the mapped frames
    (``volume_source="mapped"``) or a short CG NVT run of the pair model (``"cg-nvt"``, ``volume_nvt_*`` ps).
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("no data sets to fit")
    type_names = list(datasets[0].type_names)
    for ds in datasets[1:]:
        check_type_names(type_names, ds)
    if not (bin_width > 0 and cutoff > 0):
        raise ValueError("cutoff and bin_width must be positive")
    n_bins = int(round(cutoff / bin_width))
    if n_bins < 2 or abs(n_bins * bin_width - cutoff) > 1e-9 * max(1.0, cutoff):
        raise ValueError(f"cutoff ({cutoff} nm) must be a whole number (>= 2) of bin widths ({bin_width} nm)")
    if regularization < 0:
        raise ValueError("regularization must be >= 0")
    if prior is None:
        prior = fit_prior(datasets)
    if prior.cutoff > cutoff:
        raise ValueError(f"cutoff ({cutoff} nm) is shorter than the prior's cutoff ({prior.cutoff} nm)")

    h = cutoff / n_bins
    n_types = len(type_names)
    pmat = pair_index_matrix(n_types)
    n_pairs = n_types * (n_types + 1) // 2
    n_nodes = n_bins + 1
    m = n_pairs * n_nodes
    a_mat = np.zeros((m, m))
    b_vec = np.zeros(m)
    yy = 0.0            # |labels - prior|^2
    ff = 0.0            # |labels|^2
    n_comp = 0
    counts = np.zeros(n_pairs * n_bins, dtype=np.int64)

    from scipy.linalg.blas import dsyrk
    from scipy.sparse import coo_matrix

    for ds in datasets:
        for f in range(ds.n_frames):
            box = ds.boxes[f]
            if not cutoff_fits(box, cutoff):
                raise ValueError(f"cutoff {cutoff} nm exceeds half the box width "
                                 f"({0.5 * box_widths(box).min():.4f} nm) in frame {f} of state {ds.state}")
            pos, n = ds.positions[f], ds.n_beads
            i, j, d = pair_distances(pos, box, cutoff)
            r = np.linalg.norm(d, axis=1)
            keep = (r < cutoff) & (r > 0)
            i, j, d, r = i[keep].astype(np.int64), j[keep].astype(np.int64), d[keep], r[keep]
            u = d / r[:, None]
            # labels: mapped forces minus the prior's forces (same pair list; prior.cutoff <= cutoff)
            fp = prior.force(r)[:, None] * u
            prior_forces = np.stack([np.bincount(j, fp[:, x], n) - np.bincount(i, fp[:, x], n)
                                     for x in range(3)], axis=1)
            y = (ds.forces[f] - prior_forces).ravel()
            # design matrix G (3N x m): F_j += u w c, F_i -= u w c
            k = np.minimum(np.floor(r / h).astype(np.int64), n_bins - 1)
            t = r / h - k
            p = pmat[ds.bead_types[i], ds.bead_types[j]]
            col0 = p * n_nodes + k
            counts += np.bincount(p * n_bins + k, minlength=n_pairs * n_bins)
            xyz = np.arange(3)
            rows = np.concatenate([(3 * j[:, None] + xyz), (3 * i[:, None] + xyz)] * 2, axis=0)
            cols = np.concatenate([np.repeat(col0[:, None], 3, 1)] * 2 + [np.repeat(col0[:, None] + 1, 3, 1)] * 2)
            w0, w1 = (1.0 - t)[:, None] * u, t[:, None] * u
            vals = np.concatenate([w0, -w0, w1, -w1])
            if 3 * n * m <= _DENSE_LIMIT:  # dense G: much faster for the usual sizes
                g = np.bincount((rows * m + cols).ravel(), weights=vals.ravel(),
                                minlength=3 * n * m).reshape(3 * n, m)
                a_mat += np.triu(dsyrk(1.0, g, trans=1))  # upper triangle of G^T G
            else:
                g = coo_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(3 * n, m)).tocsr()
                a_mat += np.triu((g.T @ g).toarray())
            b_vec += g.T @ y
            yy += float(y @ y)
            ff += float(np.sum(ds.forces[f] ** 2))
            n_comp += y.size
    if n_comp == 0:
        raise ValueError("the data sets hold no frames")
    a_mat = a_mat + np.triu(a_mat, 1).T  # symmetric normal matrix from its upper triangle
    counts = counts.reshape(n_pairs, n_bins)

    # free coefficients: from the last node at or below the onset (prior taper / first data) on
    free = np.zeros((n_pairs, n_nodes), dtype=bool)
    onset = np.full(n_pairs, cutoff)
    for q in range(n_pairs):
        seen = np.nonzero(counts[q])[0]
        if len(seen) == 0:
            continue  # no pairs of this type within the cutoff: the learned table stays zero
        onset[q] = max(prior.taper, seen[0] * h)
        k_on = int(math.floor(onset[q] / h + 1e-9))
        free[q, k_on:] = True
        if zero_force_at_cutoff:
            free[q, -1] = False
    fr = free.ravel()
    coef = np.zeros(m)
    if fr.any():
        a_free = a_mat[np.ix_(fr, fr)]
        scale = float(np.mean(np.diag(a_free)))
        scale = scale if scale > 0 else 1.0
        blocks = [_second_difference(free[q]) for q in range(n_pairs)]
        penalty = np.zeros((m, m))
        for q, dq in enumerate(blocks):
            sl = slice(q * n_nodes, (q + 1) * n_nodes)
            penalty[sl, sl] = dq.T @ dq
        lhs = a_free + regularization * scale * penalty[np.ix_(fr, fr)] + 1e-12 * scale * np.eye(int(fr.sum()))
        coef[fr] = _solve_normal(lhs, b_vec[fr])
    sse = max(yy - 2.0 * float(coef @ b_vec) + float(coef @ a_mat @ coef), 0.0)

    force = coef.reshape(n_pairs, n_nodes)
    energy = np.array([_integrate_inward(fq, h) for fq in force])
    provenance = {
        "method": "linear force matching (MS-CG), piecewise-linear pair force",
        "state_points": [ds.metadata.get("state") for ds in datasets],
        "n_frames": [int(ds.n_frames) for ds in datasets],
        "n_beads": [int(ds.n_beads) for ds in datasets],
        "settings": {"cutoff": cutoff, "bin_width": h, "regularization": regularization,
                     "zero_force_at_cutoff": zero_force_at_cutoff},
        "train_force_rmse": math.sqrt(sse / n_comp),
        "train_force_rmse_prior_only": math.sqrt(yy / n_comp),
        "train_force_rms_labels": math.sqrt(ff / n_comp),
        "versions": versions(),
    }
    ff = PairForceField(r=np.arange(n_nodes) * h, force=force, energy=energy, prior=prior,
                        type_names=type_names, cutoff=cutoff, onset=onset, pair_counts=counts,
                        table_points_per_bin=table_points_per_bin, provenance=provenance)
    if fit_volume and all(ds.pressure is not None for ds in datasets):
        from .volume import cg_nvt_pressures, fit_from_datasets, fit_volume_term, pressure_point_from_run

        if volume_source == "cg-nvt":
            ff.volume = fit_volume_term([pressure_point_from_run(
                cg_nvt_pressures(ff, ds, ds.temperature, volume_nvt_ps, volume_nvt_equilibration_ps, seed=k), ds,
                label=f"data set {k}") for k, ds in enumerate(datasets)])
            ff.volume.fit["cg_pressure_from"] = (f"CG NVT run of the pair model at each reference volume "
                                                 f"({volume_nvt_equilibration_ps:g} + {volume_nvt_ps:g} ps)")
        else:
            def energy_for(ds: CGDataset):
                return lambda pos, box: ff.energy_forces(pos, box, ds.bead_types)[0]

            ff.volume = fit_from_datasets(datasets, energy_for)
            ff.volume.fit["cg_pressure_from"] = "virial of the model on the mapped all-atom frames"
    return ff
