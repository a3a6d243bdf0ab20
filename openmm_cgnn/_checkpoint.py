"""Checkpointed frame recording shared by the all-atom and the CG runs.

A run in progress lives in a ``.partial`` folder: ``config.json`` (the settings it was started with),
``frames.npz`` (the frames so far and their count) and ``state-<n>.chk`` (the OpenMM checkpoint taken
right after frame n). The checkpoint is written before the frames, and the frame file names the
checkpoint it belongs to, so a crash between the two leaves a consistent, older pair.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openmm.app as app

from .files import save_npz_atomic, write_text_atomic


class FrameSchedule:
    """Mixin for run configurations with ``pressure``, ``timestep``, ``frame_interval`` and ``production``
    (bar, ps, ps, ps): the ensemble and the step counts derived from them."""

    @property
    def ensemble(self) -> str:
        return "NPT" if self.pressure is not None else "NVT"

    @property
    def steps_per_frame(self) -> int:
        return max(1, int(round(self.frame_interval / self.timestep)))

    @property
    def n_frames(self) -> int:
        return max(1, int(round(self.production / self.frame_interval)))


class FrameStore:
    """Lists of per-frame arrays, by name; ``arrays()`` stacks them with fixed trailing shapes."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], type]]):
        self.shapes = shapes
        self.data: dict[str, list] = {k: [] for k in shapes}

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def add(self, **values) -> None:
        for k in self.shapes:
            self.data[k].append(values[k])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, dtype=dt).reshape((len(v),) + shape) for k, (shape, dt) in self.shapes.items()
                for v in [self.data[k]]}

    def load(self, z) -> None:
        for k in self.shapes:
            self.data[k] = list(z[k])


class PartialRun:
    """The ``.partial`` folder of one run."""

    def __init__(self, folder: Path, config_json: str):
        self.folder = Path(folder)
        self.config_json = config_json
        self.saved_frames = 0   # production frames in the folder's frames.npz (after start/save/restore)

    def resumable(self) -> bool:
        return (self.folder / "frames.npz").exists() and (self.folder / "config.json").exists()

    def same_config(self) -> bool:
        return (self.folder / "config.json").read_text() == self.config_json

    def start(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        write_text_atomic(self.folder / "config.json", self.config_json)

    def save(self, simulation: app.Simulation, frames: FrameStore) -> None:
        n = len(frames)
        self.saved_frames = n
        chk = self.folder / f"state-{n}.chk"
        simulation.saveCheckpoint(str(chk))
        save_npz_atomic(self.folder / "frames.npz", n_frames=np.array(n), **frames.arrays())
        for old in self.folder.glob("state-*.chk"):
            if old != chk:
                old.unlink()

    def restore(self, simulation: app.Simulation, frames: FrameStore) -> int:
        with np.load(self.folder / "frames.npz") as z:
            frames.load(z)
        simulation.loadCheckpoint(str(self.folder / f"state-{len(frames)}.chk"))
        self.saved_frames = len(frames)
        return len(frames)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
