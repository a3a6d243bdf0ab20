"""The CG OpenMM System: bead masses, the periodic box, and the exported model as a TorchForce.

Two equivalent ways in, as OpenMM users expect::

    system = openmm_cgnn.create_system(cg_topology, "model.pt")
    system = openmmml.MLPotential("cgnn", model="model.pt").createSystem(cg_topology)

Bead types are read from the CG topology's atom names (the bead type names of the mapping).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from .dataset import CGDataset
from .errors import CGNNError, InputFileError, MissingInputError


class CGSystemError(CGNNError, ValueError):
    """A CG System cannot be made for this topology and model (box too small, unknown bead type...)."""


def _load_model(model: Any) -> tuple[Any, dict]:
    """``model`` is a path to an exported ``.pt`` file or a ``(ScriptModule, metadata)`` pair."""
    if isinstance(model, (str, Path)):
        from .export import load_exported

        return load_exported(model)
    module, metadata = model
    return module, metadata


def _box_widths(box_vectors: np.ndarray) -> np.ndarray:
    """Perpendicular widths (nm) of a box with vectors as rows (3, 3)."""
    a, b, c = box_vectors
    volume = abs(np.dot(a, np.cross(b, c)))
    return np.array([volume / np.linalg.norm(np.cross(b, c)), volume / np.linalg.norm(np.cross(c, a)),
                     volume / np.linalg.norm(np.cross(a, b))])


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
                f"bead '{atom.name}' (atom {atom.index}) has a type the model was not trained on; the model knows "
                f"{', '.join(type_names)}. Build the CG topology with the same mapping as the training data.")
        out.append(index[atom.name])
    return np.array(out, dtype=np.int64)


def check_box(box_vectors: Any, cutoff_nm: float) -> np.ndarray:
    """Box vectors as a (3, 3) array in nm; CGSystemError if any width is below twice the cutoff."""
    if box_vectors is None:
        raise CGSystemError("the CG topology has no periodic box; set one with topology.setPeriodicBoxVectors(...)")
    box = np.array([[v.value_in_unit(u.nanometer) if u.is_quantity(v) else v for v in vec] for vec in box_vectors]) \
        if not u.is_quantity(box_vectors) else np.array(box_vectors.value_in_unit(u.nanometer))
    widths = _box_widths(box)
    if np.any(widths < 2.0 * cutoff_nm):
        raise CGSystemError(
            f"the box (widths {', '.join(f'{w:.3f}' for w in widths)} nm) is smaller than twice the model cutoff "
            f"({cutoff_nm:.3f} nm); use a larger box (more molecules)")
    return box


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
    """An OpenMM System for ``cg_topology`` driven by the CG model.

    Parameters
    ----------
    cg_topology: Topology of beads (atom names = bead types) with periodic box vectors (nm).
    model: path of an exported model (``openmm-cgnn export``) or a (ScriptModule, metadata) pair.
    masses: bead masses in amu, one per bead; default: the per-type masses recorded in the model.
    remove_cm_motion: add a CMMotionRemover.
    use_cuda_graphs: ask openmm-torch to capture the model in a CUDA graph (CUDA platform only);
        None (default): on where capture works, see :func:`resolve_cuda_graphs`.
    cuda_graph_warmup_steps: model calls before the capture (openmm-torch's default when None).
    mts_fast: None for one force group; ``"prior"``, a pair force field file (``.json``) or a
        ``PairForceField`` to split the forces for multiple time stepping (:mod:`openmm_cgnn.mts`):
        the fast pair force in group 0, the model minus that pair force in group 1. Integrate with
        ``openmm_cgnn.mts.langevin_integrator`` (or any MTS integrator over groups 0 and 1).
    neighbour_capacity: neighbours per bead the model's fixed neighbour table holds; 0 (default): the
        capacity recorded in the model at export (from the training data, with a margin). Raise it
        when a run stops with a neighbour-table overflow (a denser state than the training data).
    temperature: K, the run temperature seen by the model's volume term when it has a temperature
        trend (default: the temperature it was fitted at); for a temperature-aware model also the
        default of its TorchForce global parameter ``"temperature"`` (default: the middle of its
        training temperatures), which ``context.setParameter("temperature", T)`` changes at run time.
    """
    module, metadata = _load_model(model)
    system = openmm.System()
    box = check_box(cg_topology.getPeriodicBoxVectors(), float(metadata["cutoff_nm"]))
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * u.nanometer for row in box])
    if masses is None:
        by_type = type_masses(metadata)
        masses = [by_type.get(atom.name, 0.0) for atom in cg_topology.atoms()]
    if len(masses) != cg_topology.getNumAtoms():
        raise CGSystemError(f"got {len(masses)} masses for {cg_topology.getNumAtoms()} beads")
    for m in masses:
        system.addParticle(float(m))
    model_force = system.addForce(make_torch_force(module, metadata, cg_topology, use_cuda_graphs=use_cuda_graphs,
                                                   cuda_graph_warmup_steps=cuda_graph_warmup_steps,
                                                   neighbour_capacity=neighbour_capacity, temperature=temperature))
    if mts_fast is not None:
        from .mts import add_fast_split

        add_fast_split(system, [model_force], cg_topology, metadata, mts_fast)
    add_model_bonded_forces(system, cg_topology, metadata)
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system


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


class CGModel:
    """A CG force field file that makes OpenMM Systems: an exported HIP-NN-TS model (``.pt``) or a
    pairwise force-matched baseline (``.json`` from :mod:`openmm_cgnn.baselines`).

    ``metadata`` holds at least ``type_names``, ``cutoff_nm`` and, where known, ``prior`` and
    ``type_masses``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingInputError(f"model file '{self.path}' does not exist")
        if self.path.is_dir():
            raise InputFileError(f"model '{self.path}' is a folder; give the exported model file (.pt): "
                                 f"make it with 'openmm-cgnn export {self.path} --out model.pt'")
        if self.path.suffix == ".json":
            from .baselines import PairForceField

            self.kind = "pair"
            self.pair = PairForceField.load(self.path)
            self.metadata = {"type_names": list(self.pair.type_names), "cutoff_nm": float(self.pair.cutoff),
                             "prior": self.pair.prior.to_dict(), "kind": "pair",
                             "provenance": self.pair.provenance}
        else:
            from .export import load_exported

            self.kind = "torchscript"
            self.module, self.metadata = load_exported(self.path)

    def create_system(self, topology: app.Topology, masses: Sequence[float] | None = None,
                      use_cuda_graphs: bool | None = None, cuda_graph_warmup_steps: int | None = None,
                      mts_fast: Any = None, neighbour_capacity: int = 0,
                      temperature: float | None = None) -> openmm.System:
        """The System for ``topology``; the options are those of :func:`create_system` (a pair
        force field is cheap already: it takes no CUDA graph, MTS or neighbour-table options)."""
        if self.kind == "pair":
            if mts_fast is not None:
                from .mts import MTSConfigError

                raise MTSConfigError("multiple time stepping splits a network model; a pair force field is cheap "
                                     "already: run it without --mts")
            if masses is None:
                by_type = type_masses(self.metadata) if self.metadata.get("type_masses") else None
                if by_type is None:
                    raise CGSystemError("a pair force field records no masses; start from a CG data set")
                masses = [by_type[a.name] for a in topology.atoms()]
            return self.pair.create_system(topology, bead_masses=masses, temperature=temperature)
        return create_system(topology, (self.module, self.metadata), masses=masses, use_cuda_graphs=use_cuda_graphs,
                             cuda_graph_warmup_steps=cuda_graph_warmup_steps, mts_fast=mts_fast,
                             neighbour_capacity=neighbour_capacity, temperature=temperature)
