"""OpenMM-ML registration: ``MLPotential("cgnn", model="model.pt").createSystem(cg_topology)``.

openmmml finds this module through the entry point "cgnn" in the group "openmmml.potentials"
(see pyproject.toml). It is kept apart from ``system`` because openmmml imports it while openmmml
itself is still being imported.
"""

from __future__ import annotations

from typing import Any

import openmm.unit as u
from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

from .system import CGSystemError, _load_model, add_model_bonded_forces, make_torch_force, type_masses



class CGNNPotentialImpl(MLPotentialImpl):
    """``MLPotential('cgnn', model='model.pt')``: an openmm-cgnn exported model."""

    def __init__(self, name: str, model: Any = None, **args):
        if model is None:
            raise CGSystemError("MLPotential('cgnn') needs model='path/to/model.pt' (from 'openmm-cgnn export')")
        self.model = model

    def addForces(self, topology, system, atoms, forceGroup, use_cuda_graphs: bool | None = None,
                  neighbour_capacity: int = 0, **args):
        module, metadata = _load_model(self.model)
        # openmmml gives element-less atoms zero mass; beads get the masses the model was trained with
        if atoms is not None and len(list(atoms)) != topology.getNumAtoms():
            raise CGSystemError("openmm-cgnn models act on the whole CG topology; mixed systems are not supported")
        by_type = type_masses(metadata)
        for atom in topology.atoms():
            if system.getParticleMass(atom.index).value_in_unit(u.dalton) == 0:
                system.setParticleMass(atom.index, by_type.get(atom.name, 0.0))
        # createSystem(topology, temperature=T) sets the run temperature of the model's volume term
        force = make_torch_force(module, metadata, topology, use_cuda_graphs=use_cuda_graphs,
                                 neighbour_capacity=neighbour_capacity, temperature=args.get("temperature"))
        force.setForceGroup(forceGroup)
        system.addForce(force)
        for bonded in add_model_bonded_forces(system, topology, metadata):
            bonded.setForceGroup(forceGroup)


class CGNNPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, **args) -> CGNNPotentialImpl:
        return CGNNPotentialImpl(name, **args)
