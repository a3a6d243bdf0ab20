"""OpenMM reporters for CG runs: one stops a run that has blown up, one records its frames.

Both follow the reporter protocol of ``openmm.app`` (``describeNextReport(simulation)`` and
``report(simulation, state)``, like ``app.StateDataReporter``), so they work with any
``app.Simulation``, not only the ones ``openmm-cgnn simulate`` builds::

    import openmm_cgnn

    simulation = app.Simulation(topology, system, integrator)      # e.g. openmm_cgnn.create_system(...)
    simulation.reporters.append(openmm_cgnn.CGBlowUpReporter.for_model(100, "model.pt", temperature=300.0))
    frames = openmm_cgnn.CGFrameReporter(250)
    simulation.reporters.append(frames)
    simulation.step(10_000)                                            # CGSimulationBlowUpError if it blows up
    frames.save("frames.npz")                                          # the layout of simulate's frames.npz

Add the blow-up reporter before the frame reporter: reporters due at the same step run in list
order, so a frame that fails the checks is never recorded.

Time ``t`` (ps) in messages and frames counts from ``start_step``: ``(step - start_step) * dt`` with
``dt`` the integrator's step size (the outer step of a multiple-time-step integrator). Reports fall
on the steps ``start_step + k * report_interval``. Units: nm, ps, kJ/mol, K, g/cm^3, bar.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from ._checkpoint import FrameStore
from .files import save_npz_atomic
from .errors import CGNNError, ConfigError
from .units import BOLTZMANN_KJ_PER_MOL_K, density_g_cm3

__all__ = ["CGBlowUpReporter", "CGFrameReporter", "CGSimulationBlowUpError", "neighbour_overflow_message"]


class CGSimulationBlowUpError(CGNNError, RuntimeError):
    """The CG simulation became unphysical; the message says when, why, and what to try."""


# -- helpers shared by both reporters ---------------------------------------------------------------

def degrees_of_freedom(system: openmm.System) -> int:
    """Degrees of freedom of ``system``: 3 per massive particle, less constraints and a CMMotionRemover's 3."""
    dof = 3 * sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i) > 0 * u.dalton)
    dof -= system.getNumConstraints()
    if any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces())):
        dof -= 3
    return dof


def total_mass(system: openmm.System) -> float:
    """Sum of the particle masses of ``system``, amu."""
    masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])
    return float(masses.sum())


def _step_size_ps(simulation) -> float:
    return simulation.integrator.getStepSize().value_in_unit(u.picosecond)


def _steps_to_next(simulation, start_step: int, interval: int) -> int:
    """Steps until the next multiple of ``interval`` after ``start_step`` (a whole interval when on one)."""
    done = (simulation.currentStep - start_step) % interval
    return interval - done


class _Schedule:
    """Reports every ``report_interval`` steps counted from ``start_step``; t = 0 at ``start_step``."""

    def __init__(self, report_interval: int, start_step: int = 0):
        if int(report_interval) != report_interval or report_interval < 1:
            raise ConfigError(f"report_interval must be a whole number of steps >= 1, got {report_interval!r}",
                              "report_interval")
        self.report_interval = int(report_interval)
        self.start_step = int(start_step)
        self._system_facts: tuple[int, float] | None = None   # (degrees of freedom, total mass amu)

    def time_ps(self, simulation) -> float:
        """Time since ``start_step``, ps."""
        return (simulation.currentStep - self.start_step) * _step_size_ps(simulation)

    def system_facts(self, simulation) -> tuple[int, float]:
        if self._system_facts is None:
            self._system_facts = (degrees_of_freedom(simulation.system), total_mass(simulation.system))
        return self._system_facts


# -- the blow-up reporter -----------------------------------------------------------------------------

