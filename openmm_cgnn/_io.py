"""Transitional: the old private name of :mod:`openmm_cgnn.files`, for modules written before the rename.
Import from ``openmm_cgnn.files``; this module goes once nothing imports it."""

from .files import *  # noqa: F401,F403
