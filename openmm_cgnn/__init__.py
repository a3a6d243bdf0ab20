"""openmm-cgnn: thermodynamically transferable coarse-grained OpenMM simulations with HIP-NN-TS.

Pipeline, one module per stage: ``reference`` (all-atom data) -> ``mapping`` (beads) ->
``training`` (hippynn force matching) -> ``export`` (TorchScript) -> ``system`` (OpenMM System)
-> ``analysis``/``harness`` (comparison with the all-atom reference).
"""

__version__ = "0.1.0"