class CGBlowUpReporter(_Schedule):
    """Stops a simulation that has become unphysical by raising :class:`CGSimulationBlowUpError`.

    Every ``report_interval`` steps it checks that the energy, forces and positions are finite, that the
    temperature stays below ``max_temperature_factor`` times ``temperature``, that no two beads came closer
    than ``overlap_margin`` inside the repulsive prior's taper, and (if ``max_displacement`` is given) that
    no bead moved farther than that between two reports. Where energies turn non-finite or beads overlap,
    an exported model's neighbour table is checked for an overflow; the message then names the fix
    (``--neighbour-capacity``).

    :param report_interval: steps between checks.
    :param temperature: target temperature, K; None: the integrator's (``getTemperature``), if it has one;
        no temperature check without either.
    :param max_temperature_factor: the run stops above this multiple of ``temperature``.
    :param prior_taper: nm, where the model's repulsive prior starts (``metadata["prior"]["taper"]``);
        None: no overlap check.
    :param overlap_margin: nm inside ``prior_taper`` that counts as an overlap.
    :param max_displacement: nm a bead may move between two checks (minimum image); None: no check.
    :param module: the exported TorchScript model, to tell a neighbour-table overflow from a blow-up.
    :param start_step: the step at which t = 0 and from which checks are counted.
    """

    def __init__(self, report_interval: int, temperature: float | None = None, max_temperature_factor: float = 3.0,
                 prior_taper: float | None = None, overlap_margin: float = 0.05,
                 max_displacement: float | None = None, module: Any = None, start_step: int = 0):
        super().__init__(report_interval, start_step)
        self.temperature = temperature
        self.max_temperature_factor = float(max_temperature_factor)
        self.prior_taper = prior_taper
        self.overlap_margin = float(overlap_margin)
        self.max_displacement = max_displacement
        self.module = module
        self.last_good: tuple[np.ndarray, np.ndarray] | None = None   # positions, box (nm) last seen sane

    @classmethod
    def for_model(cls, report_interval: int, model: Any, **options: Any) -> "CGBlowUpReporter":
        """The reporter for a CG model: ``model`` is an exported model file (``.pt``) or pair force field
        (``.json``), a :class:`~openmm_cgnn.system.CGModel`, or a ``(module, metadata)`` pair from
        ``load_exported``; its prior's taper and (for a network) its module fill ``prior_taper`` and
        ``module``. ``options`` are the other arguments of the constructor."""
        if isinstance(model, (str, Path)):
            from .system import CGModel

            model = CGModel(model)
        if isinstance(model, tuple):
            module, metadata = model
        else:
            module, metadata = getattr(model, "module", None), model.metadata
        taper = (metadata.get("prior") or {}).get("taper")
        return cls(report_interval, prior_taper=taper, module=module, **options)

    @property
    def min_distance(self) -> float | None:
        """Pairs closer than this (nm) count as overlapping; None: no overlap check."""
        return (self.prior_taper - self.overlap_margin) if self.prior_taper else None

    def describeNextReport(self, simulation) -> dict[str, Any]:
        return {"steps": _steps_to_next(simulation, self.start_step, self.report_interval), "periodic": False,
                "include": ["positions", "energy", "forces"]}

    def report(self, simulation, state: openmm.State) -> None:
        """Check ``state``; CGSimulationBlowUpError if it is unphysical."""
        self.check(simulation, state)

    def remember(self, positions: np.ndarray, box: np.ndarray) -> None:
        """Take ``positions`` (N, 3) and ``box`` (3, 3), nm, as the last sane configuration (e.g. the start)."""
        self.last_good = (np.asarray(positions), np.asarray(box))

    def check(self, simulation, state: openmm.State) -> dict[str, float]:
        """Check ``state`` of ``simulation`` (positions and energies; forces if the state has them).

        Returns the frame's potential energy (kJ/mol), temperature (K), volume (nm^3) and density
        (g/cm^3); raises CGSimulationBlowUpError if the frame is unphysical.
        """
        t = self.time_ps(simulation)
        dof, mass = self.system_facts(simulation)
        energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        temperature = 2.0 * kinetic / (dof * BOLTZMANN_KJ_PER_MOL_K)
        volume = float(abs(np.linalg.det(box)))
        if not (math.isfinite(energy) and math.isfinite(kinetic) and np.isfinite(positions).all()):
            if np.isfinite(positions).all():
                self.last_good = (positions, box)
            raise CGSimulationBlowUpError(self.explain_non_finite(t))
        if not _forces_finite(state):
            self.last_good = (positions, box)
            raise CGSimulationBlowUpError(self.explain_non_finite(t, what="forces"))
        target = self.temperature if self.temperature is not None else _integrator_temperature(simulation)
        if target is not None and temperature > self.max_temperature_factor * target:
            raise CGSimulationBlowUpError(
                f"the temperature ran away to {temperature:.0f} K (target {target} K) at t = {t:.3f} ps")
        if self.min_distance is not None:
            closest = closest_pair(positions, box, self.min_distance)
            if closest is not None:
                overflow = neighbour_overflow_message(self.module, positions, box)
                if overflow:
                    raise CGSimulationBlowUpError(f"at t = {t:.3f} ps {overflow}")
                raise CGSimulationBlowUpError(
                    f"beads came {closest:.3f} nm apart at t = {t:.3f} ps, far inside the repulsive prior "
                    f"(which starts at {self.prior_taper:.3f} nm)")
        if self.max_displacement is not None and self.last_good is not None:
            moved, bead = _largest_displacement(self.last_good[0], positions, box)
            if moved > self.max_displacement:
                raise CGSimulationBlowUpError(
                    f"bead {bead} moved {moved:.3f} nm in the {self.report_interval} steps before t = {t:.3f} ps "
                    f"(more than max_displacement = {self.max_displacement:g} nm); try a smaller time step")
        self.last_good = (positions, box)
        return {"potential_energy": energy, "temperature": temperature, "volume": volume,
                "density": density_g_cm3(mass, volume)}

    def explain_non_finite(self, t: float, what: str = "energy or positions") -> str:
        """Why the ``what`` stopped being finite at ``t`` (ps): a neighbour-table overflow of the model
        (checked on the last sane configuration) or an unphysical run."""
        if self.last_good is not None:
            overflow = neighbour_overflow_message(self.module, *self.last_good)
            if overflow:
                return f"at t = {t:.3f} ps {overflow}"
        hint = ""
        if self.module is not None and hasattr(self.module, "table_capacity"):
            hint = (f" (if the liquid became denser than the training data, the model's neighbour table of "
                    f"{int(self.module.table_capacity)} slots may have overflowed: try a larger --neighbour-capacity)")
        return f"the {what} stopped being finite at t = {t:.3f} ps{hint}"


