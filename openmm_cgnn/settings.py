"""Process-wide settings that openmm-cgnn needs, made in one place: the package's ``__init__`` imports
this module before anything else, so every entry point (the command line, a script that does
``import openmm_cgnn``, the tests, the benchmarks) gets them before a dependency reads them.

Each one is a default only: a value the user has set already is kept.

``HIPPYNN_USE_CUSTOM_KERNELS=False``
    hippynn chooses its message-passing kernels when it is first imported. With none of its custom
    kernels installed (triton, numba, cupy: not dependencies of openmm-cgnn) it warns at every import
    and falls back to its PyTorch kernels; "False" asks for those kernels directly, without the
    warning. Training then swaps in their uncompiled twin (``training._import_hippynn``), and the
    exported models do not use hippynn at all. Set it to "True" or a kernel name (e.g. "triton") before
    importing openmm_cgnn to train with hippynn's custom kernels where they are installed.

The log filter :func:`drop_simtk_warning` hides the deprecation warning that openmm-torch triggers by
importing ``simtk.openmm``: it says nothing a user of openmm-cgnn can act on.
"""

from __future__ import annotations

import logging
import os

ENVIRONMENT_DEFAULTS = {"HIPPYNN_USE_CUSTOM_KERNELS": "False"}


def drop_simtk_warning(record: logging.LogRecord) -> bool:
    """Log filter: False for openmm-torch's ``simtk.openmm`` deprecation warning."""
    return "importing 'simtk.openmm' is deprecated" not in str(record.msg)


def apply() -> None:
    """Set the environment defaults (keeping values already set) and the log filter; safe to repeat."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    root = logging.getLogger()
    if drop_simtk_warning not in root.filters:
        root.addFilter(drop_simtk_warning)


apply()
