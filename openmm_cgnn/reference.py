"""All-atom reference simulations: build a liquid box, equilibrate, and record forces for matching.

The output is one compressed NPZ per state point (the *reference file*):

=================  ==============  ==========================================================
key                shape / dtype   meaning (units)
=================  ==============  ==========================================================
positions          (F, n, 3) f4    atomic positions, nm (not wrapped: molecules stay whole)
forces             (F, n, 3) f4    atomic forces from the force field, kJ/mol/nm
boxes              (F, 3, 3) f8    periodic box vectors as rows, nm
potential_energy   (F,) f8         potential energy, kJ/mol
time               (F,) f8         simulation time of each frame, ps (from the production start)
pressure           (F,) f8         instantaneous pressure of each frame, bar (OpenMM's molecular
                                   finite-difference estimator; absent in files from older versions)
top_*              arrays          the all-atom topology (see ``topology_io``)
metadata_json      () str          JSON: config, state point, platform, versions, units
=================  ==============  ==========================================================

Long runs checkpoint into ``<out>.partial/`` every ``checkpoint_every`` frames; running the same
command again resumes from the last checkpoint with no frame lost or duplicated.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from ._checkpoint import FrameSchedule, FrameStore, PartialRun
from .aa_input import clashing_molecules
from . import validation as V
from .deprecation import module_getattr
from .files import check_output_path, read_metadata_json, read_npz, save_npz_atomic, versions
from .errors import CGNNError
from .species import Species, get_species
from .pressure import attach_pressure_probe, current_pressure, find_barostat_index
from .topology_io import topology_from_arrays, topology_to_arrays
from .geometry import box_edge

REFERENCE_FORMAT = "openmm-cgnn/aa-reference"
REFERENCE_UNITS = {"positions": "nm", "forces": "kJ/mol/nm", "boxes": "nm", "potential_energy": "kJ/mol",
                   "pressure_series": "bar",
                   "time": "ps", "temperature": "K", "pressure": "bar", "density": "g/cm^3"}


class ReferenceRunError(CGNNError, ValueError):
    """A reference run cannot be set up as asked (bad species, density, box, force field...)."""


class ReferenceBlowUpError(CGNNError, RuntimeError):
    """The all-atom simulation stopped being finite; the message says when and what to try."""


@dataclass
class ReferenceConfig(FrameSchedule):
    """Everything that defines an all-atom reference run. Units: K, g/cm^3, bar, nm, ps."""

    species: str = "methanol"
    n_molecules: int = 512
    temperature: float = 300.0
    density: float | None = None          # initial (NPT) or fixed (NVT) density; None: species default
    pressure: float | None = None         # bar; set for NPT, None for NVT
    forcefield: str | None = None         # None: the species' default
    cutoff: float = 1.0                   # nm, real-space cutoff of PME and Lennard-Jones
    timestep: float = 0.002               # ps
    friction: float = 1.0                 # 1/ps, Langevin
    equilibration: float = 100.0          # ps
    production: float = 1000.0            # ps
    frame_interval: float = 1.0           # ps between saved frames
    barostat_interval: int = 25           # steps between Monte Carlo volume moves (NPT)
    seed: int = 2024
    platform: str | None = None           # None: CUDA if available, else CPU
    checkpoint_every: int = 50            # frames between checkpoints
    # Bring your own system (see ``openmm_cgnn.aa_input``); all None: the built-in ``species`` above.
    components: list | None = None        # [[built-in name or molecule file, count], ...] packed at ``density``
    box: str | None = None                # PDB/PDBx of a whole periodic box (with forcefield_files or system_xml)
    system_xml: str | None = None         # serialised OpenMM System of the atoms in ``box``
    forcefield_files: list | None = None  # force-field XML files for ``box`` or molecule-file components

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (the rules of :mod:`openmm_cgnn.validation`); ConfigError names the first bad one.
        The cutoff is checked against the box when the box is built."""
        V.integer(self.n_molecules, "n_molecules", 1)
        V.temperature(self.temperature)
        if self.density is not None:
            V.density(self.density)
        V.pressure(self.pressure)
        V.cutoff(self.cutoff)
        V.positive(self.friction, "friction", "1/ps")
        V.frame_schedule(self.timestep, self.equilibration, self.production, self.frame_interval)
        V.integer(self.barostat_interval, "barostat_interval", 1)
        V.seed(self.seed)
        V.integer(self.checkpoint_every, "checkpoint_every", 1)


