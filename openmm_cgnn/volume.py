"""The CG volume term U_V(V, N, T) and its fit by pressure matching.

Force matching fixes the CG potential's dependence on the bead positions at the training density,
but not its dependence on the volume: the many-body potential of mean force has a part that depends
on V alone, which puts no force on any bead and which the mapped forces therefore cannot see. Its
volume derivative is exactly what the CG pressure misses (Das and Andersen, J. Chem. Phys. 132,
164106 (2010)). We add it as

    U_V(V, N, T) = N * [ a (v - v0) + b/2 (v - v0)^2 + c (T - T0) (v - v0) ],   v = V / N,

so that the pressure it adds is ``-dU_V/dV = -(a + b (v - v0) + c (T - T0))`` (per-bead form in the
spirit of Dunn and Noid, J. Chem. Phys. 143, 243148 (2015): the term is extensive and the same model
works for any N). ``a`` (kJ/mol/nm^3) is the pressure offset at the reference volume per bead ``v0``
(nm^3) and temperature ``T0`` (K); ``b`` (kJ/mol/nm^6) corrects the compressibility and ``c``
(kJ/mol/nm^3/K) the temperature trend. Which coefficients are fit depends on what the reference
data determine (:func:`fit_volume_term`): one state point gives ``a`` only; references at two or
more volumes add ``b``; at two or more temperatures add ``c``.

Pressure matching: at each reference state point the correction must be
``dU_V/dV = P_CG - P_AA`` with ``P_AA`` the all-atom pressure recorded with the reference frames (for
NPT references: the imposed pressure, which the barostat fixes exactly) and ``P_CG`` the pressure of
the CG model without the term at the reference volume, measured one of two ways:

* ``"cg-nvt"`` (:func:`cg_nvt_pressures`): a short CG NVT run of the model at the reference volume
  and temperature, OpenMM's estimator every few steps. U_V puts no force on beads, so this run samples
  exactly the ensemble the corrected model will sample at that volume: one run, no iteration.
* ``"mapped"`` (:func:`pressure_point`): the virial pressure of the model on the mapped all-atom
  frames (:func:`openmm_cgnn.pressure.virial_pressure`). Cheap (two energy evaluations per frame),
  but it equals the CG ensemble's pressure only as far as the model reproduces the mapped structure.

:class:`VolumeTerm` is a TorchScript-able module ``forward(box (3, 3) nm, n_beads) -> kJ/mol``. The
exported CG potential carries one (zero coefficients: no term), so ``TorchForce`` and
``MLPotential("cgnn")`` apply it with no extra step; it depends on the box alone, so it puts no force
on beads, and OpenMM's Monte Carlo barostat sees it as part of the potential energy.
:func:`volume_torch_force` makes the same term a force of its own (the pair baseline uses it).
Temperature: with ``c != 0`` the module needs the run temperature, a buffer set by
``openmm_cgnn.system.create_system(..., temperature=T)`` (default: ``T0``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .pressure import BAR_PER_KJ_MOL_NM3, virial_pressure

VOLUME_FORMAT = "openmm-cgnn/volume-term"
VOLUME_UNITS = {"a": "kJ/mol/nm^3", "b": "kJ/mol/nm^6", "c": "kJ/mol/nm^3/K", "v0": "nm^3", "t0": "K",
                "pressure": "bar"}


@dataclass
class VolumeTermParams:
    """Coefficients of U_V (see the module docstring). All zero: no volume term."""

    a: float = 0.0          # kJ/mol/nm^3: pressure offset at (v0, t0); 1 kJ/mol/nm^3 = 16.6 bar
    b: float = 0.0          # kJ/mol/nm^6: compressibility correction
    c: float = 0.0          # kJ/mol/nm^3/K: temperature trend
    v0: float = 1.0         # nm^3 per bead: reference volume
    t0: float = 300.0       # K: reference temperature
    fit: dict[str, Any] = field(default_factory=dict)   # how it was fit (state points, pressures, terms)

    @property
    def is_zero(self) -> bool:
        return self.a == 0.0 and self.b == 0.0 and self.c == 0.0

    def du_dv(self, volume_per_bead: float | np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
        """dU_V/dV (kJ/mol/nm^3) at ``volume_per_bead`` (nm^3) and ``temperature`` (K)."""
        dv = np.asarray(volume_per_bead, dtype=np.float64) - self.v0
        return self.a + self.b * dv + self.c * (np.asarray(temperature, dtype=np.float64) - self.t0)

    def energy(self, volume: float, n_beads: int, temperature: float | None = None) -> float:
        """U_V (kJ/mol) of ``n_beads`` in ``volume`` nm^3 at ``temperature`` K (default t0)."""
        t = self.t0 if temperature is None else temperature
        dv = volume / n_beads - self.v0
        return float(n_beads * dv * (self.a + 0.5 * self.b * dv + self.c * (t - self.t0)))

    def to_dict(self) -> dict[str, Any]:
        return {"format": VOLUME_FORMAT, "version": 1, "units": VOLUME_UNITS, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VolumeTermParams":
        if d.get("format", VOLUME_FORMAT) != VOLUME_FORMAT:
            from .errors import InputFileError

            raise InputFileError(f"not a volume term: format {d.get('format')!r}, expected {VOLUME_FORMAT!r}")
        return cls(**{k: d[k] for k in ("a", "b", "c", "v0", "t0") if k in d}, fit=dict(d.get("fit") or {}))

    def save(self, path: str | Path) -> Path:
        from .files import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "VolumeTermParams":
        return cls.from_dict(json.loads(Path(path).read_text()))


class VolumeTerm(torch.nn.Module):
    """TorchScript-able U_V: ``forward(box (3, 3) nm rows, n_beads) -> energy (scalar, kJ/mol)``.

    The volume is the determinant of the box rows, computed as ``a . (b x c)`` on the device, with no
    host synchronisation. Coefficients are buffers (not trained); ``temperature`` (K) is a buffer set
    with :meth:`set_temperature` (it matters only when ``c != 0``).
    """

    def __init__(self, params: VolumeTermParams | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        p = params if params is not None else VolumeTermParams()
        self.register_buffer("coeffs", torch.tensor([p.a, p.b, p.c], dtype=dtype))
        self.register_buffer("v0", torch.tensor(p.v0, dtype=dtype))
        self.register_buffer("t0", torch.tensor(p.t0, dtype=dtype))
        self.register_buffer("temperature", torch.tensor(p.t0, dtype=dtype))

    @torch.jit.export
    def set_temperature(self, temperature: float) -> None:
        """Set the run temperature (K) used by the temperature-trend coefficient."""
        self.temperature.fill_(temperature)

    def forward(self, box: Tensor, n_beads: int) -> Tensor:
        return self.at_temperature(box, n_beads, self.temperature)

    @torch.jit.export
    def at_temperature(self, box: Tensor, n_beads: int, temperature: Tensor) -> Tensor:
        """U_V (kJ/mol) at ``temperature`` (K, a one-element tensor) instead of the buffer's (a
        temperature-aware model passes its run temperature, the TorchForce parameter)."""
        box = box.to(self.coeffs.dtype)
        volume = torch.abs(torch.dot(box[0], torch.linalg.cross(box[1], box[2])))
        dv = volume / n_beads - self.v0        # tensor ops only: no host synchronisation
        t = temperature.to(self.coeffs.dtype).reshape(())
        per_bead = dv * (self.coeffs[0] + 0.5 * self.coeffs[1] * dv + self.coeffs[2] * (t - self.t0))
        return per_bead * n_beads

    @torch.jit.export
    def temperature_derivative(self, box: Tensor, n_beads: int) -> Tensor:
        """dU_V/dT (kJ/mol/K) = N c (v - v0): U_V is linear in T."""
        box = box.to(self.coeffs.dtype)
        volume = torch.abs(torch.dot(box[0], torch.linalg.cross(box[1], box[2])))
        return (volume / n_beads - self.v0) * self.coeffs[2] * n_beads


class VolumeOnlyPotential(torch.nn.Module):
    """``forward(positions (N, 3), boxvectors (3, 3)) -> U_V``: the volume term as a TorchForce of its
    own (for force fields that are not our exported module, e.g. the pair baseline). The positions
    enter only as ``0 * sum``, so that openmm-torch's gradient exists and is exactly zero."""

    def __init__(self, params: VolumeTermParams, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.volume_term = VolumeTerm(params, dtype)

    def forward(self, positions: Tensor, boxvectors: Tensor) -> Tensor:
        n = positions.shape[0]
        zero = 0.0 * positions.to(self.volume_term.coeffs.dtype).sum()
        return self.volume_term(boxvectors, n) + zero


def volume_torch_force(params: VolumeTermParams, temperature: float | None = None):
    """An openmm-torch ``TorchForce`` that adds U_V (and no particle force) to a System."""
    import openmmtorch

    module = VolumeOnlyPotential(params)
    if temperature is not None:
        module.volume_term.set_temperature(float(temperature))
    force = openmmtorch.TorchForce(torch.jit.script(module))
    force.setUsesPeriodicBoundaryConditions(True)
    force.setName("CGVolumeTerm")
    return force


# ----------------------------------------------------------------------------------------------
# pressure matching
# ----------------------------------------------------------------------------------------------
@dataclass
class PressurePoint:
    """One reference state point for pressure matching. Pressures in bar (mean and standard error),
    ``volume_per_bead`` in nm^3, ``temperature`` in K."""

    temperature: float
    volume_per_bead: float
    p_ref: float
    p_ref_se: float
    p_cg: float
    p_cg_se: float
    delta_se: float | None = None   # standard error of the paired difference p_cg - p_ref
    n_frames: int = 0
    label: str = ""
    p_ref_measured: float | None = None   # mean recorded all-atom pressure (bar) when p_ref is the imposed one

    @property
    def delta(self) -> float:
        """P_CG - P_AA (bar): what dU_V/dV must supply."""
        return self.p_cg - self.p_ref

    @property
    def sigma(self) -> float:
        se = self.delta_se if self.delta_se is not None else math.hypot(self.p_ref_se, self.p_cg_se)
        return max(float(se), 1e-6)


def pressure_point(energy: Callable[[np.ndarray, np.ndarray], float], positions: np.ndarray, boxes: np.ndarray,
                   p_ref: np.ndarray, temperature: float, n_blocks: int = 5, label: str = "",
                   imposed_pressure: float | None = None) -> PressurePoint:
    """Measure one :class:`PressurePoint`: the CG virial pressure of ``energy`` (the model without
    volume term) on the mapped frames against the recorded all-atom pressures ``p_ref`` (F,) bar.

    For NPT reference frames pass ``imposed_pressure`` (bar): the barostat fixes the mean all-atom
    pressure exactly, so it is the target (with no error) rather than the noisy recorded mean."""
    from .pressure import mean_and_standard_error

    p_cg = virial_pressure(energy, positions, boxes, temperature)
    p_ref = np.asarray(p_ref, dtype=np.float64)
    m_ref, se_ref = mean_and_standard_error(p_ref, n_blocks)
    m_cg, se_cg = mean_and_standard_error(p_cg, n_blocks)
    _, se_delta = mean_and_standard_error(p_cg - p_ref, n_blocks)
    volumes = np.abs(np.linalg.det(np.asarray(boxes, dtype=np.float64)))
    v = float(np.mean(volumes)) / positions.shape[1]
    if imposed_pressure is not None:
        return PressurePoint(float(temperature), v, float(imposed_pressure), 0.0, m_cg, se_cg or 0.0, se_cg,
                             len(p_ref), label, p_ref_measured=m_ref)
    return PressurePoint(float(temperature), v, m_ref, se_ref or 0.0, m_cg, se_cg or 0.0, se_delta, len(p_ref), label)


def fit_volume_term(points: Sequence[PressurePoint], rel_volume_spread: float = 0.01,
                    temperature_spread: float = 1.0) -> VolumeTermParams:
    """Fit U_V to pressure-matching points by weighted least squares of dU_V/dV = P_CG - P_AA.

    Terms, in this order, while the data determine them: ``a`` always; ``c`` (temperature trend)
    when the points span more than ``temperature_spread`` K; ``b`` (compressibility) when they span
    more than ``rel_volume_spread`` in volume per bead. A term is added only when there are more
    points than terms already chosen (no under-determined fit). Weights: 1 / standard error^2.
    ``v0`` and ``t0`` are the weighted mean volume per bead and temperature.
    """
    if not points:
        raise ValueError("pressure matching needs at least one reference state point with pressures")
    w = np.array([1.0 / (p.sigma / BAR_PER_KJ_MOL_NM3) ** 2 for p in points])   # 1 / (kJ/mol/nm^3)^2
    v = np.array([p.volume_per_bead for p in points])
    t = np.array([p.temperature for p in points])
    y = np.array([p.delta for p in points]) / BAR_PER_KJ_MOL_NM3          # kJ/mol/nm^3
    v0 = float(np.sum(w * v) / np.sum(w))
    t0 = float(np.sum(w * t) / np.sum(w))
    columns, names = [np.ones(len(points))], ["a"]
    if np.ptp(t) > temperature_spread and len(points) > len(columns):
        columns.append(t - t0)
        names.append("c")
    if np.ptp(v) > rel_volume_spread * v0 and len(points) > len(columns):
        columns.append(v - v0)
        names.append("b")
    design = np.stack(columns, axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    values = dict(zip(names, (float(x) for x in coef)))
    cov = np.linalg.pinv((design * w[:, None]).T @ design)
    fit = {
        "method": "pressure matching: dU_V/dV = P_CG(mapped frames, no volume term) - P_AA",
        "terms": names,
        "coefficient_se": {n: float(math.sqrt(max(cov[k, k], 0.0))) for k, n in enumerate(names)},
        "points": [{**asdict(p), "delta": p.delta} for p in points],
    }
    return VolumeTermParams(a=values.get("a", 0.0), b=values.get("b", 0.0), c=values.get("c", 0.0),
                            v0=v0, t0=t0, fit=fit)


def cg_nvt_pressures(module: Any, ds: Any, temperature: float, production_ps: float, equilibration_ps: float,
                     sample_every: int = 25, timestep_ps: float = 0.002, seed: int = 0,
                     platform: str | None = None, torch_threads: int | None = 1,
                     temperature_aware: dict | None = None) -> np.ndarray:
    """Instantaneous pressures (bar) of a CG NVT run of ``module`` (the scripted CG potential without
    volume term, or a pair force field with ``create_system``) at the mean volume of data set ``ds``,
    from its last frame scaled to that volume.

    Langevin (LangevinMiddle, 1/ps) at ``temperature`` K; ``equilibration_ps`` then ``production_ps``,
    a sample every ``sample_every`` steps (OpenMM's finite-difference estimator, every bead scaled).
    On the CPU platform torch runs with ``torch_threads`` intra-op threads (as the harness does; None:
    torch's default), restored afterwards. ``temperature_aware``: the ``temperature_aware`` metadata of a
    temperature-aware module (:mod:`openmm_cgnn.thermal`), which then runs at ``temperature`` (its
    TorchForce parameter).
    """
    import openmm
    import openmm.unit as unit

    from .pressure import attach_pressure_probe, current_pressure
    from .reference import choose_platform, platform_properties
    from .system import create_system
    from .system import cg_topology_from_dataset

    volumes = np.abs(np.linalg.det(ds.boxes))
    scale = (float(np.mean(volumes)) / float(volumes[-1])) ** (1.0 / 3.0)
    box = ds.boxes[-1] * scale
    positions = ds.positions[-1] * scale
    topology = cg_topology_from_dataset(ds, ds.n_frames - 1)
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    if hasattr(module, "create_system"):          # a pair force field (openmm_cgnn.baselines)
        system = module.create_system(topology, bead_masses=ds.bead_masses, bead_types=ds.bead_types)
    else:
        metadata = {"cutoff_nm": float(module.cutoff_nm), "type_names": list(ds.type_names)}
        if temperature_aware is None:
            system = create_system(topology, (module, metadata), masses=list(ds.bead_masses))
        else:
            system = create_system(topology, (module, {**metadata, "temperature_aware": temperature_aware}),
                                   masses=list(ds.bead_masses), temperature=temperature)
    probe = attach_pressure_probe(system, temperature)
    integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0, timestep_ps)
    integrator.setRandomNumberSeed(seed)
    chosen = choose_platform(platform)
    context = openmm.Context(system, integrator, chosen, platform_properties(chosen))
    context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    context.setPositions(positions)
    context.setVelocitiesToTemperature(temperature, seed)
    threads = torch.get_num_threads()
    if torch_threads is not None and chosen.getName() == "CPU":
        torch.set_num_threads(int(torch_threads))
    try:
        integrator.step(int(round(equilibration_ps / timestep_ps)))
        n_samples = max(2, int(round(production_ps / timestep_ps / sample_every)))
        out = np.empty(n_samples)
        for k in range(n_samples):
            integrator.step(sample_every)
            out[k] = current_pressure(context, probe)
    finally:
        torch.set_num_threads(threads)
    return out


def pressure_point_from_run(p_cg: np.ndarray, ds: Any, n_blocks: int = 5, label: str = "") -> PressurePoint:
    """A :class:`PressurePoint` from CG-run pressures ``p_cg`` (bar) at the volume of data set ``ds``
    against its recorded all-atom pressures (or its imposed pressure for NPT references)."""
    from .pressure import mean_and_standard_error

    m_cg, se_cg = mean_and_standard_error(p_cg, n_blocks)
    m_ref, se_ref = mean_and_standard_error(ds.pressure, n_blocks)
    v = float(np.mean(np.abs(np.linalg.det(ds.boxes)))) / ds.n_beads
    imposed = (ds.state or {}).get("pressure_bar")
    if imposed is not None:
        return PressurePoint(ds.temperature, v, float(imposed), 0.0, m_cg, se_cg or 0.0, se_cg, len(p_cg), label,
                             p_ref_measured=m_ref)
    return PressurePoint(ds.temperature, v, m_ref, se_ref or 0.0, m_cg, se_cg or 0.0, None, len(p_cg), label)


def fit_from_datasets(datasets: Sequence[Any], energy_for: Callable[[Any], Callable[[np.ndarray, np.ndarray], float]],
                      max_frames: int = 100, labels: Sequence[str] | None = None) -> VolumeTermParams | None:
    """Pressure-match the CG model without volume term to CG data sets that carry all-atom pressures
    (``CGDataset.pressure``). ``energy_for(dataset)`` returns ``energy(positions nm, box nm) -> kJ/mol``
    for that data set's beads. Uses at most ``max_frames`` evenly spaced frames per data set. Returns
    None when a data set has no pressures."""
    if not datasets or any(getattr(ds, "pressure", None) is None for ds in datasets):
        return None
    points = []
    for k, ds in enumerate(datasets):
        idx = np.unique(np.linspace(0, ds.n_frames - 1, min(max_frames, ds.n_frames)).round().astype(int))
        label = labels[k] if labels is not None else f"data set {k}"
        imposed = (ds.state or {}).get("pressure_bar")
        points.append(pressure_point(energy_for(ds), ds.positions[idx], ds.boxes[idx], ds.pressure[idx], ds.temperature,
                                     label=label, imposed_pressure=None if imposed is None else float(imposed)))
    return fit_volume_term(points)


def torch_energy_function(module: torch.nn.Module) -> Callable[[np.ndarray, np.ndarray], float]:
    """``energy(positions nm, box nm) -> kJ/mol`` (float) of a CG potential module (eager or scripted)."""
    def energy(pos: np.ndarray, box: np.ndarray) -> float:
        with torch.no_grad():
            return float(module(torch.as_tensor(pos, dtype=torch.float64), torch.as_tensor(box, dtype=torch.float64)))
    return energy


def describe(params: VolumeTermParams) -> str:
    """One line: the fitted terms and what they do to the pressure at (v0, t0)."""
    terms = params.fit.get("terms", [])
    se = params.fit.get("coefficient_se", {}).get("a")
    parts = [f"shifts the CG pressure by {-params.a * BAR_PER_KJ_MOL_NM3:+.0f}"
             + (f" +- {se * BAR_PER_KJ_MOL_NM3:.0f}" if se is not None else "")
             + f" bar at v0 = {params.v0:.5f} nm^3/bead, T0 = {params.t0:g} K"]
    if "b" in terms:
        parts.append(f"compressibility term b = {params.b:.4g} kJ/mol/nm^6")
    if "c" in terms:
        parts.append(f"temperature trend c = {params.c * BAR_PER_KJ_MOL_NM3:+.3g} bar/K")
    return "; ".join(parts)
