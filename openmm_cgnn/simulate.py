"""CG molecular dynamics with an exported model: Langevin NVT, or NPT with a Monte Carlo barostat.

Output folder:

================  ============================================================================
file              content
================  ============================================================================
trajectory.dcd    bead positions (read with ``mdtraj.load("trajectory.dcd", top="topology.pdb")``)
topology.pdb      the CG topology and the first frame (beads as atoms named by bead type)
frames.npz        positions (F,N,3) nm, boxes (F,3,3) nm, potential_energy (F,) kJ/mol,
                  temperature (F,) K, density (F,) g/cm^3, time (F,) ps, pressure (F,) bar
                  (instantaneous, OpenMM's finite-difference estimator; absent in older files),
                  plus metadata_json
log.csv           time_ps, potential_kJ_mol, temperature_K, volume_nm3, density_g_cm3, pressure_bar per frame
simulation.json   the config, platform, speed (ns/day), status, units, versions
================  ============================================================================

The run checkpoints into ``<out>/.partial`` and resumes when the same command is run again. It stops
with :class:`~openmm_cgnn.reporters.CGSimulationBlowUpError` (after writing the good frames) when the
energy, forces or positions stop being finite, the temperature runs away, or beads overlap far inside
the repulsive prior. The checks and the frame recording are the OpenMM reporters of
:mod:`openmm_cgnn.reporters` (``CGBlowUpReporter``, ``CGFrameReporter``), which any ``app.Simulation``
can use.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from . import validation as V
from .deprecation import module_getattr
from ._checkpoint import FrameSchedule, FrameStore, PartialRun
from .files import (atomic_write, check_writable, make_output_dir, save_npz_atomic, versions, write_json_atomic,
                  write_text_atomic)
from .dataset import CGDataset
from .errors import CGNNError, ConfigError
from .reference import add_barostat, choose_platform, platform_properties
from .reporters import CGBlowUpReporter, CGFrameReporter, CGSimulationBlowUpError, closest_pair
from .system import CGModel, cg_topology_from_dataset, resolve_cuda_graphs, type_masses
from .geometry import box_edge


class CGSimulationError(CGNNError, ValueError):
    """The CG simulation cannot start as asked (a start frame that does not exist, overlapping or
    non-finite start positions ...)."""


@dataclass
class CGSimulationConfig(FrameSchedule):
    """A CG MD run. Units: K, bar, ps, 1/ps, g/cm^3, nm."""

    model: str                        # exported model (.pt) or pair baseline (.json)
    temperature: float = 300.0
    pressure: float | None = None     # bar; None for NVT
    timestep: float = 0.002
    friction: float = 1.0
    equilibration: float = 10.0
    production: float = 100.0
    frame_interval: float = 0.5
    barostat_interval: int = 25
    seed: int = 2024
    platform: str | None = None
    start_dataset: str | None = None  # start from a mapped all-atom frame of this CG data set...
    start_frame: int = -1
    n_beads: int | None = None        # ...or from a fresh lattice of n beads (one-type models)
    density: float | None = None      # g/cm^3 for the fresh lattice
    use_cuda_graphs: bool | None = None  # None: on for the CUDA platform, off elsewhere (system.resolve_cuda_graphs)
    neighbour_capacity: int = 0       # neighbours per bead in the model's table; 0: the model's own
    checkpoint_every: int = 50        # frames
    max_temperature_factor: float = 3.0
    overlap_margin: float = 0.05      # nm inside the prior's taper that counts as an overlap
    torch_threads: int | None = None  # torch intra-op threads on the CPU (None: torch's default); 1 is
                                      # often fastest for small systems on a busy machine
    cuda_graph_warmup_steps: int | None = None  # model calls before the CUDA graph capture (None: openmm-torch's)
    mts: int = 1                      # multiple time stepping: the model every `mts` inner steps of `timestep`
                                      # (1: one time step); the integrator's step is mts * timestep
    mts_fast: str = "prior"           # fast force of the inner steps: "prior" or a pair force field (.json)

    @property
    def outer_timestep(self) -> float:
        """The integrator's step, ps: ``mts * timestep`` (``timestep`` with one time step)."""
        return self.mts * self.timestep

    @property
    def steps_per_frame(self) -> int:
        """Integrator (outer) steps between frames."""
        return max(1, int(round(self.frame_interval / self.outer_timestep)))

    def check_mts(self) -> None:
        """MTSConfigError when the multiple-time-stepping settings cannot work."""
        from .mts import MTSConfigError, check_substeps

        check_substeps(self.mts)
        if self.mts > 1:
            n = self.frame_interval / self.outer_timestep
            if n < 1 - 1e-9 or abs(n - round(n)) > 1e-6:
                near = max(1, round(n)) * self.outer_timestep
                raise MTSConfigError(
                    f"the frame interval ({self.frame_interval:g} ps) must be a whole number of outer steps "
                    f"(--mts {self.mts} x --timestep {self.timestep * 1000:g} fs = {self.outer_timestep:g} ps); "
                    f"use e.g. --frame-interval {near:.6g}", "frame_interval")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (the rules of :mod:`openmm_cgnn.validation`); ConfigError names the first bad one.
        The start frame is checked against the data set when it is opened."""
        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise ConfigError(f"model must be the path of an exported model (.pt) or a pair force field (.json), "
                              f"got {self.model!r}", "model")
        V.temperature(self.temperature)
        V.pressure(self.pressure)
        V.positive(self.friction, "friction", "1/ps")
        V.frame_schedule(self.timestep, self.equilibration, self.production, self.frame_interval)
        V.integer(self.barostat_interval, "barostat_interval", 1)
        V.seed(self.seed)
        V.integer(self.start_frame, "start_frame")
        V.integer(self.checkpoint_every, "checkpoint_every", 1)
        V.integer(self.neighbour_capacity, "neighbour_capacity", 0)
        V.in_range(self.max_temperature_factor, "max_temperature_factor", 1.0)
        V.non_negative(self.overlap_margin, "overlap_margin", "nm")
        if self.torch_threads is not None:
            V.integer(self.torch_threads, "torch_threads", 1)
        if self.n_beads is not None:
            V.integer(self.n_beads, "n_beads", 1)
        if self.density is not None:
            V.density(self.density)
        lattice = self.n_beads is not None or self.density is not None
        if self.start_dataset and lattice:
            raise ConfigError("give a starting data set (--start) or a fresh lattice (--beads and --density), "
                              "not both", "start_dataset")
        if not self.start_dataset and (self.n_beads is None or self.density is None):
            raise ConfigError("give a starting data set (--start) or both --beads and --density for a fresh "
                              "lattice", "start_dataset")
        if self.cuda_graph_warmup_steps is not None:
            V.integer(self.cuda_graph_warmup_steps, "cuda_graph_warmup_steps", 1)
        self.check_mts()


def lattice_start(n_beads: int, density: float, mass: float, type_name: str, rng: np.random.Generator,
                  jitter: float = 0.05) -> tuple[app.Topology, np.ndarray]:
    """A fresh start of ``n_beads`` one-type beads: the CG topology (one residue "CG" per bead, atoms
    named ``type_name``, a cubic box) and positions (n_beads, 3) nm on a simple-cubic lattice.

    The box holds the beads (``mass`` amu each) at ``density`` g/cm^3; the beads take random sites of
    the smallest lattice with at least ``n_beads`` sites, each moved by up to ``jitter`` lattice
    spacings along each axis (uniformly, from ``rng``).
    """
    edge = box_edge(n_beads, mass, density)
    per_side = math.ceil(n_beads ** (1.0 / 3.0) - 1e-9)
    grid = np.array([(i, j, k) for i in range(per_side) for j in range(per_side) for k in range(per_side)], float)
    sites = grid[rng.permutation(len(grid))[:n_beads]]
    positions = (sites + 0.5 + rng.uniform(-jitter, jitter, sites.shape)) * edge / per_side
    top = app.Topology()
    chain = top.addChain()
    for i in range(n_beads):
        top.addAtom(type_name, None, top.addResidue("CG", chain, id=str(i + 1)))
    top.setPeriodicBoxVectors(np.eye(3) * edge * u.nanometer)
    return top, positions


def initial_configuration(config: CGSimulationConfig,
                          metadata: dict) -> tuple[app.Topology, np.ndarray, np.ndarray | None]:
    """The CG topology, starting positions (nm) and bead masses (amu, None: from the model) that
    ``config`` asks for."""
    if config.start_dataset:
        ds = CGDataset.load(config.start_dataset)
        if not -ds.n_frames <= config.start_frame < ds.n_frames:
            raise ConfigError(f"start_frame {config.start_frame} does not exist: '{config.start_dataset}' has "
                              f"{ds.n_frames} frames (0 to {ds.n_frames - 1}, or -1 for the last)", "start_frame")
        frame = config.start_frame % ds.n_frames
        return cg_topology_from_dataset(ds, frame), ds.positions[frame], ds.bead_masses
    if config.n_beads is None or config.density is None:
        raise ConfigError("give a starting data set (--start) or both --beads and --density for a fresh lattice",
                          "start_dataset")
    if len(metadata["type_names"]) != 1:
        raise CGSimulationError("a fresh lattice start needs a one-bead-type model; start from a data set "
                                "(--start) instead")
    name = metadata["type_names"][0]
    top, positions = lattice_start(config.n_beads, config.density, type_masses(metadata)[name], name,
                                    np.random.default_rng(config.seed))
    return top, positions, None


def run_cg_simulation(config: CGSimulationConfig, out: str | Path, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Run (or resume) the CG simulation ``config`` and write the output folder ``out``.

    Returns ``out``. Raises CGSimulationBlowUpError after saving the good frames if the run blows up (one that
    blows up before its first frame writes nothing). Every setting, the model file and the start positions
    are checked before ``out`` is created; a folder that holds a blown-up run is replaced without ``overwrite``.
    """
    out = Path(out)
    config.validate()
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(int(config.torch_threads))
    if _holds_finished_run(out) and not overwrite:
        from .errors import OutputExistsError

        raise OutputExistsError(f"output '{out}' already holds a simulation; choose another folder or pass --overwrite")
    check_writable(out)
    config.check_mts()
    model = CGModel(config.model)
    metadata = model.metadata
    topology, positions, masses = initial_configuration(config, metadata)
    platform = choose_platform(config.platform)
    # CUDA graphs capture a TorchScript model; a model without one (a pair force field) has nothing to capture
    graphs = resolve_cuda_graphs(config.use_cuda_graphs, platform.getName()) and model.module is not None
    simulation, system, barostat = _build_simulation(config, model, topology, masses, platform, graphs)
    if graphs and config.use_cuda_graphs is None and not _capture_works(simulation, positions, config):
        _log(progress, "[simulate] CUDA graph capture failed for this model; running without CUDA graphs "
                       "(--no-cuda-graphs skips the try)")
        graphs = False
        simulation, system, barostat = _build_simulation(config, model, topology, masses, platform, graphs)
    run_info = {"cuda_graphs": {"requested": config.use_cuda_graphs, "used": graphs},
                "integrator": _integrator_info(config)}
    monitor = CGBlowUpReporter.for_model(config.steps_per_frame, model, temperature=config.temperature,
                                         max_temperature_factor=config.max_temperature_factor,
                                         overlap_margin=config.overlap_margin)
    recorder = CGFrameReporter(config.steps_per_frame, barostat=barostat)
    _check_start(positions, topology, monitor, config)
    created = not out.exists()
    make_output_dir(out)   # only now: the run has really started
    frames = recorder.frame_store(topology.getNumAtoms())
    partial = PartialRun(out / ".partial", json.dumps(asdict(config), sort_keys=True))
    _log(progress, f"[simulate] {topology.getNumAtoms()} beads, {config.ensemble} at {config.temperature} K"
         + (f", {config.pressure} bar" if config.pressure is not None else "")
         + f", dt {config.timestep * 1000:g} fs"
         + (f" (model every {config.mts} steps, fast force: {run_info['integrator']['fast']})"
            if config.mts > 1 else "")
         + f", platform {platform.getName()}" + (", CUDA graphs" if graphs else ""))

    status, error = "complete", None
    try:
        if partial.resumable() and partial.same_config() and not overwrite:
            partial.restore(simulation, frames)
            _log(progress, f"[simulate] resuming after {len(frames)} saved frames")
        else:
            partial.start()
            simulation.context.setPositions(positions * u.nanometer)
            monitor.remember(positions, np.array(
                [[x.value_in_unit(u.nanometer) for x in v] for v in topology.getPeriodicBoxVectors()]))
            simulation.context.setVelocitiesToTemperature(config.temperature * u.kelvin, config.seed)
            _equilibrate(simulation, config, monitor, progress)
            partial.save(simulation, frames)
        started, first = time.perf_counter(), len(frames)
        # production: t = 0 at its first step; the reporters check and record every frame
        monitor.start_step = recorder.start_step = simulation.currentStep - first * config.steps_per_frame
        simulation.reporters += [monitor, recorder]   # the monitor first: a bad frame is never recorded
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_frames, initial=first, desc="CG production", unit="frame", disable=not progress,
                   leave=False)
        while len(frames) < config.n_frames:
            before = len(frames)
            simulation.step(config.steps_per_frame)
            if len(frames) != before + 1:
                raise RuntimeError(f"the frame reporter recorded {len(frames) - before} frames in one frame interval")
            bar.update(1)
            if len(frames) % config.checkpoint_every == 0:
                partial.save(simulation, frames)
        bar.close()
        elapsed = time.perf_counter() - started
    except CGSimulationBlowUpError as exc:
        status, error, elapsed, first = "blew_up", " ".join(str(exc).split()), float("nan"), 0
    except openmm.OpenMMException as exc:  # OpenMM's own check: "Particle coordinate is NaN"
        if "nan" not in str(exc).lower():
            raise
        t = len(frames) * config.frame_interval
        status, error, elapsed, first = "blew_up", monitor.explain_non_finite(t), float("nan"), 0
    except Exception:
        if partial.saved_frames == 0 and not len(frames):   # failed before the first frame: leave nothing
            _discard(out, partial, created)
        raise
    done = len(frames) - first
    ns_per_day = done * config.frame_interval * 1e-3 / (elapsed / 86400.0) if done and elapsed > 0 else None
    advice = ("Try a smaller --timestep, a start from a mapped all-atom frame, or a model trained nearer this "
              "state point.")
    if status == "blew_up" and not len(frames):
        _discard(out, partial, created)
        raise CGSimulationBlowUpError(f"the CG simulation blew up before its first frame: {error}. Nothing was "
                                 f"written. {advice}")
    _write_outputs(out, config, topology, frames, metadata, platform, ns_per_day, status, error, run_info)
    if status == "blew_up":
        partial.remove()
        raise CGSimulationBlowUpError(
            f"the CG simulation blew up: {error}. {len(frames)} good frames are in '{out}' (a rerun into the same "
            f"folder replaces them). {advice}")
    partial.remove()
    _log(progress, f"[simulate] wrote {len(frames)} frames to {out}"
         + (f" ({ns_per_day:.1f} ns/day)" if ns_per_day else ""))
    return out


