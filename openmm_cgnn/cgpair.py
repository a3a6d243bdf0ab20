"""The ``cgpair`` potential: a tabulated pair force field (the MS-CG baseline of
:mod:`openmm_cgnn.baselines`) as an OpenMM-ML potential, and the pair model as simulated::

    system = MLPotential("cgpair", model="pair.json").createSystem(cg_topology, masses=bead_masses,
                                                                    removeCMMotion=False)

openmmml finds this module through the entry point "cgpair" in the group "openmmml.potentials" (see
pyproject.toml), as it finds :mod:`openmm_cgnn.mlpotential` for ``cgnn``. ``createSystem`` takes
``masses`` (amu, one per bead: a pair force field records none, so element-less CG beads need them)
and ``temperature`` (K, the run temperature of a fitted volume term).

:class:`PairModel` holds the tables and evaluates them: the pair functions, energies and forces of
whole periodic frames in NumPy (exactly what OpenMM computes) and the OpenMM System (one
``CustomNonbondedForce``, natural-spline ``Continuous1DFunction`` tables plus the analytic prior, and
the volume term as a box-only TorchForce). Fitting and the JSON file are in :mod:`openmm_cgnn.baselines`.
Units: nm, kJ/mol, kJ/mol/nm, amu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

from .dataset import CGDataset
from .errors import CGNNError
from .geometry import box_vectors_nm
from .prior import PriorParams, pair_distances
from .system import (CGSystemError, bead_masses as _bead_masses, bead_type_indices, check_box, check_potential,
                     require_whole_topology, set_bead_masses)

#: the file format a pair force field is saved in (``openmm_cgnn.baselines``)
FORMAT = "openmm-cgnn/pair-force-field"


class PairForceFieldFormatError(CGNNError, ValueError):
    """The file is not an openmm-cgnn pair force field, or it is inconsistent."""


def configure_cutoff_periodic(force: Any, cutoff: float) -> Any:
    """Set a ``CustomNonbondedForce`` to a plain periodic cutoff at ``cutoff`` nm: no switching function
    and no long-range correction, as the pair models are fitted. Returns ``force``."""
    import openmm

    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(cutoff)
    force.setUseSwitchingFunction(False)
    force.setUseLongRangeCorrection(False)
    return force


# -- helpers -----------------------------------------------------------------------------------

def pair_index_matrix(n_types: int) -> np.ndarray:
    """(T, T) symmetric matrix of pair-type indices, pairs (a, b) with a <= b in row order."""
    idx = np.empty((n_types, n_types), dtype=np.int64)
    p = 0
    for a in range(n_types):
        for b in range(a, n_types):
            idx[a, b] = idx[b, a] = p
            p += 1
    return idx


def _hat_energy(r: np.ndarray, grid_r: np.ndarray, force: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Exact integral of the piecewise-linear force: U(r) = U(r_{k+1}) + int_r^{r_{k+1}} f ds."""
    r = np.asarray(r, dtype=np.float64)
    h = grid_r[1] - grid_r[0]
    kmax = len(grid_r) - 2
    k = np.clip(np.floor(r / h).astype(np.int64), 0, kmax)
    t = r / h - k
    out = energy[k + 1] + h * (force[k] * (1.0 - t) ** 2 / 2.0 + force[k + 1] * (1.0 - t ** 2) / 2.0)
    return np.where((r >= 0) & (r < grid_r[-1]), out, 0.0)


def check_type_names(type_names: list[str], ds: CGDataset) -> None:
    """ValueError unless the data set ``ds`` has the bead type names ``type_names``, in that order."""
    if list(ds.type_names) != list(type_names):
        state = ds.metadata.get("state")
        raise ValueError(f"data sets have mismatched bead type names: {list(ds.type_names)} "
                         f"(state {state}) vs {list(type_names)}; all data sets (and the force field) "
                         "must use the same type names in the same order")



# -- the model ---------------------------------------------------------------------------------

