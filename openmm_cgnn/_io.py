"""Small file helpers shared by every stage: atomic writes and overwrite checks."""

from __future__ import annotations

import dataclasses
import json
import os
import platform as _platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


class OutputExistsError(FileExistsError):
    """Raised when an output path exists and the caller did not ask to overwrite it."""


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path; refuse an existing path unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output '{path}' already exists; choose another path or pass --overwrite (overwrite=True)"
        )
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes files private; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """Write a compressed NPZ atomically (numpy would otherwise append '.npz' to the temp name)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return atomic_write(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_config_file(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
                     missing_error: type[Exception] | None = None, fmt: str | None = None) -> Any:
    """Parse a JSON or TOML file: ``fmt`` "json" or "toml", or None to go by the ``.toml`` suffix.

    ``what`` names the file in the messages ("mapping file", ...); a missing file raises
    ``missing_error`` (default ``error``), one that does not parse raises ``error``.
    """
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise (missing_error or error)(f"{what} '{path}' does not exist") from None
    if fmt == "toml" or (fmt is None and path.suffix == ".toml"):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{what} '{path}' is not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} '{path}' is not valid JSON: {exc}") from None


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, paths and dataclasses."""
    return _json_default(obj)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the results depend on."""
    import importlib.metadata as md

    out = {}
    for name in ("openmm_cgnn", "openmm", "torch", "hippynn", "mdtraj", "numpy", "vesin", "vesin-torch",
                 "acellera-openmmtorch-cpu", "acellera-openmmtorch-cu13"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown CPU"
