"""openmm-cgnn: thermodynamically transferable coarse-grained OpenMM simulations with HIP-NN-TS.

Pipeline, one module per stage: ``reference`` (all-atom data) -> ``mapping`` (beads) ->
``training`` (hippynn force matching) -> ``export`` (TorchScript) -> ``system`` (OpenMM System)
-> ``simulate`` (CG MD) -> ``analysis``/``harness`` (comparison with the all-atom reference).

Exported models carry their own neighbour search; importing the package also registers vesin's
TorchScript neighbour list, which models exported in the first file format need. The models are OpenMM-ML
potentials: ``MLPotential("cgnn", model="model.pt")`` (exported HIP-NN-TS models) and
``MLPotential("cgpair", model="pair.json")`` (pair force fields).

The names a script needs::

    import openmm_cgnn
    ds = openmm_cgnn.CGDataset.load("cg.npz")                      # a mapped (CG) data set
    topology = openmm_cgnn.cg_topology_from_dataset(ds)            # beads named by type, periodic box
    system = openmm_cgnn.create_system(topology, "model.pt")       # or "pair.json", masses=ds.bead_masses
    module, metadata = openmm_cgnn.load_exported("model.pt")       # the TorchScript model and its metadata

Every error caused by the input derives from ``openmm_cgnn.CGNNError``.
"""

from . import settings as _settings  # noqa: F401  (first: environment defaults, see openmm_cgnn.settings)

import vesin_torch as _vesin_torch  # noqa: E402,F401  (registers torch.classes.vesin)
import openmmml as _openmmml  # noqa: E402,F401  (first, so that its loading of our potentials finds whole modules)

from .dataset import CGDataset  # noqa: E402
from .errors import CGNNError  # noqa: E402
from .export import load_exported  # noqa: E402
from .reporters import CGBlowUpReporter, CGFrameReporter, CGSimulationBlowUpError  # noqa: E402
from .system import cg_topology_from_dataset, create_system  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CGDataset",
    "CGNNError",
    "cg_topology_from_dataset",
    "create_system",
    "load_exported",
    "CGBlowUpReporter",
    "CGFrameReporter",
    "CGSimulationBlowUpError",
]
