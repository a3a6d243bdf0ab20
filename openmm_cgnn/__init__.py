"""openmm-cgnn: thermodynamically transferable coarse-grained OpenMM simulations with HIP-NN-TS.

Pipeline, one module per stage: ``reference`` (all-atom data) -> ``mapping`` (beads) ->
``training`` (hippynn force matching) -> ``export`` (TorchScript) -> ``system`` (OpenMM System)
-> ``simulate`` (CG MD) -> ``analysis``/``harness`` (comparison with the all-atom reference).

Importing the package registers vesin's TorchScript neighbour list, which exported models use, so
a plain OpenMM script that does ``import openmm_cgnn`` can load them.
"""

from . import settings as _settings  # noqa: F401  (first: environment defaults, see openmm_cgnn.settings)

import vesin_torch as _vesin_torch  # noqa: E402,F401  (registers torch.classes.vesin)

__version__ = "0.1.0"


def create_system(*args, **kwargs):
    """See :func:`openmm_cgnn.system.create_system`."""
    from .system import create_system as _create_system

    return _create_system(*args, **kwargs)
