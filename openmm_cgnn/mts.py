"""Multiple time stepping (MTS, r-RESPA) for CG Systems: a cheap pair force every inner step, the
network every K inner steps.

The exported model stays as it is. The System's forces are split into two force groups::

    fast group (FAST_GROUP = 0):  + U_fast                        evaluated every inner step
    slow group (SLOW_GROUP = 1):  U_model - U_fast                evaluated every K inner steps

where ``U_model`` is the TorchForce (network plus repulsive prior) and ``U_fast`` a pair potential
run as a ``CustomNonbondedForce``: the model's own repulsive prior (``fast="prior"``, parameters
from the model metadata) or a force-matched pair force field from :mod:`openmm_cgnn.baselines`
(``fast="pair.json"``: its tabulated pair force plus its prior). The slow group holds the model and
a copy of the fast force with the opposite sign, so the two groups sum to exactly the model, for
any choice of fast force: the choice changes only how well the slow remainder varies slowly.
Forces other than the model (bonded terms, a CMMotionRemover, ...) keep group 0 and so run every
inner step.

Time steps: ``timestep`` below is always the inner step (ps); the integrator's step is the outer
one, ``K * timestep``. OpenMM's ``MTSLangevinIntegrator`` (BAOAB-RESPA) drives NVT/NPT runs and
``MTSIntegrator`` (velocity-Verlet RESPA) the NVE energy checks.

Units: nm, ps, kJ/mol, K, 1/ps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from .cgpair import configure_cutoff_periodic
from .errors import ConfigError
from .prior import PriorParams

FAST_GROUP = 0
SLOW_GROUP = 1
FAST_PRIOR = "prior"

FastSpec = Union[str, Path, Any]   # "prior", a pair force field file (.json), or a PairForceField


class MTSConfigError(ConfigError):
    """Multiple time stepping cannot be set up as asked (bad substep count, fast force, model kind)."""


def check_substeps(substeps: Any) -> int:
    """``substeps`` (K, inner steps per network evaluation) as an int >= 1, else MTSConfigError."""
    if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or int(substeps) < 1:
        raise MTSConfigError(f"--mts must be a whole number of inner steps >= 1 (1: no multiple time stepping), "
                             f"got {substeps!r}", "mts")
    return int(substeps)


def fast_label(fast: FastSpec) -> str:
    """How the fast force is recorded next to outputs: "prior" or the pair file's name."""
    if isinstance(fast, (str, Path)):
        return FAST_PRIOR if str(fast) == FAST_PRIOR else Path(fast).name
    return type(fast).__name__


def _prior_force(prior: PriorParams, n_beads: int, sign: float) -> openmm.CustomNonbondedForce:
    """The repulsive prior U(r) = U0 (exp(-a (r - taper)) - exp(-a (cutoff - taper))), r < cutoff,
    times ``sign``; the same function the exported model evaluates. Constants are written into the
    expression (full double precision), so two copies never share parameters."""
    shift = float(np.exp(-prior.a * (prior.cutoff - prior.taper)))
    expr = (f"{sign!r} * {prior.energy_at_taper!r} * (exp(-{prior.a!r} * (r - {prior.taper!r})) - {shift!r})")
    force = openmm.CustomNonbondedForce(expr)
    for _ in range(n_beads):
        force.addParticle([])
    return configure_cutoff_periodic(force, prior.cutoff)


def _negate_energy(expression: str) -> str:
    """``-(E); definitions`` for a Lepton expression ``E; definitions``."""
    head, sep, rest = expression.partition(";")
    return f"-({head}){sep}{rest}"


def _pair_field(fast: FastSpec):
    from .baselines import PairForceField

    if isinstance(fast, PairForceField):
        return fast
    path = Path(fast)
    if path.suffix != ".json":
        raise MTSConfigError(f"the fast MTS force must be 'prior' or a pair force field file (.json from the "
                             f"pair baseline), got '{fast}'", "mts_fast")
    if not path.exists():
        raise MTSConfigError(f"the fast MTS force file '{path}' does not exist; fit one with "
                             "openmm_cgnn.baselines.fit_pair_force_matching or use --mts-fast prior", "mts_fast")
    return PairForceField.load(path)


