"""File helpers shared by every stage, and by scripts that write results the same way: atomic writes
(``atomic_write``, ``save_npz_atomic``, ``write_text_atomic``, ``write_json_atomic``), overwrite and
permission checks made before a run starts, checked reading of NPZ/JSON/TOML inputs, and the
provenance recorded next to outputs (``versions``, ``cpu_model``)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform as _platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CGNNError, InputFileError, MissingInputError, OutputExistsError, OutputPathError


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path; refuse an existing path unless ``overwrite``, and a path that cannot
    be written (see :func:`check_writable`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output '{path}' already exists; choose another path or pass --overwrite")
    check_writable(path)
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """OutputPathError unless ``path`` (a file or folder to create) could be written: its nearest existing
    ancestor must be a writable folder. Checked before a run starts, so that it does not fail at the end."""
    path = Path(path)
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot write '{path}': '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write '{path}': no permission to write in '{parent}'")
    return path


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents); OutputPathError if that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder '{path}': {exc.strerror or exc}") from None
    return path


def read_npz(path: str | os.PathLike, what: str, expected: str, required: tuple[str, ...] = (),
             keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an NPZ file (``keys`` only, or all), read at once.

    ``what`` names the file in messages ("data set"), ``expected`` says what it should be ("a CG data set
    from 'openmm-cgnn map'"). A missing file raises MissingInputError; a folder, an empty, text, truncated
    or damaged file, or one without the ``required`` arrays raises InputFileError naming the file.
    """
    import zipfile
    import zlib

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise InputFileError(f"{what} '{path}' is a folder; expected {expected}")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise InputFileError(f"{what} '{path}' is empty; expected {expected}")
    if not head.startswith(b"PK"):
        kind = "a text file" if _looks_like_text(head) else "not an NPZ (zip) file"
        raise InputFileError(f"{what} '{path}' is {kind}; expected {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in required if k not in z.files]
            if missing:
                raise InputFileError(f"{what} '{path}' is not {expected} (it lacks {', '.join(missing)})")
            return {k: z[k] for k in (z.files if keys is None else [k for k in keys if k in z.files])}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, CGNNError):
            raise
        raise InputFileError(f"{what} '{path}' is truncated or damaged ({type(exc).__name__}: {exc}); "
                             f"expected {expected}") from None


def read_metadata_json(arrays: dict[str, np.ndarray], path: str | os.PathLike, what: str) -> dict:
    """The ``metadata_json`` entry of NPZ arrays as a dict; InputFileError if it is not JSON."""
    try:
        meta = json.loads(str(arrays["metadata_json"]))
    except (KeyError, ValueError) as exc:
        raise InputFileError(f"{what} '{path}' has no readable metadata_json ({exc})") from None
    if not isinstance(meta, dict):
        raise InputFileError(f"{what} '{path}' has metadata_json that is not a JSON object")
    return meta


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write '{path}': {exc.strerror or exc}") from None
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
    except (OSError, UnicodeDecodeError) as exc:   # a folder, a binary file ...
        raise error(f"{what} '{path}' cannot be read as text ({exc})") from None
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
