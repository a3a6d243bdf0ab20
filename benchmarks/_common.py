"""Shared pieces of the benchmarks: settings per mode, the benchmark models, system builders,
timers, a per-benchmark time budget, device description and the result files.

Everything here speaks OpenMM units (nm, ps, kJ/mol, amu) like the package.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform as _platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openmm.unit as u

from openmm_cgnn.files import cpu_model, json_default
from openmm_cgnn.reporting import format_number, markdown_table
from openmm_cgnn.geometry import box_edge
from openmm_cgnn.units import AVOGADRO, BOLTZMANN_KJ_PER_MOL_K

METHANOL_MASS = 32.042        # amu, one CG bead per molecule
METHANOL_DENSITY = 0.787      # g/cm^3 (the species' default; CG lattices and AA boxes both use it)
TEMPERATURE = 300.0           # K
AA_TIMESTEP_PS = 0.002        # all-atom: 2 fs with constraints on bonds to hydrogen
BEAD_TYPE = "MEOH"
RESULTS_FORMAT = "openmm-cgnn/benchmarks"
RESULTS_VERSION = 1


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Sizes and lengths of every benchmark for one mode ("quick", "full" or "smoke")."""

    mode: str
    archs: list[str]                         # network sizes benchmarked: TrainConfig presets
    budget_s: float                          # wall-time budget of each benchmark
    warmup_steps: int                        # MD steps (or model calls) before timing starts
    min_time_s: float                        # timed wall time per measurement (at least)
    max_chunks: int                          # timed chunks per measurement (median taken)
    # model preparation: synthetic frames per arch (beads per side of the lattice, frames)
    model_frames: dict[str, int]
    # 1. throughput (+ NVE drift on a small system)
    throughput_sizes: list[int]
    drift_timesteps_fs: list[float]
    drift_min_beads: int
    drift_equilibration_ps: float
    drift_nve_ps: float
    drift_threshold: float                   # |drift| in kT/ns per degree of freedom
    drift_samples: int                       # energy samples per NVE run (each costs a force evaluation)
    # 2. TorchForce overhead
    overhead_sizes: list[int]
    # 3. scaling
    scaling_sizes: list[int]
    scaling_aa: bool
    # 4. precision / CUDA options
    precision_size: int
    # 5. training throughput: preset -> batch sizes; batches timed per batch size
    training_batches: dict[str, list[int]]
    training_timed_batches: int
    # profile of one CG step
    profile_size: int

    @classmethod
    def from_preset(cls, mode: str) -> "Settings":
        if mode == "quick":
            return cls(mode="quick", archs=["tiny", "fast", "paper"], budget_s=300.0, warmup_steps=5,
                       min_time_s=2.0, max_chunks=5, model_frames={"tiny": 10, "fast": 5, "paper": 5},
                       throughput_sizes=[64, 512], drift_timesteps_fs=[2.0, 4.0, 5.0, 6.0, 8.0], drift_min_beads=64,
                       drift_equilibration_ps=0.4, drift_nve_ps=1.0, drift_threshold=0.1, drift_samples=20,
                       overhead_sizes=[512], scaling_sizes=[256, 512, 1024, 2048], scaling_aa=True,
                       precision_size=512, training_batches={"tiny": [2, 8], "fast": [1, 4], "paper": [1, 4]},
                       training_timed_batches=3, profile_size=512)
        if mode == "full":
            # sized for a 10-minute window on one H100/H200 (about 1.5 min per benchmark)
            return cls(mode="full", archs=["tiny", "fast", "paper"], budget_s=90.0, warmup_steps=20,
                       min_time_s=3.0, max_chunks=5, model_frames={"tiny": 6, "fast": 6, "paper": 6},
                       throughput_sizes=[512, 4096], drift_timesteps_fs=[2.0, 4.0, 5.0, 6.0, 8.0], drift_min_beads=512,
                       drift_equilibration_ps=2.0, drift_nve_ps=4.0, drift_threshold=0.1, drift_samples=50,
                       overhead_sizes=[512, 4096], scaling_sizes=[512, 1024, 2048, 4096, 8192, 16384, 32768],
                       scaling_aa=True, precision_size=4096,
                       training_batches={"tiny": [2, 8], "fast": [1, 8, 64], "paper": [1, 8, 64]},
                       training_timed_batches=10,
                       profile_size=4096)
        if mode == "smoke":  # tiny sizes for the test suite: checks that every benchmark runs
            return cls(mode="smoke", archs=["tiny"], budget_s=60.0, warmup_steps=4, min_time_s=0.05,
                       max_chunks=2, model_frames={"tiny": 6},
                       throughput_sizes=[64], drift_timesteps_fs=[2.0, 4.0], drift_min_beads=64,
                       drift_equilibration_ps=0.01, drift_nve_ps=0.02, drift_threshold=0.1, drift_samples=5,
                       overhead_sizes=[64], scaling_sizes=[64, 125], scaling_aa=True, precision_size=64,
                       training_batches={"tiny": [2]}, training_timed_batches=1, profile_size=64)
        raise ValueError(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------------------------
# time budget and timers
# ----------------------------------------------------------------------------------------------
class Budget:
    """Wall-time budget of one benchmark: sizes whose predicted cost does not fit are skipped."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, predicted_s: float | None) -> bool:
        if self.remaining() <= 0:
            return False
        return predicted_s is None or predicted_s <= self.remaining()


class OutOfBudget(Exception):
    """Raised inside a measurement that would not finish within the benchmark's budget."""


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from torch, CUDA or OpenMM."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text or "cudaerrormemoryallocation" in text \
        or "std::bad_alloc" in text or isinstance(exc, MemoryError)


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_clock(platform) -> str:
    """"cpu" on the CPU platform with one thread for torch and for OpenMM: the process's CPU time per step is
    then the work done, which other jobs on a shared machine do not inflate; "wall" otherwise (GPUs,
    several threads)."""
    import torch

    if platform is None or platform.getName() != "CPU" or torch.get_num_threads() != 1:
        return "wall"
    return "cpu" if platform.getPropertyDefaultValue("Threads") == "1" else "wall"


def timed_chunks(step: Callable[[int], None], sync: Callable[[], None], settings: Settings,
                 budget: Budget | None = None, warmup: int | None = None, clock: str = "wall") -> dict[str, Any]:
    """Time ``step(k)`` (k steps) in chunks after a warm-up; per-step seconds (median over chunks).

    Chunks are sized to ~min_time_s / max_chunks each. Raises OutOfBudget if even a short
    measurement would not fit in what is left of ``budget``. Both clocks are recorded (``wall_step_s``,
    ``cpu_step_s``: process CPU time); ``step_s`` is the one ``clock`` names (see :func:`step_clock`).
    """
    warmup = settings.warmup_steps if warmup is None else warmup
    t0 = time.perf_counter()
    if warmup:
        step(warmup)
    sync()
    t1 = time.perf_counter()
    step(1)
    sync()
    first = max(time.perf_counter() - t1, 1e-7)
    chunk_target = settings.min_time_s / settings.max_chunks
    k = max(1, int(chunk_target / first))
    if budget is not None and budget.remaining() < min(settings.max_chunks, 2) * k * first:
        raise OutOfBudget(f"one step takes {first:.3g} s; not enough budget left to time it")
    per_step: list[float] = []
    cpu_per_step: list[float] = []
    total = 0.0
    while len(per_step) < settings.max_chunks and (total < settings.min_time_s or len(per_step) < 2):
        t, c = time.perf_counter(), time.process_time()
        step(k)
        sync()
        dt = time.perf_counter() - t
        per_step.append(dt / k)
        cpu_per_step.append((time.process_time() - c) / k)
        total += dt
        if budget is not None and budget.remaining() < 2 * dt and len(per_step) >= 2:
            break
    wall = statistics.median(per_step)
    cpu = statistics.median(cpu_per_step)
    chosen = cpu_per_step if clock == "cpu" else per_step
    med = statistics.median(chosen)
    spread = (max(chosen) - min(chosen)) / med if med > 0 else 0.0
    return {"step_s": med, "step_s_min": min(chosen), "step_s_max": max(chosen), "spread": spread,
            "clock": clock, "wall_step_s": wall, "cpu_step_s": cpu,
            "chunks": len(per_step), "steps_per_chunk": k, "timed_steps": k * len(per_step),
            "warmup_steps": warmup, "first_step_s": first, "wall_s": time.perf_counter() - t0}


def ns_per_day(step_s: float, timestep_ps: float) -> float:
    return timestep_ps * 1e-3 / step_s * 86400.0


# ----------------------------------------------------------------------------------------------
# device, platform, environment
# ----------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*$", "", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown"


def describe_device(platform_name: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform_name, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                            "cuda_available": bool(torch.cuda.is_available()),
                            "python": _platform.python_version()}
    if platform_name in ("CUDA", "OpenCL") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info.update(device=name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda_version=torch.version.cuda, slug=slug(name))
    else:
        info.update(device=f"{info['cpu_model']} ({os.cpu_count()} cores)",
                    slug=f"{slug(info['cpu_model'])}-{os.cpu_count()}c")
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def torch_device(platform_name: str) -> str:
    return "cuda" if platform_name == "CUDA" else "cpu"


def sync_fn(device: str) -> Callable[[], None]:
    import torch

    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# ----------------------------------------------------------------------------------------------
# geometry: lattices of beads, all-atom boxes
# ----------------------------------------------------------------------------------------------
def box_edge_nm(n: int, mass_amu: float = METHANOL_MASS, density: float = METHANOL_DENSITY) -> float:
    return box_edge(n, mass_amu, density)


def min_beads_for_cutoff(cutoff_nm: float) -> int:
    """Fewest beads whose cubic box at the methanol density is wider than twice ``cutoff_nm``."""
    per_nm3 = METHANOL_DENSITY * 1e-21 * AVOGADRO / METHANOL_MASS
    n = max(1, int(math.ceil(per_nm3 * (2.0 * cutoff_nm) ** 3)))
    while box_edge_nm(n) <= 2.0 * cutoff_nm * (1 + 1e-9):
        n += 1
    return n


def bead_lattice(n: int, seed: int = 0, jitter: float = 0.05, type_name: str = BEAD_TYPE):
    """``n`` beads on a jittered cubic lattice at the methanol density, as ``openmm-cgnn simulate``
    starts a fresh run: (CG topology, positions (n, 3) nm, box edge nm)."""
    from openmm_cgnn.simulate import lattice_start

    top, positions = lattice_start(n, METHANOL_DENSITY, METHANOL_MASS, type_name, np.random.default_rng(seed),
                                   jitter=jitter)
    return top, positions, box_edge_nm(n)


def cg_system(model: "ModelEntry", n: int, dtype: str = "float32", use_cuda_graphs: bool = False):
    """(System with only the model's TorchForce, positions nm, edge nm) for a lattice of ``n`` beads."""
    from openmm_cgnn.system import create_system

    top, positions, edge = bead_lattice(n, type_name=model.type_name)
    module, meta = model.load(dtype)
    system = create_system(top, (module, meta), masses=[METHANOL_MASS] * n, use_cuda_graphs=use_cuda_graphs)
    return system, positions, edge


def make_context(system, integrator, platform, positions: np.ndarray, properties: dict | None = None):
    import openmm
    import openmm.unit as u
    from openmm_cgnn.reference import platform_properties

    props = platform_properties(platform) if properties is None else properties
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(positions * u.nanometer)
    return context


def langevin(timestep_ps: float, seed: int = 1):
    import openmm
    import openmm.unit as u

    integ = openmm.LangevinMiddleIntegrator(TEMPERATURE * u.kelvin, 1.0 / u.picosecond, timestep_ps * u.picoseconds)
    integ.setRandomNumberSeed(seed)
    return integ


def context_sync(context) -> Callable[[], None]:
    """A call that waits for the context's queued work (a positions download)."""
    return lambda: context.getState(getPositions=True)


def aa_context(n_molecules: int, platform, timestep_ps: float = AA_TIMESTEP_PS, seed: int = 7):
    """All-atom methanol (OPLS-AA, PME, HBonds) of ``n_molecules`` on ``platform``, minimised briefly.

    Returns (context, integrator, info). The real-space cutoff is 1.0 nm, or less for boxes too small.
    """
    import openmm.unit as u
    from openmm_cgnn.reference import ReferenceConfig, build_box, create_aa_system, create_simulation
    from openmm_cgnn.species import get_species

    species = get_species("methanol")
    top, positions, edge = build_box(species, n_molecules, METHANOL_DENSITY, np.random.default_rng(seed))
    cutoff = min(1.0, math.floor(0.49 * edge * 20) / 20)  # below half the box, in steps of 0.05 nm
    config = ReferenceConfig(species="methanol", n_molecules=n_molecules, temperature=TEMPERATURE,
                             density=METHANOL_DENSITY, cutoff=cutoff, timestep=timestep_ps,
                             platform=platform.getName(), seed=seed)
    system = create_aa_system(config, top)
    sim = create_simulation(config, top, system, platform)
    sim.context.setPositions(positions * u.nanometer)
    sim.minimizeEnergy(maxIterations=100)
    sim.context.setVelocitiesToTemperature(TEMPERATURE * u.kelvin, seed)
    info = {"n_molecules": n_molecules, "n_atoms": top.getNumAtoms(), "box_nm": edge, "cutoff_nm": cutoff,
            "timestep_fs": timestep_ps * 1e3, "constraints": "HBonds", "electrostatics": "PME",
            "integrator": "LangevinMiddle", "forcefield": species.default_forcefield,
            "n_constraints": system.getNumConstraints()}
    return sim.context, sim.integrator, info


def time_aa(n_molecules: int, platform, settings: Settings, budget: Budget | None = None) -> dict[str, Any]:
    """Step time and ns/day of all-atom methanol at 2 fs."""
    t = time.perf_counter()
    context, integrator, info = aa_context(n_molecules, platform)
    setup = time.perf_counter() - t
    timing = timed_chunks(integrator.step, context_sync(context), settings, budget, clock=step_clock(platform))
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    del context, integrator
    return {**info, **timing, "setup_s": setup, "ns_per_day": ns_per_day(timing["step_s"], AA_TIMESTEP_PS),
            "finite": bool(math.isfinite(energy))}


def time_cg(model: "ModelEntry", n: int, platform, settings: Settings, timestep_ps: float,
            budget: Budget | None = None, dtype: str = "float32", use_cuda_graphs: bool = False,
            integrator: str = "langevin") -> dict[str, Any]:
    """Step time and ns/day of a CG lattice of ``n`` beads with the model's TorchForce."""
    import openmm
    import openmm.unit as u

    t = time.perf_counter()
    system, positions, edge = cg_system(model, n, dtype, use_cuda_graphs)
    integ = langevin(timestep_ps) if integrator == "langevin" else openmm.VerletIntegrator(timestep_ps)
    context = make_context(system, integ, platform, positions)
    context.setVelocitiesToTemperature(TEMPERATURE * u.kelvin, 1)
    setup = time.perf_counter() - t
    timing = timed_chunks(integ.step, context_sync(context), settings, budget, clock=step_clock(platform))
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    del context, integ
    return {"n_beads": n, "box_nm": edge, "timestep_fs": timestep_ps * 1e3, "dtype": dtype,
            "integrator": "LangevinMiddle" if integrator == "langevin" else "Verlet",
            "use_cuda_graphs": use_cuda_graphs, **timing, "setup_s": setup,
            "ns_per_day": ns_per_day(timing["step_s"], timestep_ps), "finite": bool(math.isfinite(energy))}


def nve_drift(system, state, integrator, platform, n_steps: int, every: int, step_ps: float, dof: int,
              step_s: float, budget: Budget) -> dict[str, Any]:
    """NVE energy drift of ``system`` under ``integrator`` (step ``step_ps``) from ``state`` (positions and
    velocities): ``n_steps`` steps with the energies sampled every ``every`` steps.

    Returns the status ("ok"; "blew up" if an energy stopped being finite; skipped when ``state`` is not
    finite or the run, predicted from ``step_s`` seconds per step, does not fit ``budget``) and, when
    ok, the drift in kT/ns per degree of freedom (at TEMPERATURE) with its standard error, in
    kJ/mol/ns, the detrended total-energy fluctuation over the kinetic one and the mean temperature.
    """
    predicted = step_s * n_steps * (1 + 1.0 / every) + 5 * step_s  # each sample costs one more force call
    if not math.isfinite(state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)):
        return {"status": "skipped: equilibration blew up"}
    if not budget.allows(predicted):
        return {"status": f"skipped: time budget (needs ~{predicted:.0f} s)"}
    context = make_context(system, integrator, platform, state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
    context.setVelocities(state.getVelocities())
    times, etot, ekin, done = [], [], [], 0
    while done <= n_steps:
        energies = context.getState(getEnergy=True)
        pe = energies.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        ke = energies.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        if not (math.isfinite(pe) and math.isfinite(ke)):
            return {"status": "blew up", "finite": False}
        times.append(done * step_ps * 1e-3)  # ns
        etot.append(pe + ke)
        ekin.append(ke)
        integrator.step(every)
        done += every
    del context
    if len(times) < 3:
        return {"status": "blew up", "finite": False}
    kT = BOLTZMANN_KJ_PER_MOL_K * TEMPERATURE
    slope, se = linear_fit(np.array(times), np.array(etot))
    ek = np.array(ekin)
    resid = np.array(etot) - np.polyval(np.polyfit(times, etot, 1), times)
    return {"status": "ok", "finite": True, "drift_kT_per_ns_per_dof": slope / (dof * kT),
            "drift_stderr": se / (dof * kT), "drift_kJ_mol_per_ns": slope,
            "etot_fluct_over_ekin_fluct": float(np.std(resid) / np.std(ek)) if np.std(ek) > 0 else None,
            "mean_temperature_K": float(2 * ek.mean() / (dof * BOLTZMANN_KJ_PER_MOL_K))}


def guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{"status": "ok", **measure()}``, or the status of a measurement that ran out of budget, out of
    memory or failed (a size that fails must not stop the others)."""
    try:
        return {"status": "ok", **measure()}
    except OutOfBudget as exc:
        return {"status": f"skipped: time budget ({exc})"}
    except Exception as exc:  # noqa: BLE001
        free_memory()
        if is_oom(exc):
            return {"status": "skipped: out of memory", "error": short_error(exc)}
        return {"status": "failed", "error": short_error(exc)}


def predicted_seconds(last: tuple[int, float] | tuple[int, float, float] | None, n: int,
                      settings: Settings) -> float | None:
    """Predicted wall time of measuring size ``n`` from the last size measured: (n0, step_s[, setup_s])."""
    if last is None:
        return None
    n0, t0 = last[0], last[1]
    setup = last[2] if len(last) > 2 else 0.0
    step = t0 * (n / n0) ** 1.2
    return setup * (n / n0) + step * (settings.warmup_steps + 3) + settings.min_time_s


# ----------------------------------------------------------------------------------------------
# the benchmark models: synthetic frames, 1 epoch of training, export
# ----------------------------------------------------------------------------------------------
def synthetic_frames(n_beads: int, n_frames: int, seed: int = 0, noise: float = 20.0):
    """A CGDataset of jittered lattices at the methanol density with Lennard-Jones forces + noise
    (:mod:`openmm_cgnn.testing`; sigma 0.37 nm, epsilon 1.5 kJ/mol).

    Speed does not depend on the weights, so the benchmark models train on these (no all-atom run).
    """
    from openmm_cgnn.testing import lennard_jones_dataset

    edge = box_edge_nm(n_beads)
    return lennard_jones_dataset(lambda f: bead_lattice(n_beads, seed=seed * 1000 + f, jitter=0.1)[1], n_frames,
                                 edge, np.random.default_rng(seed), sigma=0.37, epsilon=1.5,
                                 cutoff=min(0.9, 0.49 * edge), noise=noise, type_names=[BEAD_TYPE],
                                 bead_mass=METHANOL_MASS, temperature_K=TEMPERATURE,
                                 source="benchmarks: synthetic Lennard-Jones lattice", seed=seed)


@dataclass
class ModelEntry:
    """A benchmark model: trained directory, exported files per dtype, and facts about it."""

    arch: str
    model_dir: Path
    device: str
    info: dict[str, Any] = field(default_factory=dict)
    export_dir: Path | None = None   # where the exported files go (default: beside model_dir)
    exported: dict[str, Path] = field(default_factory=dict)
    _meta: dict | None = None

    @property
    def cutoff_nm(self) -> float:
        return float(self.metadata()["cutoff_nm"])

    @property
    def type_name(self) -> str:
        return str(self.metadata()["type_names"][0])

    @property
    def min_beads(self) -> int:
        return min_beads_for_cutoff(self.cutoff_nm)

    def path(self, dtype: str = "float32") -> Path:
        if dtype not in self.exported:
            from openmm_cgnn.export import export_model

            t = time.perf_counter()
            folder = self.export_dir or self.model_dir.parent
            self.exported[dtype] = export_model(self.model_dir, folder / f"{self.arch}-{dtype}.pt",
                                                dtype=dtype, overwrite=True)
            self.info.setdefault("export_s", {})[dtype] = time.perf_counter() - t
        return self.exported[dtype]

    def metadata(self) -> dict:
        if self._meta is None:
            self._meta = self.load("float32")[1]
        return self._meta

    def load(self, dtype: str = "float32", device: str | None = None):
        """A fresh (ScriptModule, metadata) pair on ``device`` (default: the benchmark's)."""
        from openmm_cgnn.export import load_exported

        return load_exported(self.path(dtype), map_location=device or self.device)

    def fits(self, n: int) -> bool:
        return box_edge_nm(n) > 2.0 * self.cutoff_nm


class Models:
    """Trains (1 epoch on synthetic frames) and exports each arch once, on first use."""

    def __init__(self, workdir: Path, settings: Settings, device: str, model_dir: Path | None = None,
                 keep: bool = False):
        self.workdir = Path(workdir)
        self.keep = keep  # the workdir outlives the run (its model paths are worth recording)
        self.settings = settings
        self.device = device
        self.user_model_dir = Path(model_dir) if model_dir else None
        self._entries: dict[str, ModelEntry] = {}
        self._failed: dict[str, str] = {}

    @property
    def archs(self) -> list[str]:
        return ["user"] if self.user_model_dir else list(self.settings.archs)

    def get(self, arch: str) -> ModelEntry:
        """The prepared model (trained and exported once); a failure is remembered and raised again."""
        if arch in self._failed:
            raise RuntimeError(f"the {arch} benchmark model could not be prepared: {self._failed[arch]}")
        if arch not in self._entries:
            try:
                entry = self._prepare(arch)
                entry.metadata()  # export float32 now: a model that cannot be exported fails here
            except Exception as exc:
                self._failed[arch] = short_error(exc)
                raise
            self._entries[arch] = entry
        return self._entries[arch]

    def summary(self) -> dict[str, Any]:
        kept = self.user_model_dir is not None or self.keep
        out: dict[str, Any] = {a: ({"model_dir": str(e.model_dir)} if kept else {}) | e.info
                               for a, e in self._entries.items()}
        out.update({a: {"status": "failed", "error": err} for a, err in self._failed.items()})
        return out

    def _prepare(self, arch: str) -> ModelEntry:
        from openmm_cgnn.training import TrainConfig, train

        if arch == "user":
            cfg = TrainConfig.from_toml(self.user_model_dir / "config.toml")
            return ModelEntry("user", self.user_model_dir, self.device,
                              {"source": str(self.user_model_dir), "preset": cfg.name, **_arch_facts(cfg)},
                              export_dir=self.workdir)
        info_file = self.workdir / f"model-{arch}.info.json"
        if (self.workdir / f"model-{arch}" / "hippynn_weights.pt").exists() and info_file.exists():
            info = json.loads(info_file.read_text())  # a kept --workdir: reuse its models
            info["reused"] = True
            return ModelEntry(arch, self.workdir / f"model-{arch}", self.device, info)
        cfg = TrainConfig.from_preset(arch)
        cfg.max_epochs = 1
        cfg.fraction_train_eval = 0.1
        cfg.device = "cuda" if self.device == "cuda" else "cpu"
        n_beads = min_beads_for_cutoff(max(cfg.cutoff_nm, 0.5))
        n_side = math.ceil(n_beads ** (1.0 / 3.0) - 1e-9)
        n_beads = n_side ** 3
        n_frames = self.settings.model_frames.get(arch, 5)
        ds = synthetic_frames(n_beads, n_frames, seed=1)
        data = self.workdir / f"{arch}-synthetic.npz"
        ds.save(data)
        t = time.perf_counter()
        out = train([data], cfg, self.workdir / f"model-{arch}", overwrite=True, verbose=False)
        seconds = time.perf_counter() - t
        meta = json.loads((out / "metadata.json").read_text())
        n_train = len(meta["datasets"][0]["splits"]["train"])
        info = {"preset": arch, "trained_on": f"synthetic lattice frames, {n_frames} frames x {n_beads} beads",
                "epochs": 1, "train_frames": n_train, "train_call_s": seconds,
                "train_end_to_end_frames_per_s": n_train / seconds, "train_device": cfg.device, **_arch_facts(cfg)}
        info_file.write_text(json.dumps(info))
        return ModelEntry(arch, out, self.device, info)


def _arch_facts(cfg) -> dict[str, Any]:
    return {"tensor_order": cfg.tensor_order, "n_features": cfg.n_features, "n_sensitivities": cfg.n_sensitivities,
            "n_interaction_layers": cfg.n_interaction_layers, "n_atom_layers": cfg.n_atom_layers,
            "network_cutoff_nm": cfg.cutoff_nm}


# ----------------------------------------------------------------------------------------------
# context handed to every benchmark
# ----------------------------------------------------------------------------------------------
@dataclass
class BenchmarkContext:
    """What every benchmark's ``run(ctx)`` gets: settings, OpenMM platform, torch device, models, budget."""

    settings: Settings
    platform: Any                 # openmm.Platform
    device: str                   # torch device: "cpu" or "cuda"
    models: Models
    budget_s: float
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)   # results one benchmark leaves for another

    @property
    def platform_name(self) -> str:
        return self.platform.getName()

    def budget(self) -> Budget:
        return Budget(self.budget_s)

    def archs(self) -> list[str]:
        """The benchmark models that could be prepared (failures are listed under "models")."""
        ok = []
        for arch in self.models.archs:
            try:
                self.models.get(arch)
                ok.append(arch)
            except Exception:  # noqa: BLE001
                pass
        return ok


# ----------------------------------------------------------------------------------------------
# formatting and result files
# ----------------------------------------------------------------------------------------------
fmt = format_number          # table cells and Markdown tables: openmm_cgnn.reporting
md_table = markdown_table


def today() -> str:
    return _dt.date.today().isoformat()


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def results_paths(out_dir: Path, device_slug: str, mode: str, date: str | None = None) -> tuple[Path, Path]:
    stem = f"{date or today()}-{device_slug}-{mode}"
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"


def merge_results(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the benchmarks of an earlier run of the same day, device and mode kept where this
    run did not repeat them (so ``--only NAME`` refreshes one benchmark in place)."""
    if not path.exists():
        return new
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return new
    if old.get("format") != RESULTS_FORMAT:
        return new
    merged = dict(new)
    benches = dict(old.get("benchmarks", {}))
    benches.update(new.get("benchmarks", {}))
    merged["benchmarks"] = {k: benches[k] for k in sorted(benches, key=benchmark_order_key)}
    models = dict(old.get("models", {}))
    models.update(new.get("models", {}))
    merged["models"] = models
    return merged


BENCHMARK_ORDER = ["throughput", "overhead", "scaling", "precision", "training", "profile", "mts"]


def benchmark_order_key(name: str) -> int:
    return BENCHMARK_ORDER.index(name) if name in BENCHMARK_ORDER else len(BENCHMARK_ORDER)




def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=json_default, allow_nan=True)


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float] | None:
    """Least-squares fit of log y = p log x + c: the exponent p, its standard error and R^2."""
    if len(x) < 2:
        return None
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    A = np.stack([lx, np.ones_like(lx)], 1)
    coef, res, *_ = np.linalg.lstsq(A, ly, rcond=None)
    pred = A @ coef
    ss_res = float(np.sum((ly - pred) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    out = {"exponent": float(coef[0]), "prefactor": float(np.exp(coef[1])), "points": len(x),
           "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}
    if len(x) > 2:
        out["exponent_stderr"] = float(math.sqrt(ss_res / (len(x) - 2) / np.sum((lx - lx.mean()) ** 2)))
    return out


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope of y(x) and its standard error."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) < 3:
        return float("nan"), float("nan")
    A = np.stack([x, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(np.sum((x - x.mean()) ** 2)))
    return float(coef[0]), se


def new_workdir(base: str | None) -> tuple[Path, Callable[[], None]]:
    """A working folder for models and data (kept when ``base`` is given) and its clean-up."""
    if base:
        p = Path(base)
        p.mkdir(parents=True, exist_ok=True)
        return p, lambda: None
    tmp = tempfile.TemporaryDirectory(prefix="openmm-cgnn-bench-")
    return Path(tmp.name), tmp.cleanup
