"""Distillation: train a small, fast student network on the forces of a trained teacher model.

Following the idea of Olowookere et al. (arXiv:2510.26650): the mapped all-atom forces that force
matching learns from are very noisy (their mean over the orthogonal degrees of freedom is the
target), while a trained teacher's forces are that mean, smooth and noise-free. A student fitted to
the teacher's forces therefore fits far more closely than one fitted to the mapped forces, and it can
be much smaller. The student is an ordinary model directory (:func:`openmm_cgnn.training.train`
writes it): it exports, runs and compares through the same commands as any other model.

Labels: the teacher's total forces (network + prior, kJ/mol/nm) and energies (kJ/mol, stored as
``potential_energy``) on

- the frames of the given CG data sets (the teacher's reference frames; their mapped forces are
  replaced), and
- optionally, the frames of CG simulations run with the teacher (``openmm-cgnn simulate`` output
  folders), which sample the teacher's own ensemble.

The student's splits, prior fit and training follow its :class:`~openmm_cgnn.training.TrainConfig`
(for example the ``"fast"`` preset); ``metadata.json`` of the student records the teacher.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import CGDataset
from .errors import CGNNError
from .training import TrainConfig, TrainedModel, load_datasets, load_trained, predict_hippynn, train


def teacher_labels(teacher: TrainedModel | str | Path, dataset: CGDataset, batch_size: int = 8) -> CGDataset:
    """``dataset`` with its forces and potential energies replaced by the teacher's predictions
    (network + prior, plus the bonded terms of multi-bead molecules; kJ/mol/nm and kJ/mol). The frames'
    all-atom pressures stay: the student's volume term is pressure-matched to them, as any model's."""
    if not isinstance(teacher, TrainedModel):
        teacher = load_trained(teacher)
    if list(dataset.type_names) != teacher.type_names:
        raise CGNNError(f"the data set's bead types {dataset.type_names} differ from the teacher's "
                        f"{teacher.type_names}; distil on data of the teacher's system")
    energies, forces = predict_hippynn(teacher, dataset.positions, dataset.boxes, dataset.bead_types,
                                       batch_size=batch_size)
    from .bonded import BondedParams, bonded_energy_forces

    bonded = BondedParams.from_dict(teacher.metadata.get("bonded"))
    if bonded:   # multi-bead molecules: the teacher's total force field includes its bonded terms
        e_b, f_b = bonded_energy_forces(bonded, dataset.positions, dataset.boxes, dataset.bead_types,
                                        dataset.type_names, dataset.bead_residues)
        energies, forces = energies + e_b, forces + f_b
    meta = dict(dataset.metadata)
    meta["labels"] = {"kind": "teacher", "teacher": str(teacher.model_dir)}
    return CGDataset(dataset.positions, forces, dataset.boxes, energies, dataset.bead_types, dataset.type_names,
                     dataset.bead_masses, dataset.bead_residues, meta, pressure=dataset.pressure)


def frames_of_cg_run(run_dir: str | Path, like: CGDataset) -> CGDataset:
    """The frames of an ``openmm-cgnn simulate`` output folder as a CG data set with the bead types,
    masses and residues of ``like`` (the run must have the same beads in the same order); the
    forces are zeros until :func:`teacher_labels` fills them."""
    from .simulate import load_cg_frames

    run_dir = Path(run_dir)
    if not (run_dir / "frames.npz").is_file():
        raise CGNNError(f"'{run_dir}' is not a CG simulation folder (no frames.npz); "
                        "give the --out folder of 'openmm-cgnn simulate'")
    arrays, meta = load_cg_frames(run_dir)
    pos = np.asarray(arrays["positions"], dtype=np.float64)
    if pos.ndim != 3 or pos.shape[0] == 0:
        raise CGNNError(f"'{run_dir}' holds no frames")
    if pos.shape[1] != like.n_beads:
        raise CGNNError(f"'{run_dir}' has {pos.shape[1]} beads but the data set has {like.n_beads}; "
                        "use CG runs of the same system as the data set")
    state = dict(meta.get("state", {}))
    return CGDataset(pos, np.zeros_like(pos), arrays["boxes"], np.zeros(len(pos)), like.bead_types, like.type_names,
                     like.bead_masses, like.bead_residues,
                     {"state": {"temperature_K": state.get("temperature_K"), "pressure_bar": state.get("pressure_bar")},
                      "source": {"kind": "cg-simulation", "path": str(run_dir)}, "mapping": like.metadata.get("mapping", {})})


def distill(teacher_dir: str | Path, datasets: Sequence[str | Path], config: TrainConfig, out_dir: str | Path,
            cg_runs: Sequence[str | Path] = (), overwrite: bool = False, verbose: bool = True) -> Path | None:
    """Train a student model on a teacher's forces; write a model directory (as :func:`train`).

    :param teacher_dir: trained model directory of the teacher.
    :param datasets: CG data sets (NPZ) whose frames are relabelled with the teacher's forces.
    :param config: the student's hyperparameters (e.g. ``TrainConfig.from_preset("fast")``).
    :param out_dir: the student's model directory.
    :param cg_runs: ``openmm-cgnn simulate`` output folders of the teacher's system; their frames are
        added as extra data sets, relabelled the same way (paired with the first data set's beads).
    :return: the student's model directory (``None`` on non-zero ranks of a distributed run).
    """
    teacher = load_trained(teacher_dir)
    sets = load_datasets(datasets)
    extra = [frames_of_cg_run(r, sets[0]) for r in cg_runs]
    with tempfile.TemporaryDirectory(prefix="openmm-cgnn-distill-") as tmp:
        paths = []
        for k, ds in enumerate(sets + extra):
            source = Path(datasets[k]).name if k < len(sets) else f"cg-run-{k - len(sets)}.npz"
            path = Path(tmp) / f"teacher-labels-{source}"
            if not path.name.endswith(".npz"):
                path = path.with_suffix(".npz")
            teacher_labels(teacher, ds).save(path)
            paths.append(path)
        info = {"teacher": str(Path(teacher_dir)), "teacher_network": teacher.blob["network_class"],
                "teacher_network_kwargs": teacher.blob["network_kwargs"],
                "datasets": [str(p) for p in datasets], "cg_runs": [str(r) for r in cg_runs],
                "labels": "teacher forces (network + prior) and energies"}
        return train(paths, config, out_dir, overwrite=overwrite, verbose=verbose, extra_metadata={"distilled": info})


def distillation_info(model_dir: str | Path) -> dict | None:
    """The ``distilled`` record of a student's metadata.json (None for a model trained on mapped forces)."""
    return json.loads((Path(model_dir) / "metadata.json").read_text()).get("distilled")