def _build_simulation(config: CGSimulationConfig, model: CGModel, topology: app.Topology, masses, platform,
                      graphs: bool) -> tuple[app.Simulation, openmm.System, openmm.MonteCarloBarostat]:
    """The Simulation of ``config``: the model's System (split into fast and slow force groups for
    MTS), the barostat for NPT (for NVT a disabled one, for pressure estimates), and a LangevinMiddle or
    MTSLangevin integrator; with the barostat."""
    options = {"use_cuda_graphs": graphs, "cuda_graph_warmup_steps": config.cuda_graph_warmup_steps,
               "neighbour_capacity": config.neighbour_capacity, "temperature": config.temperature}
    if config.mts > 1:
        options["mts_fast"] = config.mts_fast
    system = model.create_system(topology, masses=masses, **options)
    barostat = add_barostat(config, system)  # for NVT a disabled one: pressure estimates
    if config.mts > 1:
        from .mts import langevin_integrator

        integrator = langevin_integrator(config.temperature, config.friction, config.timestep, config.mts,
                                         seed=config.seed)
    else:
        integrator = openmm.LangevinMiddleIntegrator(config.temperature * u.kelvin, config.friction / u.picosecond,
                                                     config.timestep * u.picoseconds)
        integrator.setRandomNumberSeed(config.seed)
    return app.Simulation(topology, system, integrator, platform, platform_properties(platform)), system, barostat


