"""The CG OpenMM System: bead masses, bead types and the periodic box, checked the same way for every
model, and the exported model as a TorchForce.

Every model file is read through the OpenMM-ML potential registered for it (entry points of the
group ``openmmml.potentials``): ``cgnn`` for exported HIP-NN-TS models (``.pt``, :mod:`openmm_cgnn.mlpotential`),
``cgpair`` for pair force fields (``.json``, :mod:`openmm_cgnn.cgpair`). Equivalent ways in, as OpenMM
users expect::

    system = openmm_cgnn.create_system(cg_topology, "model.pt")          # or "pair.json"
    system = openmmml.MLPotential("cgnn", model="model.pt").createSystem(cg_topology, removeCMMotion=False)
    system = openmmml.MLPotential("cgpair", model="pair.json").createSystem(cg_topology, masses=bead_masses)

Bead types are read from the CG topology's atom names (the bead type names of the mapping).
"""

from __future__ import annotations

import functools
from importlib import import_module
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from .dataset import CGDataset
from .errors import CGNNError, InputFileError
from .geometry import box_vectors_nm, box_widths, cutoff_fits


class CGSystemError(CGNNError, ValueError):
    """A CG System cannot be made for this topology and model (box too small, unknown bead type...)."""


def _load_model(model: Any) -> tuple[Any, dict]:
    """``model`` is a path to an exported ``.pt`` file or a ``(ScriptModule, metadata)`` pair."""
    if isinstance(model, (str, Path)):
        from .export import load_exported

        return load_exported(model)
    module, metadata = model
    return module, metadata


# -- the checks every model family shares --------------------------------------------------------

def bead_type_indices(topology: app.Topology, type_names: Sequence[str], atoms: Iterable[int] | None = None) -> np.ndarray:
    """Index into ``type_names`` of each bead (topology atom name); CGSystemError for a type the model never saw."""
    index = {name: i for i, name in enumerate(type_names)}
    chosen = set(atoms) if atoms is not None else None
    out = []
    for atom in topology.atoms():
        if chosen is not None and atom.index not in chosen:
            continue
        if atom.name not in index:
            raise CGSystemError(
                f"bead '{atom.name}' (atom {atom.index}) has a type the model was not trained on: topology atom "
                f"names ['{atom.name}'] are not bead types of the model ({', '.join(type_names)}). Build the CG "
                "topology with the same mapping as the training data.")
        out.append(index[atom.name])
    return np.array(out, dtype=np.int64)


def check_box(box_vectors: Any, cutoff_nm: float) -> np.ndarray:
    """Box vectors as a (3, 3) array in nm; CGSystemError if the box has no vectors or if a
    perpendicular width is below twice the cutoff (:func:`openmm_cgnn.geometry.cutoff_fits`)."""
    if box_vectors is None:
        raise CGSystemError("the CG topology has no periodic box; set one with topology.setPeriodicBoxVectors(...)")
    box = box_vectors_nm(box_vectors)
    if not cutoff_fits(box, cutoff_nm):
        widths = box_widths(box)
        raise CGSystemError(
            f"the box (widths {', '.join(f'{w:.3f}' for w in widths)} nm) is smaller than twice the model cutoff "
            f"({cutoff_nm:.3f} nm): the cutoff exceeds half the box width ({0.5 * widths.min():.4f} nm); use a "
            "larger box (more molecules)")
    return box


def bead_masses(topology: app.Topology, masses: Sequence[float] | None = None,
                type_masses: dict[str, float] | None = None, argument: str = "masses") -> np.ndarray:
    """Masses (N,) in amu of the beads of ``topology``: ``masses`` as given (one per bead), else the
    model's per-type masses ``type_masses`` (bead type name -> amu), else the atoms' element masses.
    CGSystemError naming ``argument`` (the caller's name for ``masses``) when none of them gives them."""
    n = topology.getNumAtoms()
    if masses is not None:
        out = np.asarray(masses, dtype=np.float64)
        if out.shape != (n,):
            raise CGSystemError(f"{argument} has shape {out.shape}: {out.size} masses for {n} beads; give one "
                                "mass (amu) per bead")
    else:
        atoms = list(topology.atoms())
        by_type = {str(k): float(v) for k, v in (type_masses or {}).items()}
        if by_type and all(a.name in by_type for a in atoms):
            out = np.array([by_type[a.name] for a in atoms])
        elif all(a.element is not None for a in atoms):
            out = np.array([a.element.mass.value_in_unit(u.dalton) for a in atoms])
        else:
            raise CGSystemError("the bead masses are unknown: the CG topology's atoms have no element and the model "
                                f"records no masses for their types; pass {argument} (amu, one per bead), e.g. "
                                "CGDataset.bead_masses")
    if not np.all(out > 0):
        raise CGSystemError(f"bead masses must be positive ({argument})")
    return out