def neighbour_overflow_message(module: Any, positions: np.ndarray, box: np.ndarray) -> str | None:
    """Why the exported model's fixed neighbour table could not hold this configuration, with the fix;
    None when it could (or the model has no fixed table). Positions (N, 3) and box (3, 3) in nm."""
    import torch

    if module is None or not hasattr(module, "overflowed"):
        return None
    pos, cell = torch.tensor(positions), torch.tensor(box)
    if not module.overflowed(pos, cell):
        return None
    needed = int(module.max_neighbours(pos, cell))
    if needed > int(module.table_capacity):
        return (f"a bead has {needed} neighbours within the model's cutoff but the neighbour table holds "
                f"{int(module.table_capacity)} (a denser state than the training data); rerun with "
                f"--neighbour-capacity {int(math.ceil(1.25 * needed))}")
    return ("the box changed so much since the run started that the model's cell grid no longer fits it "
            "(the neighbour table overflowed); restart the run from its last frame")


def closest_pair(positions: np.ndarray, box: np.ndarray, below: float) -> float | None:
    """The smallest periodic pair distance (nm) if any pair is closer than ``below`` nm, else None.
    Positions (N, 3) and box (3, 3) in nm."""
    from vesin import NeighborList

    d = NeighborList(cutoff=below, full_list=False).compute(points=positions, box=box, periodic=True,
                                                            quantities="d")
    d = d[0] if isinstance(d, (list, tuple)) else d
    return float(np.min(d)) if len(d) else None


def _forces_finite(state: openmm.State) -> bool:
    try:
        forces = state.getForces(asNumpy=True)
    except openmm.OpenMMException:  # a state without forces (check() called by hand)
        return True
    return bool(np.isfinite(np.asarray(forces.value_in_unit(u.kilojoule_per_mole / u.nanometer))).all())


def _integrator_temperature(simulation) -> float | None:
    integrator = simulation.integrator
    if not hasattr(integrator, "getTemperature"):
        return None
    return integrator.getTemperature().value_in_unit(u.kelvin)


def _largest_displacement(before: np.ndarray, after: np.ndarray, box: np.ndarray) -> tuple[float, int]:
    """The largest minimum-image displacement (nm) between two configurations and its bead."""
    delta = np.asarray(after, float) - np.asarray(before, float)
    frac = delta @ np.linalg.inv(box)
    delta = (frac - np.round(frac)) @ box
    moved = np.linalg.norm(delta, axis=1)
    bead = int(np.argmax(moved))
    return float(moved[bead]), bead