def fast_pair_force(fast: FastSpec, topology: app.Topology, metadata: dict,
                    sign: float = 1.0) -> openmm.CustomNonbondedForce:
    """The fast pair force for ``topology``'s beads, times ``sign`` (+1 or -1).

    ``fast``: ``"prior"`` (the repulsive prior recorded in the model ``metadata``), a pair force
    field file (``.json``) or a :class:`~openmm_cgnn.baselines.PairForceField`. A pair force field
    must have the model's bead types; its cutoff must fit in the box (half its width).
    """
    n = topology.getNumAtoms()
    if isinstance(fast, (str, Path)) and str(fast) == FAST_PRIOR:
        prior = metadata.get("prior")
        if not prior:
            raise MTSConfigError("the model records no repulsive prior to use as the fast MTS force; give a pair "
                                 "force field (--mts-fast pair.json)", "mts_fast")
        return _prior_force(PriorParams(**prior), n, sign)
    pair = _pair_field(fast)
    if list(pair.type_names) != list(metadata["type_names"]):
        raise MTSConfigError(f"the fast pair force field has bead types {pair.type_names}, the model "
                             f"{metadata['type_names']}; fit it on data mapped like the model's", "mts_fast")
    try:
        # the pair model's own System builder makes its force; masses do not matter here
        pair_system = pair.create_system(topology, bead_masses=np.ones(n))
    except ValueError as exc:
        raise MTSConfigError(f"the fast pair force field cannot be used here: {exc}", "mts_fast") from None
    # a copy that outlives pair_system (its getForce() points into that System)
    force = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(pair_system.getForce(0)))
    del pair_system
    if sign < 0:
        force.setEnergyFunction(_negate_energy(force.getEnergyFunction()))
    elif sign != 1.0:
        raise ValueError("sign must be +1 or -1")
    return force


def add_fast_split(system: openmm.System, slow_forces: list[int], topology: app.Topology, metadata: dict,
                   fast: FastSpec = FAST_PRIOR) -> dict[str, Any]:
    """Split ``system`` for multiple time stepping, in place.

    The forces at indices ``slow_forces`` (the model) go to SLOW_GROUP; ``+U_fast`` is added in
    FAST_GROUP and ``-U_fast`` in SLOW_GROUP, so the groups sum to the unsplit System. Returns a
    description of the split (groups, fast force) to record next to outputs.
    """
    for index in slow_forces:
        system.getForce(index).setForceGroup(SLOW_GROUP)
    plus = fast_pair_force(fast, topology, metadata, +1.0)
    minus = fast_pair_force(fast, topology, metadata, -1.0)
    plus.setName("CGFastPair")
    minus.setName("CGFastPairNegated")
    plus.setForceGroup(FAST_GROUP)
    minus.setForceGroup(SLOW_GROUP)
    system.addForce(plus)
    system.addForce(minus)
    return {"fast": fast_label(fast), "fast_group": FAST_GROUP, "slow_group": SLOW_GROUP,
            "fast_cutoff_nm": float(plus.getCutoffDistance().value_in_unit(u.nanometer))}


def _groups(substeps: int) -> list[tuple[int, int]]:
    return [(SLOW_GROUP, 1), (FAST_GROUP, substeps)]


def langevin_integrator(temperature: float, friction: float, timestep: float, substeps: int,
                        seed: int | None = None) -> openmm.CustomIntegrator:
    """``MTSLangevinIntegrator`` (BAOAB-RESPA) at ``temperature`` K and ``friction`` 1/ps: the fast
    group every inner ``timestep`` ps, the slow group every ``substeps`` inner steps (one
    integrator step = ``substeps * timestep``)."""
    k = check_substeps(substeps)
    integ = openmm.MTSLangevinIntegrator(temperature * u.kelvin, friction / u.picosecond,
                                         k * timestep * u.picoseconds, _groups(k))
    if seed is not None:
        integ.setRandomNumberSeed(int(seed))
    return integ


def verlet_integrator(timestep: float, substeps: int) -> openmm.CustomIntegrator:
    """``MTSIntegrator`` (velocity-Verlet RESPA, NVE): inner step ``timestep`` ps, the slow group
    every ``substeps`` inner steps (one integrator step = ``substeps * timestep``)."""
    k = check_substeps(substeps)
    return openmm.MTSIntegrator(k * timestep * u.picoseconds, _groups(k))