def set_bead_masses(system: openmm.System, topology: app.Topology, masses: Sequence[float] | None = None,
                    type_masses: dict[str, float] | None = None, argument: str = "masses") -> None:
    """Give the particles of ``system`` (one per bead of ``topology``) the masses of :func:`bead_masses`."""
    for i, m in enumerate(bead_masses(topology, masses, type_masses, argument)):
        system.setParticleMass(i, float(m))


def require_whole_topology(topology: app.Topology, atoms: Iterable[int] | None) -> None:
    """CGSystemError unless a model acts on every bead (``atoms`` None or all of them): openmm-cgnn
    models do not make mixed systems."""
    if atoms is not None and len(list(atoms)) != topology.getNumAtoms():
        raise CGSystemError("openmm-cgnn models act on the whole CG topology; mixed systems are not supported")


def type_masses(metadata: dict) -> dict[str, float]:
    """Bead type name -> mass (amu) recorded in an exported model's metadata."""
    masses = metadata.get("type_masses")
    if not masses:
        raise CGSystemError("the model file records no bead masses; pass masses=... to create_system")
    return {str(k): float(v) for k, v in masses.items()}


CUDA_GRAPH_PLATFORMS = ("CUDA",)


def resolve_cuda_graphs(requested: bool | None, platform_name: str | None = None) -> bool:
    """Whether the TorchForce asks openmm-torch for CUDA graphs: the one place this default is chosen.

    ``requested`` True/False is taken as it is. ``None`` (the default everywhere) means "where capture
    works": on for the CUDA platform, off for any other named platform. With no platform named yet (a
    System built before its Context) ``None`` turns the property on, which is the same choice:
    openmm-torch reads ``useCUDAGraphs`` only on the CUDA platform, and the CPU and Reference
    platforms run the model as before.
    """
    if requested is not None:
        return bool(requested)
    return platform_name is None or platform_name in CUDA_GRAPH_PLATFORMS


def make_torch_force(module: Any, metadata: dict, topology: app.Topology, atoms: Iterable[int] | None = None,
                     use_cuda_graphs: bool | None = False, cuda_graph_warmup_steps: int | None = None,
                     neighbour_capacity: int = 0, temperature: float | None = None):
    """The openmm-torch TorchForce for ``module`` with the bead types of ``topology`` fixed and its
    neighbour table laid out for this bead count and box (``neighbour_capacity`` neighbours per bead;
    0: the capacity recorded in the model).

    ``use_cuda_graphs``: set the TorchForce property ``useCUDAGraphs`` (None: see
    :func:`resolve_cuda_graphs`); ``cuda_graph_warmup_steps``: its ``CUDAGraphWarmupSteps`` (model
    calls before capture; openmm-torch's default when None). ``temperature`` (K): the run temperature
    of the model's volume term (``openmm_cgnn.volume``) and, for a temperature-aware model, the
    default of the TorchForce global parameter ``"temperature"`` (``openmm_cgnn.thermal``).
    """
    import openmmtorch
    import torch

    box = check_box(topology.getPeriodicBoxVectors(), float(metadata["cutoff_nm"]))
    types = bead_type_indices(topology, metadata["type_names"], atoms)
    if len(metadata["type_names"]) > 1:
        module.set_types(torch.tensor(types, dtype=torch.int64))
    if temperature is not None and hasattr(module, "volume_term"):
        module.volume_term.set_temperature(float(temperature))
    if hasattr(module, "configure"):  # files of export format 1 have no fixed layout
        module.configure(len(types), torch.tensor(box, dtype=torch.float64), int(neighbour_capacity))
    force = openmmtorch.TorchForce(module)
    force.setUsesPeriodicBoundaryConditions(True)
    if metadata.get("temperature_aware"):  # U(R, T): T is a global parameter, set with context.setParameter
        from .thermal import add_temperature_parameter

        add_temperature_parameter(force, metadata, temperature)
    if resolve_cuda_graphs(use_cuda_graphs):
        force.setProperty("useCUDAGraphs", "true")
        if cuda_graph_warmup_steps is not None:
            if int(cuda_graph_warmup_steps) < 1:
                raise CGSystemError("the CUDA graph warm-up must be at least 1 model call")
            force.setProperty("CUDAGraphWarmupSteps", str(int(cuda_graph_warmup_steps)))
    return force


