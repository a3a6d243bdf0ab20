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
forces). The simulated model (OpenMM and :meth:`PairForceField.energy_forces`) interpolates that
energy with a natural cubic spline on a grid ``table_points_per_bin`` times finer than the fit
grid (OpenMM's ``Continuous1DFunction``), plus the analytic prior.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .files import versions, write_json_atomic
from .dataset import CGDataset
from .errors import CGNNError, MissingInputError
from .prior import PriorParams, fit_prior, pair_distances

FORMAT = "openmm-cgnn/pair-force-field"
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


class PairForceFieldFormatError(CGNNError, ValueError):
    """The file is not an openmm-cgnn pair force field, or it is inconsistent."""


# -- helpers -----------------------------------------------------------------------------------

def _pair_index_matrix(n_types: int) -> np.ndarray:
    """(T, T) symmetric matrix of pair-type indices, pairs (a, b) with a <= b in row order."""
    idx = np.empty((n_types, n_types), dtype=np.int64)
    p = 0
    for a in range(n_types):
        for b in range(a, n_types):
            idx[a, b] = idx[b, a] = p
            p += 1
    return idx


def _box_matrix(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    if box.shape == (3,):
        return np.diag(box)
    if box.shape != (3, 3):
        raise ValueError(f"box must be (3, 3) rows of box vectors or (3,) edge lengths, got {box.shape}")
    return box


def _min_width(box: np.ndarray) -> float:
    """Smallest distance between opposite faces of the periodic cell, nm."""
    a, b, c = box
    vol = abs(float(np.dot(a, np.cross(b, c))))
    return vol / max(np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
                     np.linalg.norm(np.cross(a, b)))


def _hat_energy(r: np.ndarray, grid_r: np.ndarray, force: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Exact integral of the piecewise-linear force: U(r) = U(r_{k+1}) + int_r^{r_{k+1}} f ds."""
    r = np.asarray(r, dtype=np.float64)
    h = grid_r[1] - grid_r[0]
    kmax = len(grid_r) - 2
    k = np.clip(np.floor(r / h).astype(np.int64), 0, kmax)
    t = r / h - k
    out = energy[k + 1] + h * (force[k] * (1.0 - t) ** 2 / 2.0 + force[k + 1] * (1.0 - t ** 2) / 2.0)
    return np.where((r >= 0) & (r < grid_r[-1]), out, 0.0)


def _integrate_inward(force: np.ndarray, h: float) -> np.ndarray:
    """Energy at the nodes from a node force table, U(cutoff) = 0 (trapezoid = exact for hats)."""
    seg = 0.5 * h * (force[:-1] + force[1:])
    energy = np.zeros_like(force)
    energy[:-1] = np.cumsum(seg[::-1])[::-1]
    return energy


# -- the model ---------------------------------------------------------------------------------

@dataclass
class PairForceField:
    """A tabulated pair force field (per pair of bead types) plus the analytic repulsive prior.

    Arrays follow the table in the module docstring. ``force``/``energy`` exclude the prior.
    """

    r: np.ndarray
    force: np.ndarray
    energy: np.ndarray
    prior: PriorParams
    type_names: list[str]
    cutoff: float
    onset: np.ndarray
    pair_counts: np.ndarray | None = None
    table_points_per_bin: int = 4
    provenance: dict[str, Any] = field(default_factory=dict)
    volume: Any = None     # openmm_cgnn.volume.VolumeTermParams or None (same treatment as the GNN)
    _splines: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.r = np.asarray(self.r, dtype=np.float64)
        self.force = np.atleast_2d(np.asarray(self.force, dtype=np.float64))
        self.energy = np.atleast_2d(np.asarray(self.energy, dtype=np.float64))
        self.onset = np.atleast_1d(np.asarray(self.onset, dtype=np.float64))
        self.type_names = [str(t) for t in self.type_names]
        self.cutoff = float(self.cutoff)
        self.table_points_per_bin = int(self.table_points_per_bin)
        if self.pair_counts is not None:
            self.pair_counts = np.atleast_2d(np.asarray(self.pair_counts, dtype=np.int64))
        p, nk = self.n_pair_types, len(self.r)
        if nk < 2 or not np.allclose(np.diff(self.r), self.r[1] - self.r[0], rtol=1e-9, atol=1e-12):
            raise PairForceFieldFormatError("r must be a uniform grid of at least two nodes")
        if abs(self.r[0]) > 1e-12 or abs(self.r[-1] - self.cutoff) > 1e-9:
            raise PairForceFieldFormatError(f"r must run from 0 to the cutoff ({self.cutoff} nm)")
        for name in ("force", "energy"):
            if getattr(self, name).shape != (p, nk):
                raise PairForceFieldFormatError(
                    f"'{name}' has shape {getattr(self, name).shape}, expected {(p, nk)}")
        if self.pair_counts is not None and self.pair_counts.shape != (p, nk - 1):
            raise PairForceFieldFormatError(
                f"'pair_counts' has shape {self.pair_counts.shape}, expected {(p, nk - 1)}")
        if self.onset.shape != (p,):
            raise PairForceFieldFormatError(f"'onset' has shape {self.onset.shape}, expected {(p,)}")
        if self.table_points_per_bin < 1:
            raise PairForceFieldFormatError("table_points_per_bin must be >= 1")
        if self.prior.cutoff > self.cutoff:
            raise PairForceFieldFormatError(
                f"the prior's cutoff ({self.prior.cutoff} nm) exceeds the table cutoff ({self.cutoff} nm)")

    # -- pair types ------------------------------------------------------------------------------
    @property
    def bin_width(self) -> float:
        return float(self.r[1] - self.r[0])

    @property
    def n_pair_types(self) -> int:
        t = len(self.type_names)
        return t * (t + 1) // 2

    @property
    def pair_types(self) -> list[tuple[str, str]]:
        t = self.type_names
        return [(t[a], t[b]) for a in range(len(t)) for b in range(a, len(t))]

    def pair_index(self, type_a: str | int = 0, type_b: str | int | None = None) -> int:
        """Index of the (a, b) pair type; types by name or index; ``type_b`` defaults to ``type_a``."""
        def idx(x: str | int) -> int:
            if isinstance(x, str):
                if x not in self.type_names:
                    raise KeyError(f"unknown bead type {x!r}; this force field has {self.type_names}")
                return self.type_names.index(x)
            return int(x)
        a = idx(type_a)
        b = a if type_b is None else idx(type_b)
        return int(_pair_index_matrix(len(self.type_names))[a, b])

    # -- pair functions --------------------------------------------------------------------------
    def learned_force(self, r: np.ndarray, pair: int = 0) -> np.ndarray:
        """The fitted (hat-interpolated) pair force without the prior, kJ/mol/nm; 0 beyond cutoff."""
        r = np.asarray(r, dtype=np.float64)
        out = np.interp(r, self.r, self.force[pair])
        return np.where((r >= 0) & (r < self.cutoff), out, 0.0)

    def learned_energy(self, r: np.ndarray, pair: int = 0) -> np.ndarray:
        """Exact integral of :meth:`learned_force` from the cutoff inward, kJ/mol."""
        return _hat_energy(r, self.r, self.force[pair], self.energy[pair])

    def energy_table(self, pair: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The uniform table (r nm, U kJ/mol) handed to OpenMM's natural-spline Continuous1DFunction."""
        n = (len(self.r) - 1) * self.table_points_per_bin + 1
        rf = np.linspace(0.0, self.cutoff, n)
        return rf, self.learned_energy(rf, pair)

    def _spline(self, pair: int):
        if pair not in self._splines:
            from scipy.interpolate import CubicSpline

            rf, uf = self.energy_table(pair)
            self._splines[pair] = CubicSpline(rf, uf, bc_type="natural")
        return self._splines[pair]

    def pair_energy(self, r: np.ndarray, pair: int = 0, include_prior: bool = True) -> np.ndarray:
        """Pair energy as simulated (spline of the table, plus the prior), kJ/mol."""
        r = np.asarray(r, dtype=np.float64)
        inside = (r >= 0) & (r <= self.cutoff)
        u = np.where(inside, self._spline(pair)(np.clip(r, 0.0, self.cutoff)), 0.0)
        return u + self.prior.energy(r) if include_prior else u

    def pair_force(self, r: np.ndarray, pair: int = 0, include_prior: bool = True) -> np.ndarray:
        """Pair force -dU/dr as simulated (positive = repulsive), kJ/mol/nm."""
        r = np.asarray(r, dtype=np.float64)
        inside = (r >= 0) & (r <= self.cutoff)
        f = np.where(inside, -self._spline(pair)(np.clip(r, 0.0, self.cutoff), 1), 0.0)
        return f + self.prior.force(r) if include_prior else f

    # -- whole configurations --------------------------------------------------------------------
    def _bead_types(self, n: int, bead_types: Sequence[int] | None) -> np.ndarray:
        if bead_types is None:
            if len(self.type_names) != 1:
                raise ValueError(f"this force field has {len(self.type_names)} bead types "
                                 f"{self.type_names}; pass bead_types")
            return np.zeros(n, dtype=np.int64)
        types = np.asarray(bead_types, dtype=np.int64)
        if types.shape != (n,) or (n and (types.min() < 0 or types.max() >= len(self.type_names))):
            raise ValueError(f"bead_types must be {n} indices into {self.type_names}")
        return types

    def energy_forces(self, positions: np.ndarray, box: np.ndarray,
                      bead_types: Sequence[int] | None = None) -> tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces ((N, 3) kJ/mol/nm) of one periodic frame (nm), as OpenMM computes.

        ``box``: (3, 3) box vectors as rows or (3,) edge lengths, nm. ``bead_types``: (N,) indices
        into ``type_names`` (may be omitted with a single bead type).
        """
        pos = np.asarray(positions, dtype=np.float64)
        box = _box_matrix(box)
        types = self._bead_types(len(pos), bead_types)
        i, j, d = pair_distances(pos, box, self.cutoff)
        r = np.linalg.norm(d, axis=1)
        keep = r < self.cutoff
        i, j, d, r = i[keep], j[keep], d[keep], r[keep]
        pidx = _pair_index_matrix(len(self.type_names))[types[i], types[j]]
        energy = float(self.prior.energy(r).sum())
        fmag = self.prior.force(r)
        for p in np.unique(pidx):
            sel = pidx == p
            energy += float(self.pair_energy(r[sel], int(p), include_prior=False).sum())
            fmag[sel] += self.pair_force(r[sel], int(p), include_prior=False)
        fvec = (fmag / np.maximum(r, 1e-12))[:, None] * d  # on j, along r_j - r_i
        forces = np.zeros_like(pos)
        np.add.at(forces, j, fvec)
        np.add.at(forces, i, -fvec)
        return energy, forces

    def evaluate(self, datasets: Sequence[CGDataset]) -> dict[str, float]:
        """Force errors against mapped forces (kJ/mol/nm): RMSE and MAE per component, all frames."""
        sse, sae, n = 0.0, 0.0, 0
        for ds in datasets:
            _check_types(self.type_names, ds)
            for f in range(ds.n_frames):
                _, pred = self.energy_forces(ds.positions[f], ds.boxes[f], ds.bead_types)
                err = pred - ds.forces[f]
                sse += float(np.sum(err ** 2))
                sae += float(np.sum(np.abs(err)))
                n += err.size
        if n == 0:
            raise ValueError("no frames to evaluate")
        return {"force_rmse": math.sqrt(sse / n), "force_mae": sae / n, "n_components": n}

    # -- OpenMM ----------------------------------------------------------------------------------
    def create_system(self, cg_topology, bead_masses: Sequence[float] | None = None,
                      bead_types: Sequence[int] | None = None, temperature: float | None = None):
        """An ``openmm.System`` for the beads of ``cg_topology`` with this pair force field.

        One ``CustomNonbondedForce`` (CutoffPeriodic at ``cutoff``, no switching, no long-range
        correction, no exclusions: the fit used every pair) whose energy is the tabulated learned
        energy (natural-spline ``Continuous1DFunction`` per pair type) plus the analytic prior.
        Masses (amu) come from ``bead_masses`` or else from the atoms' elements (CG topologies have
        none); bead types from ``bead_types`` or else from the atom names matched to ``type_names``.
        The periodic box comes from ``cg_topology.getPeriodicBoxVectors()``. A fitted volume term
        (``self.volume``) is added as a box-only TorchForce; ``temperature`` (K) sets its run temperature.
        """
        import openmm
        from openmm import unit

        atoms = list(cg_topology.atoms())
        n = len(atoms)
        if bead_masses is not None:
            masses = np.asarray(bead_masses, dtype=np.float64)
            if masses.shape != (n,):
                raise ValueError(f"bead_masses has shape {masses.shape}, the topology has {n} beads")
        else:
            if any(a.element is None for a in atoms):
                raise ValueError("the CG topology's atoms have no element, so their masses are unknown; "
                                 "pass bead_masses (amu), e.g. CGDataset.bead_masses")
            masses = np.array([a.element.mass.value_in_unit(unit.dalton) for a in atoms])
        if np.any(masses <= 0):
            raise ValueError("bead masses must be positive")
        if bead_types is None:
            unknown = sorted({a.name for a in atoms if a.name not in self.type_names})
            if unknown:
                raise ValueError(f"topology atom names {unknown} are not bead types of this force field "
                                 f"{self.type_names}; pass bead_types")
            types = np.array([self.type_names.index(a.name) for a in atoms], dtype=np.int64)
        else:
            types = self._bead_types(n, bead_types)
        vectors = cg_topology.getPeriodicBoxVectors()
        if vectors is None:
            raise ValueError("the CG topology has no periodic box vectors (topology.setPeriodicBoxVectors)")
        box = np.array([[v.value_in_unit(unit.nanometer) for v in vec] for vec in vectors])
        if self.cutoff > 0.5 * _min_width(box) + 1e-12:
            raise ValueError(f"cutoff {self.cutoff} nm exceeds half the box width ({0.5 * _min_width(box):.4f} nm)")

        system = openmm.System()
        for m in masses:
            system.addParticle(float(m))
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box])

        p_count = self.n_pair_types
        terms = [f"cgpair_table{p}(r)" for p in range(p_count)]
        if p_count == 1:
            table = terms[0]
        else:
            table = terms[-1]
            for p in reversed(range(p_count - 1)):
                table = f"select(delta(cgpair_pidx - {p}), {terms[p]}, {table})"
        expr = (f"{table} + step(cgpair_prc - r) * cgpair_pe0 * "
                f"(exp(-cgpair_pa * (r - cgpair_ptaper)) - cgpair_pshift)")
        if p_count > 1:
            expr += "; cgpair_pidx = cgpair_types(btype1, btype2)"
        force = openmm.CustomNonbondedForce(expr)
        force.setName("CGPairTable")
        pr = self.prior
        force.addGlobalParameter("cgpair_prc", pr.cutoff)
        force.addGlobalParameter("cgpair_pe0", pr.energy_at_taper)
        force.addGlobalParameter("cgpair_pa", pr.a)
        force.addGlobalParameter("cgpair_ptaper", pr.taper)
        force.addGlobalParameter("cgpair_pshift", float(np.exp(-pr.a * (pr.cutoff - pr.taper))))
        for p in range(p_count):
            _, uf = self.energy_table(p)
            force.addTabulatedFunction(f"cgpair_table{p}",
                                       openmm.Continuous1DFunction(uf.tolist(), 0.0, self.cutoff))
        if p_count > 1:
            t = len(self.type_names)
            force.addTabulatedFunction("cgpair_types", openmm.Discrete2DFunction(
                t, t, _pair_index_matrix(t).T.ravel().astype(float).tolist()))
            force.addPerParticleParameter("btype")
            for ty in types:
                force.addParticle([float(ty)])
        else:
            for _ in range(n):
                force.addParticle([])
        force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        force.setCutoffDistance(self.cutoff)
        force.setUseSwitchingFunction(False)
        force.setUseLongRangeCorrection(False)
        system.addForce(force)
        if self.volume is not None and not self.volume.is_zero:
            from .volume import volume_torch_force

            system.addForce(volume_torch_force(self.volume, temperature))
        return system

    # -- files -----------------------------------------------------------------------------------
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


def _check_types(type_names: list[str], ds: CGDataset) -> None:
    if list(ds.type_names) != list(type_names):
        state = ds.metadata.get("state")
        raise ValueError(f"data sets have mismatched bead type names: {list(ds.type_names)} "
                         f"(state {state}) vs {list(type_names)}; all data sets (and the force field) "
                         "must use the same type names in the same order")


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
        _check_types(type_names, ds)
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
    pmat = _pair_index_matrix(n_types)
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
            if cutoff > 0.5 * _min_width(box) + 1e-12:
                raise ValueError(f"cutoff {cutoff} nm exceeds half the box width "
                                 f"({0.5 * _min_width(box):.4f} nm) in frame {f} of state {ds.state}")
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