def _capture_works(simulation: app.Simulation, positions: np.ndarray, config: CGSimulationConfig) -> bool:
    """Evaluate the forces past openmm-torch's warm-up, so that a CUDA graph capture that fails does
    so here; False if it did."""
    calls = (config.cuda_graph_warmup_steps or 10) + 2
    try:
        for k in range(calls):
            simulation.context.setPositions((positions + 1e-6 * k) * u.nanometer)
            simulation.context.getState(getForces=True)
    except openmm.OpenMMException:
        return False
    return True


def _integrator_info(config: CGSimulationConfig) -> dict:
    from .mts import FAST_GROUP, SLOW_GROUP, fast_label

    if config.mts == 1:
        return {"kind": "LangevinMiddle", "timestep_ps": config.timestep, "mts": 1}
    return {"kind": "MTSLangevin (BAOAB-RESPA)", "timestep_ps": config.timestep, "mts": config.mts,
            "outer_timestep_ps": config.outer_timestep, "fast": fast_label(config.mts_fast),
            "fast_group": FAST_GROUP, "slow_group": SLOW_GROUP}


def _holds_finished_run(out: Path) -> bool:
    """Whether ``out`` holds a simulation that completed (a blown-up one may be replaced without --overwrite)."""
    info = out / "simulation.json"
    if not info.exists():
        return False
    try:
        return json.loads(info.read_text()).get("status") != "blew_up"
    except (OSError, ValueError, AttributeError):
        return True


