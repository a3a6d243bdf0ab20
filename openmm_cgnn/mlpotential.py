"""The ``cgnn`` potential: an exported HIP-NN-TS model (TorchScript ``.pt`` from ``openmm-cgnn export``)
as an OpenMM-ML potential::

    system = MLPotential("cgnn", model="model.pt").createSystem(cg_topology, removeCMMotion=False)

openmmml finds this module through the entry point "cgnn" in the group "openmmml.potentials"
(see pyproject.toml). It is kept apart from ``system`` because openmmml imports it while openmmml
itself is still being imported. The pair force fields have their own module, :mod:`openmm_cgnn.cgpair`.

``createSystem`` takes, besides OpenMM-ML's own arguments, the options of
:func:`openmm_cgnn.system.create_system`: ``masses``, ``use_cuda_graphs``, ``cuda_graph_warmup_steps``,
``mts_fast``, ``neighbour_capacity`` and ``temperature``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

from .system import (CGSystemError, _load_model, add_model_bonded_forces, bead_type_indices, make_torch_force,
                     check_potential, require_whole_topology, set_bead_masses)

#: the first bytes of a TorchScript file (a zip archive)
_ZIP_MAGIC = b"PK"


def reads(model: Any) -> bool:
    """Whether ``model`` is this potential's: an exported model file (``.pt``/``.pth``, or any zip file, so
    that a damaged or wrong one gets :func:`openmm_cgnn.export.load_exported`'s message) or a loaded
    ``(ScriptModule, metadata)`` pair."""
    if isinstance(model, tuple):
        return len(model) == 2 and isinstance(model[1], dict)
    if not isinstance(model, (str, Path)):
        return False
    path = Path(model)
    if path.suffix in (".pt", ".pth"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    except OSError:
        return False


def load(model: Any) -> tuple[tuple[Any, dict], dict, Any]:
    """(the ``(ScriptModule, metadata)`` pair, its metadata, the ScriptModule) of a path or a pair."""
    module, metadata = _load_model(model)
    return (module, metadata), metadata, module


def describe(metadata: dict) -> dict[str, Any]:
    """The report entries of an exported model: kind, label, file format, network and training facts."""
    training = metadata.get("training") or {}
    datasets = [{"name": d.get("name"), "n_frames": d.get("n_frames"), "n_beads": d.get("n_beads"),
                 "state": d.get("state")} for d in training.get("datasets", [])]
    return {"kind": "torchscript", "label": "CG (GNN)", "format": metadata.get("format"),
            "network_class": metadata.get("network_class"), "tensor_order": metadata.get("tensor_order"),
            "dtype": metadata.get("dtype"),
            "training_state_points": training.get("state_points", [d["state"] for d in datasets if d.get("state")]),
            "training_datasets": datasets, "trained": training.get("created")}


class CGNNPotentialImpl(MLPotentialImpl):
    """``MLPotential('cgnn', model='model.pt')``: an openmm-cgnn exported model (a path, or a loaded
    ``(ScriptModule, metadata)`` pair)."""

    def __init__(self, name: str, model: Any = None, **args):
        if model is None:
            raise CGSystemError("MLPotential('cgnn') needs model='path/to/model.pt' (from 'openmm-cgnn export')")
        check_potential("cgnn", model)
        self.model = model

    def addForces(self, topology, system, atoms, forceGroup, masses: Sequence[float] | None = None,
                  use_cuda_graphs: bool | None = None, cuda_graph_warmup_steps: int | None = None,
                  mts_fast: Any = None, neighbour_capacity: int = 0, temperature: float | None = None, **args):
        """The model's TorchForce (and its bonded terms) on every bead; beads get ``masses`` (amu) or the
        masses the model was trained with. ``temperature`` (K, as in ``createSystem(topology,
        temperature=T)``) sets the run temperature of the model's volume term."""
        module, metadata = _load_model(self.model)
        require_whole_topology(topology, atoms)
        bead_type_indices(topology, metadata["type_names"])
        set_bead_masses(system, topology, masses, metadata.get("type_masses"))
        force = make_torch_force(module, metadata, topology, use_cuda_graphs=use_cuda_graphs,
                                 cuda_graph_warmup_steps=cuda_graph_warmup_steps,
                                 neighbour_capacity=neighbour_capacity, temperature=temperature)
        force.setForceGroup(forceGroup)
        model_force = system.addForce(force)
        if mts_fast is not None:
            from .mts import add_fast_split

            add_fast_split(system, [model_force], topology, metadata, mts_fast)
        for bonded in add_model_bonded_forces(system, topology, metadata):
            bonded.setForceGroup(forceGroup)


class CGNNPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, **args) -> CGNNPotentialImpl:
        return CGNNPotentialImpl(name, **args)