def create_system(cg_topology: app.Topology, model: Any, masses: Sequence[float] | None = None,
                  remove_cm_motion: bool = False, use_cuda_graphs: bool | None = None,
                  cuda_graph_warmup_steps: int | None = None, mts_fast: Any = None,
                  neighbour_capacity: int = 0, temperature: float | None = None) -> openmm.System:
    """An OpenMM System for ``cg_topology`` driven by the CG model, made by the OpenMM-ML potential
    registered for the model (:func:`potential_for`).

    Parameters
    ----------
    cg_topology: Topology of beads (atom names = bead types) with periodic box vectors (nm).
    model: path of an exported model (``openmm-cgnn export``, ``.pt``) or of a pair force field
        (``.json``, :mod:`openmm_cgnn.baselines`), or such a model loaded: a (ScriptModule, metadata)
        pair or a ``PairForceField``.
    masses: bead masses in amu, one per bead; default: the per-type masses recorded in the model (a
        pair force field records none: give them, e.g. ``CGDataset.bead_masses``).
    remove_cm_motion: add a CMMotionRemover.
    use_cuda_graphs: ask openmm-torch to capture the model in a CUDA graph (CUDA platform only);
        None (default): on where capture works, see :func:`resolve_cuda_graphs`.
    cuda_graph_warmup_steps: model calls before the capture (openmm-torch's default when None).
    mts_fast: None for one force group; ``"prior"``, a pair force field file (``.json``) or a
        ``PairForceField`` to split the forces for multiple time stepping (:mod:`openmm_cgnn.mts`):
        the fast pair force in group 0, the model minus that pair force in group 1. Integrate with
        ``openmm_cgnn.mts.langevin_integrator`` (or any MTS integrator over groups 0 and 1). Network
        models only.
    neighbour_capacity: neighbours per bead the model's fixed neighbour table holds; 0 (default): the
        capacity recorded in the model at export (from the training data, with a margin). Raise it
        when a run stops with a neighbour-table overflow (a denser state than the training data).
    temperature: K, the run temperature seen by the model's volume term when it has a temperature
        trend (default: the temperature it was fitted at); for a temperature-aware model also the
        default of its TorchForce global parameter ``"temperature"`` (default: the middle of its
        training temperatures), which ``context.setParameter("temperature", T)`` changes at run time.

    Options a model family has no use for (CUDA graphs and the neighbour table for a pair force
    field) are ignored.
    """
    return CGModel(model).create_system(cg_topology, masses=masses, remove_cm_motion=remove_cm_motion,
                                        use_cuda_graphs=use_cuda_graphs,
                                        cuda_graph_warmup_steps=cuda_graph_warmup_steps, mts_fast=mts_fast,
                                        neighbour_capacity=neighbour_capacity, temperature=temperature)


def add_model_bonded_forces(system: openmm.System, cg_topology: app.Topology, metadata: dict) -> list:
    """The model's bonded CG terms (bonds and angles within multi-bead molecules, fitted at training) as
    OpenMM forces on the bonds of ``cg_topology``; nothing for one-bead molecules or older models."""
    from .bonded import BondedError, add_bonded_forces

    bonded = (metadata.get("training") or {}).get("bonded") or metadata.get("bonded")
    try:
        return add_bonded_forces(system, cg_topology, bonded)
    except BondedError as exc:
        raise CGSystemError(f"{exc}. Build the CG topology with the same mapping as the training data.") from None