def _discard(out: Path, partial: PartialRun, created: bool) -> None:
    """Remove what a run that wrote no frame left: its ``.partial`` and, if this run made it, ``out``."""
    partial.remove()
    if created:
        shutil.rmtree(out, ignore_errors=True)


def _check_start(positions: np.ndarray, topology: app.Topology, monitor: CGBlowUpReporter,
                 config: CGSimulationConfig) -> None:
    """CGSimulationError for start positions that are not finite or put beads far inside the prior."""
    where = (f"frame {config.start_frame} of '{config.start_dataset}'" if config.start_dataset
             else f"the fresh lattice at {config.density} g/cm^3")
    if not np.isfinite(positions).all():
        raise CGSimulationError(f"the start positions ({where}) hold NaN or infinite values")
    if monitor.min_distance is None:
        return
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    closest = closest_pair(np.asarray(positions, dtype=np.float64), box, monitor.min_distance)
    if closest is not None:
        fix = "lower --density" if not config.start_dataset else "start from another frame or data set"
        raise CGSimulationError(
            f"the start positions ({where}) put two beads {closest:.3f} nm apart, far inside the repulsive prior "
            f"(which starts at {monitor.prior_taper:.3f} nm); {fix}")


def _equilibrate(simulation: app.Simulation, config: CGSimulationConfig, monitor: CGBlowUpReporter,
                 progress: bool) -> None:
    """Equilibrate in chunks of a frame interval (the last one shorter), checked after each chunk."""
    n_steps = int(round(config.equilibration / config.outer_timestep))
    chunk = config.steps_per_frame
    monitor.start_step = simulation.currentStep + n_steps   # equilibration runs before t = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=n_steps, desc="CG equilibration", unit="step", disable=not progress, leave=False)
    done = 0
    while done < n_steps:
        k = min(chunk, n_steps - done)
        simulation.step(k)
        done += k
        monitor.check(simulation, simulation.context.getState(getPositions=True, getEnergy=True))
        bar.update(k)
    bar.close()


