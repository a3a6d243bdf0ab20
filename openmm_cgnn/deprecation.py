"""Old names kept for scripts written against openmm-cgnn 0.1: using one works and warns
(``DeprecationWarning``) with the new name."""

from __future__ import annotations

import warnings
from typing import Any, Callable


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


class renamed:
    """A class attribute standing for an old name of a classmethod (or any attribute) of the class::

        class TrainConfig:
            preset = renamed("from_preset")     # TrainConfig.preset("tiny") warns, then works
    """

    def __init__(self, new: str):
        self.new = new
        self.old = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, instance: Any, owner: type) -> Any:
        _warn(f"{owner.__name__}.{self.old}", f"{owner.__name__}.{self.new}")
        return getattr(owner if instance is None else instance, self.new)


def module_getattr(module: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that answers each old name in ``names`` (old -> new) with the
    object the new name has in ``namespace`` (the module's ``globals()``), warning."""

    def __getattr__(name: str) -> Any:
        if name in names:
            _warn(f"{module}.{name}", names[name])
            return namespace[names[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