def cg_topology_from_dataset(ds: CGDataset, frame: int = 0) -> app.Topology:
    """The CG Topology of a data set: one residue per molecule, atoms named by bead type, box of ``frame``."""
    from .mapping import build_cg_topology

    return build_cg_topology([ds.type_names[t] for t in ds.bead_types], ds.bead_residues,
                             box_vectors=[openmm.Vec3(*row) for row in ds.boxes[frame]] * u.nanometer)


# -- the registry: which OpenMM-ML potential reads a model --------------------------------------

POTENTIAL_GROUP = "openmmml.potentials"


@functools.lru_cache(maxsize=None)
def _families() -> tuple[tuple[str, Any], ...]:
    """(name, module) of the OpenMM-ML potentials this package registers (entry points of
    ``openmmml.potentials`` whose module is ours); each module has ``reads(model)``, ``load(model)`` and
    ``describe(metadata)``."""
    from importlib.metadata import entry_points

    package = __name__.split(".")[0]
    found: dict[str, Any] = {}
    for entry in entry_points(group=POTENTIAL_GROUP):
        if entry.module.split(".")[0] == package and entry.name not in found:
            found[entry.name] = import_module(entry.module)
    return tuple(sorted(found.items()))


def potential_for(model: Any) -> str:
    """The name of the registered OpenMM-ML potential that reads ``model`` (a model file, or a model
    loaded as its family loads it): ``"cgnn"`` for an exported model (``.pt``), ``"cgpair"`` for a pair
    force field (``.json``). Each family's module recognises its own models (``reads``).

    MissingInputError for a path that does not exist, InputFileError for a folder or a file no
    registered potential reads.
    """
    if isinstance(model, (str, Path)):
        from .export import check_model_file

        check_model_file(model)
    families = _families()
    for name, family in families:
        if family.reads(model):
            return name
    names = ", ".join(name for name, _ in families) or "none"
    raise InputFileError(f"'{model}' is not an exported openmm-cgnn model (the TorchScript .pt written by "
                         f"'openmm-cgnn export') nor a pair force field (.json); no registered potential "
                         f"({names}) reads it (if one is missing, reinstall openmm-cgnn: pip install -e .)")


def check_potential(name: str, model: Any) -> None:
    """CGSystemError naming the potential to use when ``model`` is a file that the registered potential
    ``name`` does not read but another one does (``MLPotential("cgpair", model="model.pt")``, say)."""
    if not isinstance(model, (str, Path)):
        return
    try:
        other = potential_for(model)
    except CGNNError:
        return   # no potential reads it: the loader says what is wrong with the file
    if other != name:
        raise CGSystemError(f"'{model}' is a model of the '{other}' potential, not of '{name}': use "
                            f"MLPotential('{other}', model=...) or openmm_cgnn.create_system(topology, model)")


class CGModel:
    """A CG model read through the OpenMM-ML potential registered for it (:func:`potential_for`).

    ``potential``: the potential's name (``MLPotential(potential, ...)``); ``model``: the loaded model
    as that potential takes it (``model=``); ``metadata``: at least ``type_names``, ``cutoff_nm`` and,
    where known, ``prior`` and ``type_masses``; ``module``: the TorchScript module the model runs
    (None for a model without one, such as a pair force field); ``path``: the file (None for a model
    given loaded).
    """

    def __init__(self, model: Any):
        self.path = Path(model) if isinstance(model, (str, Path)) else None
        self.potential = potential_for(model)
        family = dict(_families())[self.potential]
        self.model, self.metadata, self.module = family.load(model)
        self._family = family

    def describe(self) -> dict[str, Any]:
        """What kind of model this is, for reports: ``kind``, ``label``, ``format`` and the network and
        training facts the family records (see each family's ``describe``)."""
        return self._family.describe(self.metadata)

    def create_system(self, topology: app.Topology, masses: Sequence[float] | None = None,
                      remove_cm_motion: bool = False, **options: Any) -> openmm.System:
        """The System for ``topology`` from ``MLPotential(self.potential, model=self.model)``; the options
        are those of :func:`create_system`."""
        from openmmml import MLPotential

        return MLPotential(self.potential, model=self.model).createSystem(
            topology, removeCMMotion=remove_cm_motion, masses=masses, **options)