# -- building the box ---------------------------------------------------------------------------

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def build_topology(species: Species, n_molecules: int) -> app.Topology:
    """An OpenMM Topology of ``n_molecules`` copies of ``species`` (one residue each)."""
    top = app.Topology()
    chain = top.addChain()
    for m in range(n_molecules):
        res = top.addResidue(species.residue, chain, id=str(m + 1))
        atoms = [top.addAtom(name, app.Element.getBySymbol(el), res)
                 for name, el in zip(species.atom_names, species.elements)]
        for i, j in species.bonds:
            top.addBond(atoms[i], atoms[j])
    return top


def build_box(species: Species, n_molecules: int, density: float,
              rng: np.random.Generator) -> tuple[app.Topology, np.ndarray, float]:
    """Place molecules on a cubic lattice with random orientations at ``density`` (g/cm^3).

    Returns (topology with box set, positions (n_atoms, 3) nm, box edge nm).
    """
    if n_molecules < 1:
        raise ReferenceRunError(f"need at least one molecule, got {n_molecules}")
    if not (0.0 < density < 3.0):
        raise ReferenceRunError(f"density {density} g/cm^3 is impossible for a molecular liquid; give a value in (0, 3)")
    top = build_topology(species, n_molecules)
    masses = species.atom_masses
    edge = box_edge(n_molecules, species.molecular_mass, density)
    per_side = math.ceil(n_molecules ** (1.0 / 3.0) - 1e-9)
    spacing = edge / per_side
    centred = species.template - (masses[:, None] * species.template).sum(0) / masses.sum()
    radius = float(np.max(np.linalg.norm(centred, axis=1)))
    mean_spacing = edge / n_molecules ** (1.0 / 3.0)
    if mean_spacing < 2.0 * radius:
        raise ReferenceRunError(
            f"density {density} g/cm^3 puts {species.name} molecules {mean_spacing:.3f} nm apart, closer than their "
            f"size ({2 * radius:.3f} nm); lower the density")
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side) for k in range(per_side)], float)
    sites = sites[rng.permutation(len(sites))[:n_molecules]]
    rotated = [centred @ _random_rotation(rng).T for _ in range(n_molecules)]
    box = np.eye(3) * edge
    # Re-draw the orientations of molecules whose atoms nearly touch a neighbour's (the lattice can be
    # finer than the molecules when N is not a cube); minimisation removes what is left.
    for _ in range(50):
        positions = np.concatenate([r + (s + 0.5) * spacing for r, s in zip(rotated, sites)])
        owner = np.arange(len(positions)) // len(species.elements)
        clashing = clashing_molecules(positions, box, owner, min_distance=0.12)
        if not clashing.size:
            break
        for m in clashing:
            rotated[m] = centred @ _random_rotation(rng).T
    top.setPeriodicBoxVectors(box * u.nanometer)
    return top, positions, edge


# -- the OpenMM side --------------------------------------------------------------------------

def choose_platform(name: str | None = None) -> openmm.Platform:
    """The named OpenMM platform, or CUDA when it works here, else CPU."""
    if name:
        try:
            return openmm.Platform.getPlatformByName(name)
        except Exception:
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise ReferenceRunError(f"OpenMM platform '{name}' is not available; available: {', '.join(names)}") from None
    for candidate in ("CUDA", "CPU"):
        try:
            platform = openmm.Platform.getPlatformByName(candidate)
        except Exception:
            continue
        if candidate == "CUDA" and not _cuda_works(platform):
            continue
        return platform
    return openmm.Platform.getPlatformByName("Reference")


def _cuda_works(platform: openmm.Platform) -> bool:
    try:
        system = openmm.System()
        system.addParticle(1.0)
        openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        return True
    except Exception:
        return False