def _write_outputs(out: Path, config: CGSimulationConfig, topology: app.Topology, frames: FrameStore,
                   metadata: dict, platform: openmm.Platform, ns_per_day: float | None, status: str,
                   error: str | None, run_info: dict | None = None) -> None:
    import mdtraj as md

    arrays = frames.arrays()
    info = {
        "format": "openmm-cgnn/cg-simulation", "version": 1, "status": status, "error": error,
        "config": asdict(config), "n_frames": len(frames), "n_beads": topology.getNumAtoms(),
        "state": {"temperature_K": config.temperature, "pressure_bar": config.pressure,
                  "ensemble": config.ensemble},
        "platform": platform.getName(), "ns_per_day": ns_per_day,
        "model": {"file": Path(config.model).name, "type_names": metadata.get("type_names"),
                  "cutoff_nm": metadata.get("cutoff_nm")},
        "units": {"positions": "nm", "boxes": "nm", "potential_energy": "kJ/mol", "temperature": "K",
                  "density": "g/cm^3", "time": "ps", "pressure": "bar"},
        "versions": versions(),
        **(run_info or {}),
    }
    save_npz_atomic(out / "frames.npz", metadata_json=np.array(json.dumps(info)), **arrays)
    rows = ["time_ps,potential_kJ_mol,temperature_K,volume_nm3,density_g_cm3,pressure_bar"]
    vols = np.abs(np.linalg.det(arrays["boxes"])) if len(frames) else []
    for t, e, temp, v, d, p in zip(arrays["time"], arrays["potential_energy"], arrays["temperature"], vols,
                                   arrays["density"], arrays["pressure"]):
        rows.append(f"{t:.4f},{e:.4f},{temp:.3f},{v:.5f},{d:.5f},{p:.2f}")
    write_text_atomic(out / "log.csv", "\n".join(rows) + "\n")
    if len(frames):
        traj = md.Trajectory(arrays["positions"], md.Topology.from_openmm(topology))
        traj.unitcell_vectors = arrays["boxes"].astype(np.float32)
        atomic_write(out / "trajectory.dcd", lambda tmp: traj.save_dcd(str(tmp)))
        atomic_write(out / "topology.pdb", lambda tmp: traj[0].save_pdb(str(tmp)))
    write_json_atomic(out / "simulation.json", info)


def load_cg_frames(out: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of ``frames.npz`` in a simulation folder and its metadata."""
    with np.load(Path(out) / "frames.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["metadata_json"]))
        return {k: z[k] for k in z.files if k != "metadata_json"}, meta


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)


__getattr__ = module_getattr(__name__, {"CGSimulationBlowUp": "CGSimulationBlowUpError"}, globals())
