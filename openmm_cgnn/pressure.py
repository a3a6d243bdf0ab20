"""Instantaneous pressure, for all-atom and CG runs alike, and the virial pressure of frames.

Two estimators, both virtual-volume-change (finite-difference) estimators, so that they work for any
force, the TorchForce of a many-body network included:

* in a running OpenMM Context: OpenMM's ``MonteCarloBarostat.computeCurrentPressure(context)``.
  It scales the box by a small factor, rescales the positions of molecule centres (molecules as
  OpenMM defines them: atoms joined by bonds or constraints, i.e. the *molecular* virial for the
  all-atom side, every bead for the CG side whose System has no bonds), differentiates the potential
  energy numerically and adds the kinetic term ``2 K_molecular / (3 V)`` from the current velocities.
  :func:`attach_pressure_probe` adds a disabled barostat (frequency 0) to an NVT System so that the
  estimator can be called; :func:`current_pressure` calls it.
* on stored frames without velocities (used to fit the CG volume term): :func:`virial_pressure`,
  ``P = N k_B T / V - dU/dV``, with ``dU/dV`` from a central difference of the energy under an
  isotropic scaling of box and positions (every particle scaled: the CG beads), and the kinetic term
  from the temperature (its ensemble average).

With a TorchForce in the System, call ``computeCurrentPressure`` with a Langevin (LangevinMiddle)
integrator, as everything here does: it then needs energies only. With a Verlet integrator it also
computes forces for the kinetic energy, and torch's autograd engine refuses to run inside that call
(the Python wrapper holds the GIL): "The autograd engine was called while holding the GIL".

Units: bar for pressures, nm and nm^3 for positions and volumes, kJ/mol for energies, K.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .geometry import as_frames
from .units import BOLTZMANN_KJ_PER_MOL_K

#: 1 kJ/mol/nm^3 in bar (1e3 J / 6.02214076e23 / 1e-27 m^3 / 1e5 Pa).
BAR_PER_KJ_MOL_NM3 = 1e3 / 6.02214076e23 / 1e-27 / 1e5


def attach_pressure_probe(system, temperature: float):
    """The System's Monte Carlo barostat, or a new disabled one (frequency 0) added to it.

    A barostat with frequency 0 never moves the box; it only makes
    ``computeCurrentPressure`` available. ``temperature`` (K) is its nominal temperature (unused by
    the estimator). Call before the Context is created. Returns the barostat.
    """
    import openmm

    for k in range(system.getNumForces()):
        force = system.getForce(k)
        if isinstance(force, openmm.MonteCarloBarostat):
            return force
    probe = openmm.MonteCarloBarostat(1.0, float(temperature), 0)
    probe.setName("PressureProbe")
    system.addForce(probe)
    return probe


def find_barostat_index(system) -> int | None:
    """Index of the System's MonteCarloBarostat (the probe or a real one), or None."""
    import openmm

    for k in range(system.getNumForces()):
        if isinstance(system.getForce(k), openmm.MonteCarloBarostat):
            return k
    return None


def current_pressure(context, barostat) -> float:
    """Instantaneous pressure (bar) of ``context`` from OpenMM's finite-difference estimator.

    ``barostat`` is the MonteCarloBarostat of the context's System (see :func:`attach_pressure_probe`).
    """
    import openmm.unit as u

    value = barostat.computeCurrentPressure(context)
    return float(value.value_in_unit(u.bar) if u.is_quantity(value) else value)


def virial_pressure(energy: Callable[[np.ndarray, np.ndarray], float], positions: np.ndarray, boxes: np.ndarray,
                    temperature: float, rel_dv: float = 1e-4) -> np.ndarray:
    """Pressure (bar) of each frame: ``N k_B T / V - dU/dV`` by a central volume difference.

    :param energy: ``energy(positions (N, 3) nm, box (3, 3) nm rows) -> kJ/mol`` of one frame.
    :param positions: (F, N, 3) nm, every particle scaled with the box (CG beads).
    :param boxes: (F, 3, 3) nm, box vectors as rows.
    :param temperature: K, for the kinetic term ``N k_B T / V``.
    :param rel_dv: relative volume change of the central difference (V (1 +- rel_dv)).
    :return: (F,) pressures in bar.
    """
    positions, boxes = as_frames(positions, boxes)
    n = positions.shape[1]
    out = np.empty(positions.shape[0])
    for f in range(positions.shape[0]):
        volume = abs(float(np.linalg.det(boxes[f])))
        du_dv = _energy_volume_derivative(energy, positions[f], boxes[f], volume, rel_dv)
        out[f] = (n * BOLTZMANN_KJ_PER_MOL_K * temperature / volume - du_dv) * BAR_PER_KJ_MOL_NM3
    return out


def _energy_volume_derivative(energy, pos: np.ndarray, box: np.ndarray, volume: float, rel_dv: float) -> float:
    """dU/dV (kJ/mol/nm^3) by a central difference under isotropic scaling of positions and box."""
    up = (1.0 + rel_dv) ** (1.0 / 3.0)
    down = (1.0 - rel_dv) ** (1.0 / 3.0)
    e_up = energy(pos * up, box * up)
    e_down = energy(pos * down, box * down)
    return (e_up - e_down) / (2.0 * rel_dv * volume)


def mean_and_standard_error(series: np.ndarray, n_blocks: int = 5) -> tuple[float | None, float | None]:
    """Block-averaged mean and standard error of a time series (None, None if it is empty; SE None if
    it is too short for two blocks)."""
    x = np.asarray(series, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None, None
    blocks = min(n_blocks, x.size // 2)
    if blocks < 2:
        return float(np.mean(x)), None
    from .analysis import block_average

    mean, se = block_average(x, blocks)
    return float(mean), float(se)