def platform_properties(platform: openmm.Platform) -> dict[str, str]:
    return {"Precision": "mixed"} if platform.getName() in ("CUDA", "OpenCL") else {}


def create_aa_system(config: ReferenceConfig, topology: app.Topology, barostat: bool = True) -> openmm.System:
    """The all-atom System: PME electrostatics, constraints on bonds to hydrogen, and a Monte
    Carlo barostat for NPT (unless ``barostat`` is False)."""
    species = get_species(config.species)
    files = species.forcefield_files(config.forcefield)
    try:
        ff = app.ForceField(*files)
    except Exception as exc:  # a user's XML file: missing, malformed or not an OpenMM force field
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ReferenceRunError(f"cannot read the force field {', '.join(repr(f) for f in files)} ({detail}); "
                             "give a built-in force-field name or a valid OpenMM force-field XML file") from None
    edge = min(topology.getPeriodicBoxVectors()[i][i].value_in_unit(u.nanometer) for i in range(3))
    if edge < 2.0 * config.cutoff:
        raise ReferenceRunError(
            f"box edge {edge:.3f} nm is smaller than twice the cutoff ({config.cutoff} nm); use more molecules "
            f"or a smaller --cutoff (at most {edge / 2:.3f} nm)")
    try:
        system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=config.cutoff * u.nanometer,
                                 constraints=app.HBonds, rigidWater=True)
    except ValueError as exc:
        raise ReferenceRunError(f"force field '{config.forcefield or species.default_forcefield}' cannot "
                             f"parameterise {species.name}: {exc}") from None
    if barostat:
        add_barostat(config, system)
    return system


def add_barostat(config: Any, system: openmm.System) -> openmm.MonteCarloBarostat:
    """A seeded Monte Carlo barostat at ``config.pressure``; for NVT a disabled one, which lets OpenMM
    estimate the pressure (``openmm_cgnn.pressure``). ``config``: any run configuration with pressure,
    temperature, barostat_interval and seed (reference or CG). Returns the barostat."""
    if config.pressure is not None:
        barostat = openmm.MonteCarloBarostat(config.pressure * u.bar, config.temperature * u.kelvin,
                                             config.barostat_interval)
        barostat.setRandomNumberSeed(config.seed)
        system.addForce(barostat)
        return barostat
    return attach_pressure_probe(system, config.temperature)  # a disabled barostat: pressure estimates in NVT


def create_simulation(config: ReferenceConfig, topology: app.Topology, system: openmm.System,
                      platform: openmm.Platform) -> app.Simulation:
    integrator = openmm.LangevinMiddleIntegrator(config.temperature * u.kelvin, config.friction / u.picosecond,
                                                 config.timestep * u.picoseconds)
    integrator.setRandomNumberSeed(config.seed)
    return app.Simulation(topology, system, integrator, platform, platform_properties(platform))


# -- running ----------------------------------------------------------------------------------

def _frame_store(n_atoms: int) -> FrameStore:
    return FrameStore({"positions": ((n_atoms, 3), np.float32), "forces": ((n_atoms, 3), np.float32),
                       "boxes": ((3, 3), np.float64), "potential_energy": ((), np.float64),
                       "time": ((), np.float64), "pressure": ((), np.float64)})


def _add_frame(frames: FrameStore, state: openmm.State, t: float, pressure: float) -> None:
    frames.add(positions=state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
               forces=state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer),
               boxes=state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer),
               potential_energy=state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), time=t,
               pressure=pressure)