# -- the frame reporter ---------------------------------------------------------------------------------

FRAME_UNITS = {"positions": "nm", "boxes": "nm", "potential_energy": "kJ/mol", "temperature": "K",
               "density": "g/cm^3", "time": "ps", "pressure": "bar", "forces": "kJ/mol/nm"}


class CGFrameReporter(_Schedule):
    """Records frames of a simulation in the layout of ``openmm-cgnn simulate``'s ``frames.npz``.

    Each frame holds positions (N, 3) nm (float32, not wrapped into the box), the box (3, 3) nm, the
    potential energy kJ/mol, the temperature K (from the kinetic energy and the System's degrees of
    freedom), the density g/cm^3, the time ps and the instantaneous pressure bar (OpenMM's
    finite-difference estimator of the System's MonteCarloBarostat, a disabled one included; NaN for a
    System without one); with ``forces=True`` also the forces (N, 3) kJ/mol/nm (float32).

    :param report_interval: steps between frames.
    :param forces: record the forces too.
    :param barostat: the MonteCarloBarostat for the pressure (default: the System's, if any).
    :param start_step: the step at which t = 0 and from which frames are counted.
    """

    def __init__(self, report_interval: int, forces: bool = False, barostat: Any = None, start_step: int = 0):
        super().__init__(report_interval, start_step)
        self.forces = bool(forces)
        self.barostat = barostat
        self.frames: FrameStore | None = None

    def describeNextReport(self, simulation) -> dict[str, Any]:
        include = ["positions", "energy"] + (["forces"] if self.forces else [])
        return {"steps": _steps_to_next(simulation, self.start_step, self.report_interval), "periodic": False,
                "include": include}

    def report(self, simulation, state: openmm.State) -> None:
        """Append the frame of ``state``."""
        frames = self.frame_store(simulation.system.getNumParticles())
        dof, mass = self.system_facts(simulation)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        volume = float(abs(np.linalg.det(box)))
        kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        frame = {"positions": state.getPositions(asNumpy=True).value_in_unit(u.nanometer), "boxes": box,
                 "potential_energy": state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                 "temperature": 2.0 * kinetic / (dof * BOLTZMANN_KJ_PER_MOL_K),
                 "density": density_g_cm3(mass, volume), "time": self.time_ps(simulation),
                 "pressure": self._pressure(simulation)}
        if self.forces:
            frame["forces"] = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        frames.add(**frame)

    def frame_store(self, n_particles: int) -> FrameStore:
        """The store the frames go to (made on first use; a checkpointed run saves and restores it)."""
        if self.frames is None:
            shapes = {"positions": ((n_particles, 3), np.float32), "boxes": ((3, 3), np.float64),
                      "potential_energy": ((), np.float64), "temperature": ((), np.float64),
                      "density": ((), np.float64), "time": ((), np.float64), "pressure": ((), np.float64)}
            if self.forces:
                shapes["forces"] = ((n_particles, 3), np.float32)
            self.frames = FrameStore(shapes)
        return self.frames

    def __len__(self) -> int:
        return 0 if self.frames is None else len(self.frames)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recorded frames as arrays (F leading), by name (see the class docstring)."""
        if self.frames is None:
            raise CGNNError("no frame has been recorded yet: run the simulation with this reporter first")
        return self.frames.arrays()

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the frames to ``path`` (NPZ, atomically) with ``metadata_json`` (``metadata`` plus the
        units), readable by :func:`openmm_cgnn.simulate.load_cg_frames`' layout."""
        info = {"units": {k: FRAME_UNITS[k] for k in self.arrays()}, "n_frames": len(self), **(metadata or {})}
        return save_npz_atomic(path, metadata_json=np.array(json.dumps(info, default=str)), **self.arrays())

    def _pressure(self, simulation) -> float:
        from .pressure import current_pressure, find_barostat_index

        if self.barostat is None:
            index = find_barostat_index(simulation.system)
            if index is None:
                return float("nan")
            self.barostat = simulation.system.getForce(index)
        return current_pressure(simulation.context, self.barostat)