@dataclass
class PairModel:
    """A tabulated pair force field (per pair of bead types) plus the analytic repulsive prior, as simulated.

    Arrays follow the file format table of :mod:`openmm_cgnn.baselines` (whose ``PairForceField`` adds
    fitting and files to this class). ``force``/``energy`` exclude the prior.
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
        return int(pair_index_matrix(len(self.type_names))[a, b])

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
        box = box_vectors_nm(box)
        types = self._bead_types(len(pos), bead_types)
        i, j, d = pair_distances(pos, box, self.cutoff)
        r = np.linalg.norm(d, axis=1)
        keep = r < self.cutoff
        i, j, d, r = i[keep], j[keep], d[keep], r[keep]
        pidx = pair_index_matrix(len(self.type_names))[types[i], types[j]]
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
            check_type_names(self.type_names, ds)
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

        The forces are those of :meth:`add_forces`. Masses (amu) come from ``bead_masses`` or else from
        the atoms' elements (CG topologies have none); bead types from ``bead_types`` or else from the
        atom names matched to ``type_names``. The periodic box comes from
        ``cg_topology.getPeriodicBoxVectors()``; every width must be at least twice the cutoff. A fitted
        volume term (``self.volume``) is added as a box-only TorchForce; ``temperature`` (K) sets its run
        temperature. (``MLPotential("cgpair", model=...)`` makes the same System.)
        """
        import openmm
        from openmm import unit

        n = cg_topology.getNumAtoms()
        masses = _bead_masses(cg_topology, bead_masses, None, argument="bead_masses")
        types = (bead_type_indices(cg_topology, self.type_names) if bead_types is None
                 else self._bead_types(n, bead_types))
        box = check_box(cg_topology.getPeriodicBoxVectors(), self.cutoff)
        system = openmm.System()
        for m in masses:
            system.addParticle(float(m))
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box])
        for force in self.forces(types, temperature):
            system.addForce(force)
        return system

    def forces(self, bead_types: Sequence[int], temperature: float | None = None) -> list:
        """The OpenMM forces of this model for beads of types ``bead_types`` (indices into ``type_names``).

        One ``CustomNonbondedForce`` (CutoffPeriodic at ``cutoff``, no switching, no long-range
        correction, no exclusions: the fit used every pair) whose energy is the tabulated learned
        energy (natural-spline ``Continuous1DFunction`` per pair type) plus the analytic prior; and,
        when the model has a volume term, that term as a box-only TorchForce at ``temperature`` K.
        """
        import openmm

        types = np.asarray(bead_types, dtype=np.int64)
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
                t, t, pair_index_matrix(t).T.ravel().astype(float).tolist()))
            force.addPerParticleParameter("btype")
            for ty in types:
                force.addParticle([float(ty)])
        else:
            for _ in range(len(types)):
                force.addParticle([])
        out = [configure_cutoff_periodic(force, self.cutoff)]
        if self.volume is not None and not self.volume.is_zero:
            from .volume import volume_torch_force

            out.append(volume_torch_force(self.volume, temperature))
        return out


# -- the OpenMM-ML potential ---------------------------------------------------------------------

def reads(model: Any) -> bool:
    """Whether ``model`` is this potential's: a pair force field file (``.json``) or a loaded PairModel."""
    if isinstance(model, PairModel):
        return True
    return isinstance(model, (str, Path)) and Path(model).suffix == ".json"


def load_model(model: Any) -> PairModel:
    """The pair model of a file (``.json``, :meth:`openmm_cgnn.baselines.PairForceField.load`) or a PairModel."""
    if isinstance(model, PairModel):
        return model
    from .baselines import PairForceField

    return PairForceField.load(model)


def load(model: Any) -> tuple[PairModel, dict, None]:
    """(the PairModel, its metadata, None: no TorchScript module) of a path or a PairModel. The
    metadata has the keys every model has (``type_names``, ``cutoff_nm``, ``prior``) and the fit's
    ``provenance``; ``kind`` is ``"pair"``."""
    pair = load_model(model)
    metadata = {"type_names": list(pair.type_names), "cutoff_nm": float(pair.cutoff),
                "prior": pair.prior.to_dict(), "kind": "pair", "provenance": pair.provenance}
    return pair, metadata, None


def describe(metadata: dict) -> dict[str, Any]:
    """The report entries of a pair force field: kind, label, file format and the fit's data sets."""
    prov = metadata.get("provenance") or {}
    states = [s for s in prov.get("state_points") or [] if s]
    datasets = [{"name": None, "n_frames": f, "n_beads": b, "state": s}
                for s, f, b in zip(prov.get("state_points") or [], prov.get("n_frames") or [],
                                   prov.get("n_beads") or [])]
    return {"kind": "pair", "label": "CG (pair MS-CG)", "format": FORMAT, "network_class": None,
            "tensor_order": None, "dtype": None, "training_state_points": states, "training_datasets": datasets,
            "trained": None}


class CGPairPotentialImpl(MLPotentialImpl):
    """``MLPotential('cgpair', model='pair.json')``: a pair force field (a path or a loaded PairModel)."""

    def __init__(self, name: str, model: Any = None, **args):
        if model is None:
            raise CGSystemError("MLPotential('cgpair') needs model='path/to/pair.json' (a pair force field from "
                                "openmm_cgnn.baselines.fit_pair_force_matching)")
        check_potential("cgpair", model)
        self.model = model

    def addForces(self, topology, system, atoms, forceGroup, masses: Sequence[float] | None = None,
                  temperature: float | None = None, mts_fast: Any = None, **args):
        """The pair force (and volume term) on every bead; beads get ``masses`` (amu), else keep the
        masses of their elements. Options of other potentials (CUDA graphs, neighbour table) are ignored."""
        if mts_fast is not None:
            from .mts import MTSConfigError

            raise MTSConfigError("multiple time stepping splits a network model; a pair force field is cheap "
                                 "already: run it without --mts")
        pair = load_model(self.model)
        require_whole_topology(topology, atoms)
        types = bead_type_indices(topology, pair.type_names)
        check_box(topology.getPeriodicBoxVectors(), pair.cutoff)
        set_bead_masses(system, topology, masses)
        for force in pair.forces(types, temperature):
            force.setForceGroup(forceGroup)
            system.addForce(force)


class CGPairPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, **args) -> CGPairPotentialImpl:
        return CGPairPotentialImpl(name, **args)
