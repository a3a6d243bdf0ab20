"""The coarse-grained force-matching data set: one compressed NPZ file per state point.

File format (``numpy.savez_compressed``; every array named below, plus ``metadata_json``):

=================  ==============  ==========================================================
key                shape / dtype   meaning (units)
=================  ==============  ==========================================================
positions          (F, N, 3) f8    bead positions, nm (centres of mass, wrapped into the box)
forces             (F, N, 3) f8    mapped forces on beads, kJ/mol/nm
boxes              (F, 3, 3) f8    periodic box vectors as rows, nm
potential_energy   (F,) f8         all-atom potential energy of each frame, kJ/mol
bead_types         (N,) i8         bead type index into ``type_names`` (0-based)
type_names         (T,) str        bead type names
bead_masses        (N,) f8         bead masses, amu (Dalton)
bead_residues      (N,) i8         index of the molecule each bead belongs to
pressure           (F,) f8         optional: all-atom pressure of each frame, bar (molecular virial,
                                   OpenMM's computeCurrentPressure); absent in older files
metadata_json      () str          JSON: state point, mapping, provenance, units
=================  ==============  ==========================================================

``metadata_json`` holds at least ``{"format": "openmm-cgnn/cg-dataset", "version": 1,
"units": {...}, "state": {"temperature_K": ..., "pressure_bar": ... or null,
"density_g_cm3": ...}, "mapping": {...}, "source": {...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import read_metadata_json, read_npz, save_npz_atomic
from .errors import CGNNError

FORMAT = "openmm-cgnn/cg-dataset"
FORMAT_VERSION = 1
UNITS = {
    "positions": "nm",
    "forces": "kJ/mol/nm",
    "boxes": "nm",
    "potential_energy": "kJ/mol",
    "bead_masses": "amu",
    "temperature": "K",
    "pressure": "bar",
    "density": "g/cm^3",
    "time": "ps",
}
_ARRAYS = ("positions", "forces", "boxes", "potential_energy", "bead_types", "type_names",
           "bead_masses", "bead_residues")


class DatasetFormatError(CGNNError, ValueError):
    """The file is not an openmm-cgnn CG data set, or it is inconsistent."""


@dataclass
class CGDataset:
    """Mapped CG frames of one state point. Arrays follow the table in the module docstring."""

    positions: np.ndarray
    forces: np.ndarray
    boxes: np.ndarray
    potential_energy: np.ndarray
    bead_types: np.ndarray
    type_names: list[str]
    bead_masses: np.ndarray
    bead_residues: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    pressure: np.ndarray | None = None     # (F,) bar, all-atom pressure per frame; None if not recorded

    def __post_init__(self) -> None:
        if self.pressure is not None:
            self.pressure = np.asarray(self.pressure, dtype=np.float64)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.forces = np.asarray(self.forces, dtype=np.float64)
        self.boxes = np.asarray(self.boxes, dtype=np.float64)
        self.potential_energy = np.asarray(self.potential_energy, dtype=np.float64)
        self.bead_types = np.asarray(self.bead_types, dtype=np.int64)
        self.type_names = [str(t) for t in self.type_names]
        self.bead_masses = np.asarray(self.bead_masses, dtype=np.float64)
        self.bead_residues = np.asarray(self.bead_residues, dtype=np.int64)
        self.validate()

    # -- shape helpers -------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_beads(self) -> int:
        return self.positions.shape[1]

    @property
    def state(self) -> dict[str, Any]:
        return self.metadata.get("state", {})

    @property
    def temperature(self) -> float:
        """Temperature of the reference run, K."""
        return float(self.state["temperature_K"])

    @property
    def volumes(self) -> np.ndarray:
        """Box volume of each frame, nm^3, shape (F,)."""
        return np.abs(np.linalg.det(self.boxes))

    def densities(self) -> np.ndarray:
        """Mass density of each frame, g/cm^3, shape (F,)."""
        grams = self.bead_masses.sum() / 6.02214076e23
        return grams / (self.volumes * 1e-21)

    def validate(self) -> None:
        f, n = self.positions.shape[:2]
        expect = {
            "positions": (f, n, 3), "forces": (f, n, 3), "boxes": (f, 3, 3),
            "potential_energy": (f,), "bead_types": (n,), "bead_masses": (n,), "bead_residues": (n,),
        }
        if self.pressure is not None:
            expect["pressure"] = (f,)
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise DatasetFormatError(f"'{name}' has shape {got}, expected {shape}")
        if self.bead_types.size and (self.bead_types.min() < 0 or self.bead_types.max() >= len(self.type_names)):
            raise DatasetFormatError("bead_types index outside type_names")
        for name in ("positions", "forces", "boxes", "bead_masses"):
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                where = f" (frame {int(np.argwhere(bad)[0][0])})" if name in ("positions", "forces", "boxes") else ""
                raise DatasetFormatError(f"'{name}' holds {int(bad.sum())} NaN or infinite values{where}")
        if self.n_frames and np.any(np.abs(np.linalg.det(self.boxes)) <= 0):
            raise DatasetFormatError("a box has zero volume")

    def subset(self, frames: np.ndarray | slice) -> "CGDataset":
        """A data set with only the chosen frames (same beads and metadata)."""
        return CGDataset(self.positions[frames], self.forces[frames], self.boxes[frames],
                         self.potential_energy[frames], self.bead_types, self.type_names,
                         self.bead_masses, self.bead_residues, dict(self.metadata),
                         None if self.pressure is None else self.pressure[frames])

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the data set atomically to ``path`` (a ``.npz`` file)."""
        meta = dict(self.metadata)
        meta.setdefault("format", FORMAT)
        meta.setdefault("version", FORMAT_VERSION)
        meta["units"] = UNITS
        extra = {} if self.pressure is None else {"pressure": self.pressure}
        return save_npz_atomic(
            path,
            positions=self.positions, forces=self.forces, boxes=self.boxes,
            potential_energy=self.potential_energy, bead_types=self.bead_types,
            type_names=np.array(self.type_names, dtype=str), bead_masses=self.bead_masses,
            bead_residues=self.bead_residues, metadata_json=np.array(json.dumps(meta, default=str)), **extra,
        )

    @classmethod
    def load(cls, path: str | Path) -> "CGDataset":
        path = Path(path)
        z = read_npz(path, "data set", "a CG data set from 'openmm-cgnn map'")
        if "metadata_json" not in z:
            raise DatasetFormatError(
                f"'{path}' is not an openmm-cgnn CG data set (no metadata_json); make one with 'openmm-cgnn map'")
        meta = read_metadata_json(z, path, "data set")
        if meta.get("format") != FORMAT:
            raise DatasetFormatError(
                f"'{path}' has format {meta.get('format')!r}, expected {FORMAT!r}; "
                "an all-atom reference file must be mapped first with 'openmm-cgnn map'")
        missing = [k for k in _ARRAYS if k not in z]
        if missing:
            raise DatasetFormatError(f"data set '{path}' lacks {', '.join(missing)}")
        arrays = {k: z[k] for k in _ARRAYS}
        arrays["pressure"] = z["pressure"] if "pressure" in z else None
        if arrays["positions"].ndim != 3 or arrays["positions"].shape[0] == 0:
            raise DatasetFormatError(f"data set '{path}' holds no frames (positions {arrays['positions'].shape})")
        arrays["type_names"] = [str(t) for t in arrays["type_names"]]
        try:
            return cls(metadata=meta, **arrays)
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"data set '{path}': {exc}") from None

    def to_hippynn_arrays(self, frames: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        """Arrays in the layout and units hippynn's ``Database`` expects (angstrom, kcal/mol).

        This is the one documented adapter between our files and hippynn:
        ``species`` (F, N) int, 1-based type index (0 is hippynn's padding);
        ``coordinates`` (F, N, 3) angstrom; ``cell`` (F, 3, 3) angstrom;
        ``forces`` (F, N, 3) kcal/mol/angstrom.
        """
        from .units import KJ_PER_KCAL, ANGSTROM_PER_NM

        sel = slice(None) if frames is None else frames
        pos = self.positions[sel]
        species = np.broadcast_to(self.bead_types + 1, pos.shape[:2]).astype(np.int64)
        return {
            "species": np.ascontiguousarray(species),
            "coordinates": pos * ANGSTROM_PER_NM,
            "cell": self.boxes[sel] * ANGSTROM_PER_NM,
            "forces": self.forces[sel] / KJ_PER_KCAL / ANGSTROM_PER_NM,
        }