def _config_json(config: ReferenceConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


def run_reference(config: ReferenceConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                  on_frame: Callable[[int], None] | None = None) -> Path:
    """Run (or resume) the all-atom reference described by ``config`` and write ``out`` (NPZ).

    ``on_frame(n)`` is called after each saved frame with the number of frames so far (used by
    tests to interrupt a run). Returns the output path.
    """
    from .aa_input import prepare, validate_input

    config.validate()
    out = check_output_path(out, overwrite)
    validate_input(config)
    partial = PartialRun(out.with_name(out.name + ".partial"), _config_json(config))
    resume = partial.resumable()
    if resume and not partial.same_config():
        if not overwrite:
            raise ReferenceRunError(
                f"'{partial.folder}' holds an interrupted run with different settings; rerun with the same "
                "settings to resume it, or delete that folder (or pass --overwrite) to start afresh")
        resume = False

    rng = np.random.default_rng(config.seed)
    setup = prepare(config, rng)
    topology, positions, system, density = setup.topology, setup.positions, setup.system, setup.density
    add_barostat(config, system)
    desc = setup.description
    platform = choose_platform(config.platform)
    simulation = create_simulation(config, topology, system, platform)
    what = " + ".join(f"{name} x {count}" for name, count in desc["components"])
    _log(progress, f"[reference] {what}, {config.ensemble} at {config.temperature} K"
         + (f", {config.pressure} bar" if config.pressure is not None else f", {density:.4g} g/cm^3")
         + f", force field {desc['forcefield'] or ', '.join(desc['forcefield_files']) or 'System XML'}, "
         + f"platform {platform.getName()}")

    frames = _frame_store(topology.getNumAtoms())
    with _discard_partial_on_failure(partial, fresh=not resume):
        elapsed, done = _record(simulation, config, partial, frames, positions, resume, progress, on_frame)
    return _finish(out, config, desc, density, platform, topology, frames, partial, elapsed, done, progress)


@contextlib.contextmanager
def _discard_partial_on_failure(partial: PartialRun, fresh: bool):
    """Remove ``partial`` when the run fails in a way that a rerun would not mend: a blow-up (a rerun
    with the same settings blows up again, a corrected one has other settings), or any error before a
    fresh run has saved its first production frame. An interruption keeps it for the resume."""
    try:
        yield
    except openmm.OpenMMException as exc:
        partial.remove()
        raise ReferenceBlowUpError(f"the all-atom simulation stopped: {' '.join(str(exc).split())}; try a smaller "
                              "--timestep or a longer equilibration") from None
    except ReferenceBlowUpError:
        partial.remove()
        raise
    except Exception:
        if fresh and partial.saved_frames == 0:
            partial.remove()
        raise


def _record(simulation: app.Simulation, config: ReferenceConfig, partial: PartialRun, frames: FrameStore,
            positions: np.ndarray, resume: bool, progress: bool,
            on_frame: Callable[[int], None] | None) -> tuple[float, int]:
    """Equilibrate (or restore the checkpoint) and record the production frames into ``frames``;
    returns the wall time (s) of production and the number of frames recorded by this call."""
    barostat = simulation.system.getForce(find_barostat_index(simulation.system))  # a real one or the NVT probe
    if resume:
        partial.restore(simulation, frames)
        _log(progress, f"[reference] resuming from {len(frames)} saved frames in {partial.folder}")
    else:
        partial.start()
        simulation.context.setPositions(positions * u.nanometer)
        simulation.minimizeEnergy(maxIterations=1000)
        simulation.context.setVelocitiesToTemperature(config.temperature * u.kelvin, config.seed)
        _run_steps(simulation, int(round(config.equilibration / config.timestep)), progress, "equilibrate")
        partial.save(simulation, frames)

    started = time.perf_counter()
    first = len(frames)
    bar = _bar(progress, config.n_frames, first, "production")
    while len(frames) < config.n_frames:
        simulation.step(config.steps_per_frame)
        state = simulation.context.getState(getPositions=True, getForces=True, getEnergy=True)
        energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        if not math.isfinite(energy):
            raise ReferenceBlowUpError(f"the all-atom simulation blew up (energy {energy}) at frame {len(frames)}; "
                                  "try a smaller --timestep or a longer equilibration")
        # after getState: the estimator scales the box and positions and restores them
        pressure = current_pressure(simulation.context, barostat)
        _add_frame(frames, state, (len(frames) + 1) * config.steps_per_frame * config.timestep, pressure)
        bar.update(1)
        if len(frames) % config.checkpoint_every == 0 or len(frames) == config.n_frames:
            partial.save(simulation, frames)
        if on_frame is not None:
            on_frame(len(frames))
    bar.close()
    return time.perf_counter() - started, len(frames) - first


def _finish(out: Path, config: ReferenceConfig, desc: dict, density: float, platform: openmm.Platform,
            topology: app.Topology, frames: FrameStore, partial: PartialRun, elapsed: float, done: int,
            progress: bool) -> Path:
    """Write the reference file from the recorded frames and remove the ``.partial`` folder."""
    ns_per_day = (done * config.frame_interval * 1e-3) / (elapsed / 86400.0) if done and elapsed > 0 else None

    meta = {
        "format": REFERENCE_FORMAT, "version": 1, "units": REFERENCE_UNITS,
        "config": asdict(config),
        "state": {"temperature_K": config.temperature, "pressure_bar": config.pressure,
                  "density_g_cm3": density if config.pressure is None else None, "ensemble": config.ensemble},
        "species": desc["species"], "forcefield": desc["forcefield"],
        "forcefield_files": desc["forcefield_files"], "system": desc,
        "platform": platform.getName(), "ns_per_day": ns_per_day, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_npz_atomic(out, metadata_json=np.array(json.dumps(meta)), **frames.arrays(), **topology_to_arrays(topology))
    partial.remove()
    _log(progress, f"[reference] wrote {len(frames)} frames to {out}"
         + (f" ({ns_per_day:.2f} ns/day)" if ns_per_day else ""))
    return out


def _run_steps(simulation: app.Simulation, n_steps: int, progress: bool, label: str, chunk: int = 500) -> None:
    bar = _bar(progress, n_steps, 0, label, unit="step")
    done = 0
    while done < n_steps:
        k = min(chunk, n_steps - done)
        simulation.step(k)
        done += k
        bar.update(k)
    bar.close()


def _bar(enabled: bool, total: int, initial: int, desc: str, unit: str = "frame"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=False)


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)


# -- reading ----------------------------------------------------------------------------------

@dataclass
class ReferenceTrajectory:
    """An all-atom reference file loaded into memory (see the module docstring for the arrays)."""

    topology: app.Topology
    positions: np.ndarray
    forces: np.ndarray
    boxes: np.ndarray
    potential_energy: np.ndarray
    time: np.ndarray
    metadata: dict
    pressure: np.ndarray | None = None     # (F,) bar; None in files written before it was recorded


def load_reference(path: str | Path) -> ReferenceTrajectory:
    """Load a reference file written by :func:`run_reference`."""
    path = Path(path)
    expected = "an all-atom reference NPZ from 'openmm-cgnn reference'"
    z = read_npz(path, "reference file", expected)
    meta = read_metadata_json(z, path, "reference file") if "metadata_json" in z else {}
    if meta.get("format") == "openmm-cgnn/cg-dataset":
        raise ReferenceRunError(f"'{path}' is already a mapped CG data set; expected {expected}")
    if "metadata_json" not in z or "top_atom_names" not in z:
        raise ReferenceRunError(f"'{path}' is not an openmm-cgnn all-atom reference file; expected {expected}")
    if meta.get("format") != REFERENCE_FORMAT:
        raise ReferenceRunError(f"'{path}' has format {meta.get('format')!r}, expected {REFERENCE_FORMAT!r}")
    missing = [k for k in ("positions", "forces", "boxes", "potential_energy", "time") if k not in z]
    if missing:
        raise ReferenceRunError(f"reference file '{path}' lacks {', '.join(missing)}")
    try:
        top = topology_from_arrays(z)
    except (KeyError, ValueError, IndexError) as exc:
        raise ReferenceRunError(f"reference file '{path}' has a damaged topology ({exc})") from None
    return ReferenceTrajectory(top, z["positions"], z["forces"], z["boxes"], z["potential_energy"], z["time"], meta,
                               z["pressure"] if "pressure" in z else None)


# old names (ReferenceError shadowed the Python builtin)
__getattr__ = module_getattr(__name__, {"ReferenceError": "ReferenceRunError", "ReferenceBlowUp": "ReferenceBlowUpError"},
                             globals())
