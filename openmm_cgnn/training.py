"""Force-matching training of a HIP-NN / HIP-NN-TS coarse-grained force field with hippynn.

The model energy is ``U(R) = U_net(R) + U_prior(R)``: the hippynn network plus the fixed repulsive
pair prior of :mod:`openmm_cgnn.prior`. The prior is fit to the training frames before training
and never trained, so the network is fit to the residual labels ``F_mapped - F_prior``; the loss
(force RMSE + force MAE) is then the same as that of the total model on ``F_mapped``.

Units: hippynn works in angstrom and kcal/mol inside (``CGDataset.to_hippynn_arrays``); every
public argument and result of this module is in OpenMM units (nm, kJ/mol, kJ/mol/nm) except the
network hyperparameters of :class:`TrainConfig`, which are hippynn's own (distances in angstrom).

Model directory written by :func:`train` (every file written atomically)::

    config.toml     the TrainConfig used
    hippynn_weights.pt
                    torch.save'd dict (loads with weights_only=True): hippynn network and energy-head
                    state_dicts plus their constructor arguments (see MODEL_FORMAT); not a model
                    OpenMM can run: ``openmm-cgnn export`` makes that. Directories written before
                    this name was chosen hold the same file as ``model.pt``; they are still read.
                    Temperature-aware models add ``thermal`` (temperature scale, form, second
                    read-out; openmm_cgnn.thermal).
    prior.json      PriorParams (nm, kJ/mol) and its fit settings
    metrics.json    test-split force RMSE / MAE / R^2 (kJ/mol/nm) of the TOTAL model, per data set
                    and pooled, plus the per-epoch training curve
    metadata.json   units, cutoff in nm, bead type names, training state points, data sets and
                    their frame splits, package versions, timings, ``training_forces`` ("explicit"
                    or "autograd": how training computed the forces, see ``TrainConfig.force_mode``);
                    ``temperature_aware`` (training temperatures, form) for temperature-aware models
    train.log       hippynn's own console output
    volume.json     the volume term U_V fitted by pressure matching (``openmm_cgnn.volume``), when
                    every data set carries all-atom pressures and ``fit_volume`` is on
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import validation as V
from .deprecation import renamed
from .files import check_output_path, versions, write_json_atomic, write_text_atomic, atomic_write
from .dataset import CGDataset
from .errors import CGNNError, ConfigError, InputFileError, MissingInputError
from .geometry import as_frames, box_widths, cutoff_fits
from .prior import PriorParams, fit_prior, prior_energy_forces
from .units import ANGSTROM_PER_NM, KJ_PER_KCAL

MODEL_FORMAT = "openmm-cgnn/hipnn-model"
MODEL_FORMAT_VERSION = 1
#: the hippynn weights in a model directory; named so that nobody takes them for the exported model (``.pt``)
WEIGHTS_FILE = "hippynn_weights.pt"
#: the name of the weights file in model directories written before version 0.2; still read
LEGACY_WEIGHTS_FILE = "model.pt"
_NETWORK_CLASSES = {0: "Hipnn", 1: "HipnnVec", 2: "HipnnQuad"}
# kcal/mol/angstrom -> kJ/mol/nm
_FORCE_TO_KJ_NM = KJ_PER_KCAL * ANGSTROM_PER_NM


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every hyperparameter of a training run. Distances of the network are in angstrom (hippynn's
    units); the prior's ``prior_dr`` is in nm. See :meth:`preset` for the "paper" and "tiny" sets.

    ``force_mode``: "explicit" (default) computes the training forces of a one-block network as a
    closed expression of the weights (:mod:`openmm_cgnn.explicit_forces`: one backward pass per step);
    "autograd" differentiates hippynn's energy (a double backward). Both give the same loss and
    gradients; networks of two or more interaction blocks always use autograd."""

    name: str = "paper"
    # network: HIP-NN-TS
    tensor_order: int = 2              # 0: Hipnn, 1: HipnnVec (l=1), 2: HipnnQuad (l=2)
    n_features: int = 128
    n_sensitivities: int = 20
    sensitivity_type: str = "inverse"
    dist_soft_min: float = 2.0         # angstrom, first sensitivity centre
    dist_soft_max: float = 13.0        # angstrom, last sensitivity centre
    dist_hard_max: float = 15.0        # angstrom, hard (cos^2) cutoff of the network
    n_interaction_layers: int = 1
    n_atom_layers: int = 3
    resnet: bool = True
    cusp_reg: float = 1e-6             # HIP-NN-TS cusp regularisation (tensor_order >= 1)
    pair_finder: str = "kdtree"        # "kdtree" (orthorhombic boxes) or "periodic" (any box), for prediction
    cache_pairs: bool = True           # training: find each frame's pairs once (vesin), not in every batch
    force_mode: str = "explicit"       # training forces: "explicit" (written out, one backward) or "autograd"
    # optimisation
    learning_rate: float = 1e-3
    batch_size: int = 1                # starting batch size, doubled on plateau ...
    max_batch_size: int = 64           # ... up to this; then the learning rate is cut instead
    plateau_patience: int = 10
    plateau_factor: float = 0.5        # batch size /= factor, then lr *= factor
    max_epochs: int = 200
    termination_patience: int = 20     # stop after this many epochs without a better validation loss
    eval_batch_size: int = 8
    fraction_train_eval: float = 0.2   # fraction of training frames evaluated after each epoch
    valid_fraction: float = 0.1        # per data set, by frames
    test_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"               # "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    devices: int = 1                   # > 1 or num_nodes > 1: data-parallel training (DDP) via PyTorch Lightning
    num_nodes: int = 1
    # repulsive prior (openmm_cgnn.prior.fit_prior)
    prior_rdf_threshold: float = 0.01
    prior_dr: float = 0.015            # nm
    prior_perc: float = 0.05
    # volume term U_V(V, N, T) by pressure matching (openmm_cgnn.volume), when the data carry pressures
    fit_volume: bool = True
    volume_source: str = "cg-nvt"      # CG pressure from "cg-nvt" (a short CG NVT run) or "mapped" (mapped frames)
    volume_nvt_ps: float = 10.0        # production of that CG NVT run, ps (after volume_nvt_equilibration_ps)
    volume_nvt_equilibration_ps: float = 2.0
    volume_max_frames: int = 100       # "mapped": frames per data set used for the CG virial pressure
    # temperature-aware model U(R, T) = E(R) - T S(R) on data sets at two or more temperatures
    # (openmm_cgnn.thermal); its volume term is pressure-matched at each data set's own temperature
    temperature_aware: bool = False
    temperature_form: str = "split"    # "split": U = E(R) - T S(R); "input": T is an input feature of the network

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (the rules of :mod:`openmm_cgnn.validation`); ConfigError names the first bad one."""
        if self.tensor_order not in _NETWORK_CLASSES:
            raise ConfigError(f"tensor_order must be 0, 1 or 2, got {self.tensor_order}", "tensor_order")
        V.one_of(self.pair_finder, "pair_finder", ("kdtree", "periodic"))
        V.one_of(self.force_mode, "force_mode", ("explicit", "autograd"))
        V.one_of(self.sensitivity_type, "sensitivity_type", ("inverse", "linear"))
        for name in ("n_features", "n_sensitivities", "n_interaction_layers", "n_atom_layers", "batch_size",
                     "max_batch_size", "plateau_patience", "max_epochs", "termination_patience", "eval_batch_size",
                     "devices", "num_nodes"):
            V.integer(getattr(self, name), name, 1)
        V.seed(self.seed)
        for name in ("dist_soft_min", "dist_soft_max", "dist_hard_max", "learning_rate", "prior_rdf_threshold",
                     "prior_dr"):
            V.positive(getattr(self, name), name)
        V.non_negative(self.cusp_reg, "cusp_reg")
        V.in_range(self.plateau_factor, "plateau_factor", 0.0, 1.0, high_open=True)
        V.in_range(self.fraction_train_eval, "fraction_train_eval", 0.0, 1.0)
        V.in_range(self.prior_perc, "prior_perc", 0.0, 1.0, high_open=True)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or another torch device, got {self.device!r}",
                              "device")
        if not (0 < self.dist_soft_min < self.dist_soft_max <= self.dist_hard_max):
            raise ConfigError("need 0 < dist_soft_min < dist_soft_max <= dist_hard_max (angstrom)", "dist_soft_max")
        V.in_range(self.valid_fraction, "valid_fraction", 0.0, 1.0, high_open=True)
        V.in_range(self.test_fraction, "test_fraction", 0.0, 1.0, low_open=False, high_open=True)
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("need 0 < valid_fraction, 0 <= test_fraction and valid_fraction + test_fraction < 1 "
                              "(early stopping needs validation frames)", "valid_fraction")
        if self.max_batch_size < self.batch_size:
            raise ConfigError("need 1 <= batch_size <= max_batch_size", "batch_size")
        if self.volume_source not in ("cg-nvt", "mapped"):
            raise ConfigError(f"volume_source must be 'cg-nvt' or 'mapped', got {self.volume_source!r}",
                              "volume_source")
        V.positive(self.volume_nvt_ps, "volume_nvt_ps")
        V.non_negative(self.volume_nvt_equilibration_ps, "volume_nvt_equilibration_ps")
        V.positive(self.volume_max_frames, "volume_max_frames")
        V.one_of(self.temperature_form, "temperature_form", ("split", "input"))

    @property
    def cutoff_nm(self) -> float:
        """The network's hard cutoff in nm."""
        return self.dist_hard_max / ANGSTROM_PER_NM

    preset = renamed("from_preset")   # the old name

    @classmethod
    def from_preset(cls, name: str) -> "TrainConfig":
        """``"paper"``: the settings of Shinkle et al. 2024 (arXiv:2406.12112);
        ``"fast"``: a distillation student (HIP-NN-TS, l=2, with 32 features, 10 sensitivities, two
        atom layers and a 9 angstrom cutoff: about 5x fewer pairs than the paper's 15 angstrom),
        trained otherwise like the paper network;
        ``"tiny"``: a very small network for tests and smoke runs (cutoff 7 angstrom, which fits
        a 1.6 nm box of 64 methanol beads; trains in seconds on a laptop CPU)."""
        if name == "paper":
            return cls(name="paper")
        if name == "fast":
            return cls(name="fast", n_features=32, n_sensitivities=10, dist_soft_min=2.0, dist_soft_max=8.0,
                       dist_hard_max=9.0, n_interaction_layers=1, n_atom_layers=2)
        if name == "tiny":
            return cls(name="tiny", n_features=12, n_sensitivities=6, dist_soft_min=2.5, dist_soft_max=6.0,
                       dist_hard_max=7.0, n_interaction_layers=1, n_atom_layers=1, max_epochs=4,
                       termination_patience=4, plateau_patience=2, batch_size=2, max_batch_size=8,
                       learning_rate=3e-3, eval_batch_size=8, fraction_train_eval=0.25,
                       volume_source="mapped", volume_nvt_ps=2.0, volume_nvt_equilibration_ps=0.5)
        raise ConfigError(f"unknown preset {name!r}; choose 'paper', 'fast' or 'tiny'", "preset")

    # -- TOML ----------------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The configuration as a TOML document (one flat ``[train]`` table)."""
        lines = ["# openmm-cgnn training configuration (network distances in angstrom, prior_dr in nm)",
                 "[train]"]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text_or_path: str | Path) -> "TrainConfig":
        """Read a configuration written by :meth:`to_toml` (a path or the TOML text itself).
        Keys left out take their default; unknown keys are an error."""
        where = "training configuration"
        if isinstance(text_or_path, Path) or ("\n" not in str(text_or_path) and Path(str(text_or_path)).is_file()):
            where = f"training configuration '{text_or_path}'"
            try:
                text = Path(text_or_path).read_text()
            except FileNotFoundError:
                raise MissingInputError(f"{where} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InputFileError(f"{where} cannot be read as TOML text ({exc})") from None
        else:
            text = str(text_or_path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputFileError(f"{where} is not valid TOML: {exc}") from None
        data = data.get("train", data)
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: [train] must be a table of settings")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown training configuration keys: {unknown}")
        defaults = cls()
        kwargs = {}
        for k, v in data.items():
            if isinstance(getattr(defaults, k), float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kwargs[k] = v
        return cls(**kwargs)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("cannot write nan/inf to TOML")
        return repr(v)  # always has '.', 'e' or both: a TOML float
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for ordinary text
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ----------------------------------------------------------------------------------------------
# hippynn plumbing
# ----------------------------------------------------------------------------------------------
def _import_hippynn():
    import hippynn
    from hippynn import custom_kernels

    hippynn.settings.PROGRESS = None  # no tqdm bars from inside hippynn; train() prints one line per epoch
    if custom_kernels.CUSTOM_KERNELS_ACTIVE == "pytorch":
        # hippynn's "pytorch" message-passing kernels (what HIPPYNN_USE_CUSTOM_KERNELS=False selects) are
        # wrapped in torch.compile, which costs over a minute per new batch shape on a CPU. Its
        # uncompiled twin computes the same sums. A real custom kernel (numba, triton, ...) is kept.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-standard custom kernel implementation"
            custom_kernels.set_custom_kernels("_pytorch_raw")
    return hippynn


def network_kwargs(config: TrainConfig, n_types: int) -> dict[str, Any]:
    """Constructor arguments of the hippynn network module for ``config`` and ``n_types`` bead types."""
    kw: dict[str, Any] = {
        "possible_species": list(range(n_types + 1)),  # 0 is hippynn's padding
        "n_features": int(config.n_features),
        "n_sensitivities": int(config.n_sensitivities),
        "dist_soft_min": float(config.dist_soft_min),
        "dist_soft_max": float(config.dist_soft_max),
        "dist_hard_max": float(config.dist_hard_max),
        "n_interaction_layers": int(config.n_interaction_layers),
        "n_atom_layers": int(config.n_atom_layers),
        "sensitivity_type": config.sensitivity_type,
        "resnet": bool(config.resnet),
    }
    if config.tensor_order >= 1:
        kw["cusp_reg"] = float(config.cusp_reg)
    return kw


@dataclass
class _Graph:
    species: Any
    positions: Any
    cells: Any
    network: Any
    henergy: Any
    force: Any
    temperature: Any = None   # temperature-aware models (openmm_cgnn.thermal): the per-frame T input (K) ...
    hentropy: Any = None      # ... the second read-out B(R) of U = A(R) + tau(T) B(R) ...
    total: Any = None         # ... and the node of U(R, T) whose gradient is the force


def _build_graph(network_class: str, net_kwargs: dict[str, Any], pair_finder: str, cached_pairs: bool = False,
                 thermal: Any = None, force_mode: str = "autograd") -> _Graph:
    """The hippynn graph: species/coordinates/cell inputs -> pairs -> network -> HEnergy -> -dE/dR.

    With ``cached_pairs`` the pairs come from the database arrays of :mod:`openmm_cgnn.pair_cache`
    (training on fixed frames) instead of ``pair_finder`` (any positions). With ``thermal`` (a
    :class:`openmm_cgnn.thermal.TemperatureScale`) the energy is U(R, T) = E(R) - T S(R) with a
    per-frame temperature input (:func:`openmm_cgnn.thermal.add_thermal_energy`).
    """
    _import_hippynn()
    from hippynn.graphs.nodes import networks as net_nodes
    from hippynn.graphs.nodes.indexers import acquire_encoding_padding
    from hippynn.graphs.nodes.inputs import CellNode, PositionsNode, SpeciesNode
    from hippynn.graphs.nodes.pairs import KDTreePairsMemory, PeriodicPairIndexer
    from hippynn.graphs.nodes.physics import MultiGradientNode
    from hippynn.graphs.nodes.targets import HEnergyNode

    species = SpeciesNode(name="species", db_name="species")
    positions = PositionsNode(name="coordinates", db_name="coordinates")
    cells = CellNode(name="cell", db_name="cell")
    enc, pdx = acquire_encoding_padding([species], species_set=net_kwargs["possible_species"])
    cutoff = net_kwargs["dist_hard_max"]
    if cached_pairs:
        from .pair_cache import cached_pair_indexer

        pairs = cached_pair_indexer("pairs", positions, cells, pdx, cutoff)
    elif pair_finder == "kdtree":
        pairs = KDTreePairsMemory("pairs", (positions, enc, pdx, cells), dist_hard_max=cutoff, skin=0)
    else:
        pairs = PeriodicPairIndexer("pairs", (positions, enc, pdx, cells), dist_hard_max=cutoff)
    net_cls = getattr(net_nodes, network_class)
    temperature = hentropy = None
    features, module_kwargs = pdx, dict(net_kwargs)
    if thermal is not None and thermal.form == "input":  # T as one more input feature of every bead
        from .thermal import temperature_input_features

        temperature, features = temperature_input_features(pdx, thermal)
        module_kwargs.update(possible_species=None, n_input_features=len(net_kwargs["possible_species"]))
    network = net_cls("HIPNN", (features, pairs), module_kwargs=module_kwargs, periodic=True)
    henergy = HEnergyNode("HEnergy", (network,))
    total = henergy.main_output
    if thermal is not None and thermal.form == "split":
        from .thermal import add_thermal_energy

        temperature, hentropy, total = add_thermal_energy(network, henergy, thermal)
    entropy = hentropy.torch_module if hentropy is not None else None
    if force_mode == "explicit" and explicit_forces_available(network.torch_module, henergy.torch_module, entropy):
        from .explicit_forces import explicit_force_node

        with_tau = thermal is not None and thermal.form == "input"   # the network's input features include tau
        force = explicit_force_node("forces", network, henergy, pdx, pairs=None if cached_pairs else pairs,
                                    positions=positions, cell=cells, features=features if with_tau else None,
                                    thermal=thermal, hentropy_node=hentropy, temperature=temperature)
    else:
        grad = MultiGradientNode("forces", total, (positions,), signs=-1)
        force = grad.children[0]
        force.db_name = "forces"
    return _Graph(species, positions, cells, network, henergy, force, temperature, hentropy, total)


def explicit_forces_available(network: torch.nn.Module, energy: torch.nn.Module,
                              entropy: torch.nn.Module | None = None) -> bool:
    """Whether ``force_mode = "explicit"`` applies to this hippynn network and HEnergy read-out (and the
    entropy read-out of a temperature-aware model of the "split" form): one interaction block
    (:mod:`openmm_cgnn.explicit_forces`); otherwise training falls back to autograd forces."""
    from .explicit_forces import explicit_forces_unsupported

    return all(explicit_forces_unsupported(network, r) is None for r in (energy, entropy) if r is not None)


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for training: ``"auto"`` is the first CUDA GPU when one is available, else the CPU.

    Any other name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) is taken as given, after checking that
    a requested CUDA device exists.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CGNNError(f"unknown training device {name!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CGNNError(f"training device {name!r} requested but CUDA is not available here; "
                            "use device 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CGNNError(f"training device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


@contextlib.contextmanager
def _quiet_hippynn(log: io.TextIOBase | None):
    """Send stdout to ``log`` and mute the warnings hippynn emits on every run."""
    with contextlib.ExitStack() as stack:
        if log is not None:
            stack.enter_context(contextlib.redirect_stdout(log))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*verbose no longer supported.*")
        warnings.filterwarnings("ignore", message=".*Provided distances are underneath sensitivity range.*")
        warnings.filterwarnings("ignore", message=".*May override plots.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="hippynn")
        yield


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_datasets(paths: Sequence[str | Path]) -> list[CGDataset]:
    """Load data sets and check that they can be trained together (same bead type names)."""
    if not paths:
        raise ConfigError("no data sets given", "data")
    sets = [CGDataset.load(p) for p in paths]
    first = sets[0].type_names
    for p, ds in zip(paths, sets):
        if ds.type_names != first:
            raise InputFileError(
                f"data sets must share bead type names to be trained together: '{paths[0]}' has "
                f"{first} but '{p}' has {ds.type_names}")
    return sets


def split_frames(n_frames: int, valid_fraction: float, test_fraction: float, seed: int,
                 index: int = 0) -> dict[str, np.ndarray]:
    """Random train/valid/test frame indices for one data set (``index`` = its place in the list)."""
    rng = np.random.default_rng([int(seed), int(index)])
    perm = rng.permutation(n_frames)
    n_test = int(round(test_fraction * n_frames))
    n_valid = int(round(valid_fraction * n_frames))
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if valid_fraction > 0:
        n_valid = max(n_valid, 1)
    if n_frames - n_test - n_valid < 1:
        raise ConfigError(f"a data set of {n_frames} frames is too small to split "
                         f"(valid {valid_fraction}, test {test_fraction})")
    return {"test": np.sort(perm[:n_test]), "valid": np.sort(perm[n_test:n_test + n_valid]),
            "train": np.sort(perm[n_test + n_valid:])}


def prior_frames(prior: PriorParams, positions: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior energies (F,) kJ/mol and forces (F, N, 3) kJ/mol/nm for frames in nm."""
    energies = np.empty(len(positions))
    forces = np.empty(positions.shape, dtype=np.float64)
    for f in range(len(positions)):
        energies[f], forces[f] = prior_energy_forces(prior, positions[f], boxes[f])
    return energies, forces


def _check_box(boxes: np.ndarray, cutoff_nm: float, what: str) -> None:
    if not cutoff_fits(boxes, cutoff_nm):
        raise ConfigError(
            f"{what}: the box (smallest perpendicular width {box_widths(boxes).min():.4g} nm) must be at least "
            f"twice the cutoff ({cutoff_nm:.4g} nm) wide; use a smaller dist_hard_max or a larger system")


def _hippynn_arrays(sets: list[CGDataset], residual_forces: list[np.ndarray],
                    splits: list[dict[str, np.ndarray]], dtype: np.dtype) -> dict[str, np.ndarray]:
    """One array dictionary for hippynn's Database, beads padded with species 0 to a common count."""
    n_max = max(ds.n_beads for ds in sets)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("species", "coordinates", "cell", "forces")}
    masks: dict[str, list[np.ndarray]] = {k: [] for k in ("train", "valid", "test")}
    for ds, res, sp in zip(sets, residual_forces, splits):
        arr = dataclasses.replace(ds, forces=res).to_hippynn_arrays()
        pad = n_max - ds.n_beads
        for k in ("species", "coordinates", "forces"):
            a = arr[k]
            if pad:
                a = np.concatenate([a, np.zeros((a.shape[0], pad) + a.shape[2:], dtype=a.dtype)], axis=1)
            parts[k].append(a)
        parts["cell"].append(arr["cell"])
        for name in masks:
            m = np.zeros(ds.n_frames, dtype=bool)
            m[sp[name]] = True
            masks[name].append(m)
    out = {
        "species": np.concatenate(parts["species"]).astype(np.int64),
        "coordinates": np.concatenate(parts["coordinates"]).astype(dtype),
        "cell": np.concatenate(parts["cell"]).astype(dtype),
        "forces": np.concatenate(parts["forces"]).astype(dtype),
    }
    for name, ms in masks.items():
        if any(m.any() for m in ms):
            out[f"split_mask_{name}"] = np.concatenate(ms)
    return out


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def train(datasets: Sequence[str | Path], config: TrainConfig, out_dir: str | Path, overwrite: bool = False,
          verbose: bool = True, extra_metadata: dict[str, Any] | None = None) -> Path | None:
    """Train a HIP-NN(-TS) CG force field on one or several CG data sets; write a model directory.

    :param datasets: paths of CG data sets (NPZ, :class:`CGDataset`) that share bead type names;
        each is split by frames into train/valid/test with ``config.seed``.
    :param config: the hyperparameters.
    :param out_dir: the model directory to create (see the module docstring for its files).
    :param overwrite: replace an existing ``out_dir``; otherwise an existing one is refused.
    :param verbose: print one progress line per epoch (hippynn's own output goes to ``train.log``).
    :param extra_metadata: more JSON-serialisable entries for ``metadata.json`` (e.g. ``distilled``).
    :return: the model directory; ``None`` in the processes other than rank 0 of a distributed run
        (``config.devices > 1`` or ``config.num_nodes > 1``, see :mod:`openmm_cgnn.ddp`), which write nothing.

    Training runs on ``config.device`` ("auto": the GPU when there is one). Each frame's neighbour
    pairs are found once before training when ``config.cache_pairs`` (:mod:`openmm_cgnn.pair_cache`).
    With ``config.temperature_aware`` the model is U(R, T) (:mod:`openmm_cgnn.thermal`): the data sets
    must span two or more state temperatures, and its volume term is fitted at each data set's temperature.
    """
    out_dir = check_output_path(out_dir, overwrite)
    config.validate()
    resolve_device(config.device)  # a device that is not there fails now, not after the data are prepared
    t_start = time.perf_counter()
    paths = [Path(p) for p in datasets]
    sets = load_datasets(paths)
    type_names = sets[0].type_names
    n_types = len(type_names)
    for p, ds in zip(paths, sets):
        _check_box(ds.boxes, config.cutoff_nm, f"data set '{p}'")
    thermal = None
    if config.temperature_aware:  # U(R, T): data sets at two or more temperatures (openmm_cgnn.thermal)
        from .thermal import temperature_scale

        thermal = temperature_scale(sets, paths, form=config.temperature_form)

    splits = [split_frames(ds.n_frames, config.valid_fraction, config.test_fraction, config.seed, k)
              for k, ds in enumerate(sets)]
    prior = fit_prior([ds.subset(sp["train"]) for ds, sp in zip(sets, splits)],
                      rdf_threshold=config.prior_rdf_threshold, dr=config.prior_dr, perc=config.prior_perc)
    residuals = [ds.forces - prior_frames(prior, ds.positions, ds.boxes)[1] for ds in sets]
    # multi-bead molecules: bonded terms by Boltzmann inversion, subtracted like the prior
    from .bonded import bonded_energy_forces, fit_bonded

    bonded = fit_bonded([ds.subset(sp["train"]) for ds, sp in zip(sets, splits)])
    if bonded:
        residuals = [res - bonded_energy_forces(bonded, ds.positions, ds.boxes, ds.bead_types, ds.type_names,
                                                ds.bead_residues)[1] for res, ds in zip(residuals, sets)]

    arrays = _hippynn_arrays(sets, residuals, splits, np.float32)
    if thermal is not None:  # each frame's temperature is an input of the graph
        from .thermal import frame_temperatures

        arrays["temperature"] = frame_temperatures(sets).astype(np.float32)

    torch.manual_seed(config.seed)
    out = sys.stdout
    log = io.StringIO()
    network_class = _NETWORK_CLASSES[config.tensor_order]
    net_kw = network_kwargs(config, n_types)
    with _quiet_hippynn(log):
        curve, hippynn_test, model_state = _run_hippynn(config, network_class, net_kw, arrays,
                                                        out if verbose else None, thermal)
    train_seconds = time.perf_counter() - t_start
    if model_state is None:  # a process other than rank 0 of a distributed run: rank 0 writes the model
        return None

    # Assemble the model directory in a staging folder, then move it into place.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal directory's mode
    try:
        write_text_atomic(stage / "config.toml", config.to_toml())
        blob = {
            "format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
            "network_class": network_class, "network_kwargs": net_kw,
            "network_state": model_state["network"],
            "energy_kwargs": model_state["energy_kwargs"], "energy_state": model_state["energy"],
            "pair_finder": config.pair_finder, "type_names": list(type_names),
            "units": {"length": "angstrom", "energy": "kcal/mol"},
        }
        if thermal is not None:
            blob["thermal"] = {**thermal.to_dict(), "entropy_state": model_state.get("entropy")}
        atomic_write(stage / WEIGHTS_FILE, lambda tmp: torch.save(blob, tmp))
        write_json_atomic(stage / "prior.json", {
            **prior.to_dict(), "units": {"g": "kJ/mol", "a": "1/nm", "cutoff": "nm", "taper": "nm",
                                         "strength": "kJ/mol/nm"},
            "fit": {"rdf_threshold": config.prior_rdf_threshold, "dr_nm": config.prior_dr,
                    "perc": config.prior_perc, "frames": "training split"}})
        cutoff_nm = max(config.cutoff_nm, prior.cutoff)
        metadata = {
            "format": "openmm-cgnn/model", "version": 1,
            "units": {"length": "nm", "energy": "kJ/mol", "force": "kJ/mol/nm",
                      "network_internal": {"length": "angstrom", "energy": "kcal/mol"}},
            "cutoff_nm": cutoff_nm, "network_cutoff_nm": config.cutoff_nm, "prior_cutoff_nm": prior.cutoff,
            "type_names": list(type_names), "network_class": network_class,
            "type_masses": {name: float(sets[0].bead_masses[sets[0].bead_types == t][0])
                            for t, name in enumerate(type_names) if np.any(sets[0].bead_types == t)},
            "tensor_order": config.tensor_order,
            "bonded": bonded.to_dict() if bonded else None,
            "state_points": [ds.metadata.get("state", {}) for ds in sets],
            "datasets": [{"path": str(p), "name": p.name, "n_frames": ds.n_frames, "n_beads": ds.n_beads,
                          "state": ds.metadata.get("state", {}),
                          "source": ds.metadata.get("source"),
                          "mapping_spec": (ds.metadata.get("mapping") or {}).get("spec"),
                          "composition": _composition(ds),
                          "splits": {k: v.tolist() for k, v in sp.items()}}
                         for p, ds, sp in zip(paths, sets, splits)],
            "training_forces": model_state["force_mode"],
            "versions": versions(), "train_seconds": train_seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra_metadata or {}),
        }
        if thermal is not None:
            metadata["temperature_aware"] = thermal.to_dict()
        write_json_atomic(stage / "metadata.json", metadata)
        write_text_atomic(stage / "train.log", log.getvalue())
        # test metrics of the total model (network + prior) with hippynn's own prediction
        loaded = load_trained(stage)
        metrics = {"units": "kJ/mol/nm", "test": _test_metrics(loaded, sets, splits, paths),
                   "hippynn_final": hippynn_test, "curve": curve, "train_seconds": train_seconds}
        write_json_atomic(stage / "metrics.json", metrics)
        volume = _fit_volume(loaded, sets, paths, config) if config.fit_volume else None
        if volume is not None:
            volume.save(stage / "volume.json")
        if out_dir.exists():
            if not overwrite:  # appeared while we trained
                check_output_path(out_dir, overwrite)
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(stage, out_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    if verbose and volume is not None:
        from .volume import describe

        print(f"volume term (pressure matching): {describe(volume)}", file=out, flush=True)
    elif verbose and config.fit_volume:
        print("volume term: not fitted (the data sets carry no all-atom pressures)", file=out, flush=True)
    if verbose:
        t = metrics["test"]["all"]
        print(f"trained in {train_seconds:.1f} s; test force RMSE {t['rmse']:.4g}, MAE {t['mae']:.4g} "
              f"kJ/mol/nm, R^2 {t['r2']:.3f} -> {out_dir}", file=out, flush=True)
    return out_dir


def _fit_volume(loaded: "TrainedModel", sets: list[CGDataset], paths: list[Path], config: TrainConfig):
    """Pressure-match the trained model (network + prior) at the data sets' state points; None when
    a data set has no all-atom pressures. ``config.volume_source``: "cg-nvt" measures the model's
    pressure in a short CG NVT run at each reference volume, "mapped" on the mapped frames. A
    temperature-aware model is measured at each data set's own temperature (``thermal_volume_term``)."""
    from .export import potential_from_hippynn
    from .volume import (cg_nvt_pressures, fit_from_datasets, fit_volume_term, pressure_point_from_run,
                         torch_energy_function)

    if loaded.thermal is not None:
        from .thermal import thermal_volume_term

        return thermal_volume_term(loaded, sets, paths, config)
    if any(ds.pressure is None for ds in sets):
        return None
    if config.volume_source == "cg-nvt":
        module = torch.jit.script(potential_from_hippynn(loaded.network, loaded.energy, loaded.prior,
                                                         dtype=torch.float32))
        points = []
        for k, (p, ds) in enumerate(zip(paths, sets)):
            series = cg_nvt_pressures(module, ds, ds.temperature, config.volume_nvt_ps,
                                      config.volume_nvt_equilibration_ps, seed=config.seed + k + 1)
            points.append(pressure_point_from_run(series, ds, label=p.name))
        volume = fit_volume_term(points)
        volume.fit["cg_pressure_from"] = (f"CG NVT run of the model at each reference volume "
                                          f"({config.volume_nvt_equilibration_ps:g} + {config.volume_nvt_ps:g} ps)")
        return volume

    pot = potential_from_hippynn(loaded.network, loaded.energy, loaded.prior, dtype=torch.float64)

    def energy_for(ds: CGDataset):
        if len(loaded.type_names) > 1:
            pot.set_types(torch.as_tensor(ds.bead_types, dtype=torch.long))
        return torch_energy_function(pot)

    volume = fit_from_datasets(sets, energy_for, max_frames=config.volume_max_frames, labels=[p.name for p in paths])
    if volume is not None:
        volume.fit["cg_pressure_from"] = "virial of the model on the mapped all-atom frames"
    return volume


def fit_model_volume_term(model_dir: str | Path, datasets: Sequence[str | Path] | None = None,
                          config: TrainConfig | None = None, verbose: bool = True):
    """(Re)fit the volume term of a trained model directory and write its ``volume.json``.

    :param datasets: CG data sets with all-atom pressures (default: the model's training data sets).
    :param config: settings of the fit (``volume_source``, ``volume_nvt_ps``, ...); default: the
        model's ``config.toml``.
    :return: the fitted :class:`~openmm_cgnn.volume.VolumeTermParams`; an error when a data set
        carries no pressures.
    """
    model_dir = Path(model_dir)
    loaded = load_trained(model_dir)
    config = config or loaded.config
    paths = [Path(p) for p in (datasets or [d["path"] for d in loaded.metadata["datasets"]])]
    sets = load_datasets(paths)
    missing = [str(p) for p, ds in zip(paths, sets) if ds.pressure is None]
    if missing:
        from .errors import CGNNError

        raise CGNNError(f"data set(s) {', '.join(missing)} carry no all-atom pressures (made before pressures were "
                        "recorded); rerun 'openmm-cgnn reference' and 'openmm-cgnn map' to fit a volume term")
    volume = _fit_volume(loaded, sets, paths, config)
    volume.save(model_dir / "volume.json")
    if verbose:
        from .volume import describe

        print(f"volume term (pressure matching): {describe(volume)} -> {model_dir / 'volume.json'}", flush=True)
    return volume


def _assemble(config: TrainConfig, network_class: str, net_kw: dict[str, Any], thermal: Any = None):
    """hippynn graph, training modules (model, loss, evaluator) and database info for ``config``:
    loss = force RMSE + force MAE, as in every training run (``thermal``: see :func:`_build_graph`)."""
    from hippynn.experiment.assembly import assemble_for_training
    from hippynn.graphs.nodes import loss

    g = _build_graph(network_class, net_kw, config.pair_finder, cached_pairs=config.cache_pairs, thermal=thermal,
                     force_mode=config.force_mode)
    force_rmse = loss.MSELoss.of_node(g.force) ** (1 / 2)
    force_mae = loss.MAELoss.of_node(g.force)
    force_rsq = loss.Rsq.of_node(g.force)
    total_loss = force_rmse + force_mae
    validation_losses = {"ForceRMSE": force_rmse, "ForceMAE": force_mae, "ForceRsq": force_rsq,
                         "TotalLoss": total_loss}
    training_modules, db_info = assemble_for_training(total_loss, validation_losses)
    return g, training_modules, db_info


def _with_pair_arrays(db_info: dict[str, Any], net_kw: dict[str, Any], arrays: dict[str, np.ndarray]):
    """``arrays`` plus the cached pairs that the graph reads (:mod:`openmm_cgnn.pair_cache`): half pair
    lists for autograd forces, full neighbour tables for explicit forces, none without a cache."""
    from .pair_cache import PAIR_KEYS, SLOT_KEYS, add_pair_arrays, add_slot_arrays

    if any(k in db_info["inputs"] for k in SLOT_KEYS):
        return add_slot_arrays(arrays, net_kw["dist_hard_max"])
    if any(k in db_info["inputs"] for k in PAIR_KEYS):
        return add_pair_arrays(arrays, net_kw["dist_hard_max"])
    return arrays


class TrainingStep:
    """One optimiser step of force-matching training, as :func:`train` runs it per batch, on a fixed batch.

    The same hippynn graph (pairs as ``config.cache_pairs`` / ``config.pair_finder`` say, HIP-NN-TS,
    HEnergy, forces by autograd), loss (force RMSE + MAE, hippynn's units) and Adam optimiser as
    :func:`train`; the batch is every frame of ``dataset`` (the mapped forces are the labels, no prior).
    For benchmarks and tests: ``step()`` returns the loss before the update.

    :param dataset: the frames of the batch. :param device: "auto", "cpu", "cuda", ...
    """

    def __init__(self, config: TrainConfig, dataset: CGDataset | Sequence[CGDataset], device: str = "auto",
                 dtype: torch.dtype = torch.float32):
        _import_hippynn()
        self.config = config
        self.device = resolve_device(device)
        sets = [dataset] if isinstance(dataset, CGDataset) else list(dataset)
        net_kw = network_kwargs(config, len(sets[0].type_names))
        thermal = None
        if config.temperature_aware:  # the data sets' temperatures, each frame's an input (as train() does)
            from .thermal import temperature_scale

            thermal = temperature_scale(sets, form=config.temperature_form)
        with _quiet_hippynn(io.StringIO()):
            self.graph, modules, db_info = _assemble(config, _NETWORK_CLASSES[config.tensor_order], net_kw, thermal)
        self.model = modules.model.to(self.device, dtype)
        self.loss = modules.loss.to(self.device, dtype)
        t0 = time.perf_counter()
        if len(sets) == 1:
            frames = sets[0].to_hippynn_arrays()
        else:  # data sets of different sizes: beads padded with species 0, as train() does
            frames = _hippynn_arrays(sets, [ds.forces for ds in sets],
                                     [{"train": np.arange(ds.n_frames), "valid": [], "test": []} for ds in sets],
                                     np.float64)
        if thermal is not None:
            from .thermal import frame_temperatures

            frames["temperature"] = frame_temperatures(sets)
        arrays = _with_pair_arrays(db_info, net_kw, frames)
        self.pair_seconds = time.perf_counter() - t0  # cost of caching the pairs (0 without a cache)

        def tensor(name: str) -> torch.Tensor:
            a = np.asarray(arrays[name])
            t = torch.as_tensor(a) if a.dtype.kind in "iub" else torch.as_tensor(a, dtype=dtype)
            return t.to(self.device)

        self.inputs = [tensor(k) for k in db_info["inputs"]]
        self.targets = [tensor(k) for k in db_info["targets"]]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.n_frames = sum(ds.n_frames for ds in sets)
        # stable parameter names (those of hippynn's modules), whichever way the forces are computed
        self._names = {}
        for prefix, node in (("network.", self.graph.network), ("energy.", self.graph.henergy),
                             ("entropy.", self.graph.hentropy)):
            if node is not None:
                self._names.update({id(p): prefix + n for n, p in node.torch_module.named_parameters()})

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with _quiet_hippynn(None):
            outputs = self.model(*self.inputs)
            loss = self.loss(*outputs, *self.targets)[0]
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return float(loss.detach())

    def gradients(self) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and parameter gradients at the current weights (no update): (loss, {name: grad}), named
        as in hippynn's modules (``network.<name>``, ``energy.<name>``)."""
        self.optimizer.zero_grad(set_to_none=True)
        with _quiet_hippynn(None):
            outputs = self.model(*self.inputs)
            loss = self.loss(*outputs, *self.targets)[0]
        loss.backward()
        grads = {self._names.get(id(p), n): p.grad.detach().clone() for n, p in self.model.named_parameters()
                 if p.grad is not None}
        return float(loss.detach()), grads


def _run_hippynn(config: TrainConfig, network_class: str, net_kw: dict[str, Any], arrays: dict[str, np.ndarray],
                 out, thermal: Any = None) -> tuple[list[dict], dict, dict]:
    hippynn = _import_hippynn()
    from hippynn.databases import Database
    from hippynn.experiment import SetupParams, setup_training, train_model
    from hippynn.experiment.controllers import PatienceController, RaiseBatchSizeOnPlateau

    g, training_modules, db_info = _assemble(config, network_class, net_kw, thermal)
    arrays = _with_pair_arrays(db_info, net_kw, arrays)
    device = resolve_device(config.device)
    database = Database(arrays, seed=config.seed, auto_split=True, pin_memory=device.type == "cuda", quiet=True,
                        **db_info)

    optimizer = torch.optim.Adam(training_modules.model.parameters(), lr=config.learning_rate)
    scheduler = RaiseBatchSizeOnPlateau(optimizer=optimizer, max_batch_size=config.max_batch_size,
                                        patience=config.plateau_patience, factor=config.plateau_factor)
    # hippynn evaluates int(n_train * fraction) training frames after each epoch: keep that at least 1
    n_train = int(arrays["split_mask_train"].sum())
    fraction_train_eval = min(1.0, max(config.fraction_train_eval, (1 + 1e-6) / n_train))
    controller = PatienceController(optimizer=optimizer, scheduler=scheduler, batch_size=config.batch_size,
                                    eval_batch_size=config.eval_batch_size, max_epochs=config.max_epochs,
                                    termination_patience=config.termination_patience,
                                    fraction_train_eval=fraction_train_eval, stopping_key="TotalLoss",
                                    quiet=True)
    distributed = config.devices > 1 or config.num_nodes > 1
    training_modules, controller, metric_tracker = setup_training(
        training_modules, SetupParams(controller=controller, device=torch.device("cpu") if distributed else device))
    metric_tracker.plot_over_time = _no_plots  # the curve goes to metrics.json instead of PDF plots

    curve: list[dict] = []
    t0 = time.perf_counter()

    def on_epoch(epoch: int, better: bool) -> None:
        m = metric_tracker.epoch_metric_values[-1]
        row = {"epoch": int(epoch), "better": bool(better),
               "batch_size": int(controller.batch_size),
               "learning_rate": float(optimizer.param_groups[0]["lr"]),
               "seconds": time.perf_counter() - t0}
        for split in ("train", "valid"):
            if split in m:
                row[f"{split}_force_rmse"] = m[split]["ForceRMSE"] * _FORCE_TO_KJ_NM
                row[f"{split}_force_mae"] = m[split]["ForceMAE"] * _FORCE_TO_KJ_NM
                row[f"{split}_force_r2_residual"] = m[split]["ForceRsq"]
        curve.append(row)
        if out is not None:
            print(f"epoch {epoch + 1:>4}/{config.max_epochs}  batch {row['batch_size']:>3}  "
                  f"lr {row['learning_rate']:.2e}  force RMSE train {row.get('train_force_rmse', float('nan')):9.4g}"
                  f"  valid {row.get('valid_force_rmse', float('nan')):9.4g} kJ/mol/nm"
                  f"{'  *' if better else ''}  ({row['seconds']:.1f} s)", file=out, flush=True)

    with tempfile.TemporaryDirectory(prefix="openmm-cgnn-hippynn-") as workdir, \
            hippynn.tools.active_directory(workdir):
        if distributed:
            from hippynn.experiment.routines import test_model

            from .ddp import fit_ddp

            rank = fit_ddp(config, training_modules, database, controller, metric_tracker, on_epoch, device, workdir)
            if rank != 0:
                return curve, {}, None
            test_model(database, training_modules.evaluator, config.eval_batch_size, "FinalTraining",
                       metric_tracker=metric_tracker)
        else:
            train_model(training_modules, database, controller, metric_tracker, callbacks=[on_epoch],
                        batch_callbacks=None, store_all_better=False, store_best=False,
                        store_structure_file=False, store_metrics=False, quiet=True)
    final = metric_tracker.other_metric_values.get("FinalTraining", {})
    hippynn_test = {split: {"force_rmse": v["ForceRMSE"] * _FORCE_TO_KJ_NM,
                            "force_mae": v["ForceMAE"] * _FORCE_TO_KJ_NM,
                            "force_r2_residual": v["ForceRsq"]} for split, v in final.items()}
    state = {
        "network": {k: _cpu(v) for k, v in g.network.torch_module.state_dict().items()},
        "energy": {k: _cpu(v) for k, v in g.henergy.torch_module.state_dict().items()},
        "energy_kwargs": {"feature_sizes": [int(x) for x in g.henergy.torch_module.feature_sizes],
                          "first_is_interacting": bool(g.henergy.torch_module.first_is_interacting)},
    }
    if g.hentropy is not None:
        state["entropy"] = {k: _cpu(v) for k, v in g.hentropy.torch_module.state_dict().items()}
    state["force_mode"] = _force_mode_of(g)
    return curve, hippynn_test, state


def _force_mode_of(g: _Graph) -> str:
    """How the graph's training forces are computed: "explicit" or "autograd" (the fallback, see
    :func:`explicit_forces_available`)."""
    from .explicit_forces import ExplicitForces

    return "explicit" if isinstance(getattr(g.force, "torch_module", None), ExplicitForces) else "autograd"


def _no_plots() -> None:
    return None


def _cpu(v: Any) -> Any:
    return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v


def force_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """RMSE, MAE (units of the inputs) and R^2 of force components."""
    d = (np.asarray(pred) - np.asarray(ref)).ravel()
    ref = np.asarray(ref).ravel()
    var = float(np.var(ref))
    return {"rmse": float(np.sqrt(np.mean(d ** 2))), "mae": float(np.mean(np.abs(d))),
            "r2": float(1 - np.mean(d ** 2) / var) if var > 0 else float("nan"), "n_components": int(d.size)}


def _composition(ds: CGDataset) -> dict[str, int]:
    """Bead type name -> number of beads of that type in a data set."""
    return {name: int(np.sum(ds.bead_types == t)) for t, name in enumerate(ds.type_names)}


def _test_metrics(loaded: "TrainedModel", sets: list[CGDataset], splits: list[dict[str, np.ndarray]],
                  paths: list[Path]) -> dict[str, Any]:
    from .bonded import BondedParams, bonded_energy_forces

    bonded = BondedParams.from_dict(loaded.metadata.get("bonded"))
    per, all_pred, all_ref = {}, [], []
    for p, ds, sp in zip(paths, sets, splits):
        idx = sp["test"] if len(sp["test"]) else sp["valid"]
        if len(idx) == 0:
            continue
        temperature = ds.temperature if loaded.thermal is not None else None
        _, f = predict_hippynn(loaded, ds.positions[idx], ds.boxes[idx], ds.bead_types, temperature=temperature)
        if bonded:   # the total CG force field: network + prior + bonded terms
            f = f + bonded_energy_forces(bonded, ds.positions[idx], ds.boxes[idx], ds.bead_types, ds.type_names,
                                         ds.bead_residues)[1]
        per[p.name] = force_metrics(f, ds.forces[idx])
        per[p.name]["frames"] = [int(i) for i in idx]
        all_pred.append(f.ravel())
        all_ref.append(ds.forces[idx].ravel())
    result: dict[str, Any] = {"per_dataset": per}
    result["all"] = force_metrics(np.concatenate(all_pred), np.concatenate(all_ref)) if all_pred else {}
    return result


# ----------------------------------------------------------------------------------------------
# loading and prediction
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainedModel:
    """A trained model rebuilt from its directory: hippynn modules with weights, the prior, metadata.

    ``network`` and ``energy`` are the hippynn torch modules (angstrom, kcal/mol) in ``dtype``;
    ``graph`` holds the hippynn nodes used for prediction.
    """

    model_dir: Path
    config: TrainConfig
    prior: PriorParams
    metadata: dict[str, Any]
    blob: dict[str, Any]
    network: torch.nn.Module
    energy: torch.nn.Module
    dtype: torch.dtype
    graph: Any = field(repr=False, default=None)
    _predictor: Any = field(repr=False, default=None)
    entropy: torch.nn.Module | None = None   # temperature-aware models: the read-out B(R) (openmm_cgnn.thermal)
    thermal: Any = None                      # ... and their TemperatureScale

    @property
    def type_names(self) -> list[str]:
        return list(self.blob["type_names"])

    @property
    def cutoff_nm(self) -> float:
        """Interaction range of the total model (network and prior), nm."""
        return float(self.metadata["cutoff_nm"])

    @property
    def tensor_order(self) -> int:
        return {v: k for k, v in _NETWORK_CLASSES.items()}[self.blob["network_class"]]

    def predictor(self):
        """hippynn's Predictor for (species, coordinates, cell) -> (HEnergy, forces)."""
        if self._predictor is None:
            from hippynn.graphs import Predictor

            g = self.graph
            inputs = [g.species, g.positions, g.cells] + ([g.temperature] if g.temperature is not None else [])
            self._predictor = Predictor(inputs, [g.total, g.force], model_device=torch.device("cpu"))
        return self._predictor


def read_prior(model_dir: str | Path) -> PriorParams:
    """The PriorParams stored in ``model_dir/prior.json`` (nm, kJ/mol)."""
    d = json.loads((Path(model_dir) / "prior.json").read_text())
    return PriorParams(**{k: float(d[k]) for k in ("g", "a", "cutoff", "taper", "strength")})


def weights_file(model_dir: str | Path) -> Path:
    """The hippynn weights file of the trained model directory ``model_dir`` (``hippynn_weights.pt``,
    or ``model.pt`` in directories written before that name); MissingInputError naming what to give
    instead when ``model_dir`` is not such a directory."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise MissingInputError(f"model directory '{model_dir}' does not exist")
    if model_dir.is_file():
        if model_dir.name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE) and (model_dir.parent / "config.toml").exists():
            hint = f"it is the hippynn weights file: give its folder '{model_dir.parent}'"
        else:
            hint = "it is a file: give the folder written by 'openmm-cgnn train'"
        raise MissingInputError(f"'{model_dir}' is not a trained model directory ({hint})")
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (model_dir / name).is_file():
            return model_dir / name
    raise MissingInputError(f"'{model_dir}' is not a trained model directory (no {WEIGHTS_FILE}); make one with "
                            "'openmm-cgnn train'")


def load_trained(model_dir: str | Path, dtype: torch.dtype | str = torch.float64) -> TrainedModel:
    """Rebuild the trained hippynn modules (with weights), the prior and the metadata of ``model_dir``.

    :param dtype: floating dtype of the rebuilt modules (float64 by default: the reference).
    """
    model_dir = Path(model_dir)
    weights = weights_file(model_dir)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    try:
        blob = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated, damaged or not a torch file
        raise InputFileError(f"the hippynn weights file '{weights}' cannot be read "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); it is truncated or "
                             "damaged: train the model again") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise InputFileError(f"'{weights}' has format {got!r}, expected {MODEL_FORMAT!r} "
                             "(the weights written by 'openmm-cgnn train')")
    try:
        config = TrainConfig.from_toml((model_dir / "config.toml").read_text())
        metadata = json.loads((model_dir / "metadata.json").read_text())
        prior = read_prior(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"model directory '{model_dir}' is incomplete or damaged "
                             f"({type(exc).__name__}: {exc}); train the model again") from None
    thermal = None
    if "thermal" in blob:
        from .thermal import TemperatureScale

        thermal = TemperatureScale.from_dict(blob["thermal"])
    with _quiet_hippynn(None):
        g = _build_graph(blob["network_class"], blob["network_kwargs"], blob.get("pair_finder", "kdtree"),
                         thermal=thermal)
        g.network.torch_module.load_state_dict(blob["network_state"])
        g.henergy.torch_module.load_state_dict(blob["energy_state"])
        if g.hentropy is not None:
            g.hentropy.torch_module.load_state_dict(blob["thermal"]["entropy_state"])
    nodes = (g.network, g.henergy) + ((g.hentropy,) if g.hentropy is not None else ())
    for node in nodes:
        node.torch_module.to(dtype).eval()
    return TrainedModel(model_dir, config, prior, metadata, blob, g.network.torch_module,
                        g.henergy.torch_module, dtype, g,
                        entropy=g.hentropy.torch_module if g.hentropy is not None else None, thermal=thermal)


def predict_hippynn(model: TrainedModel | str | Path, positions_nm: np.ndarray, boxes_nm: np.ndarray,
                    bead_types: np.ndarray, batch_size: int | None = 8,
                    temperature: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """hippynn's own prediction of the total model (network via hippynn's Predictor, plus prior).

    ``temperature`` (K; a number or one per frame): required by, and only used for, temperature-aware
    models (:mod:`openmm_cgnn.thermal`), whose energy is U(R, T).

    :param model: a :class:`TrainedModel` or a model directory (loaded in float64).
    :param positions_nm: (F, N, 3) bead positions, nm (or (N, 3) for one frame).
    :param boxes_nm: (F, 3, 3) box vectors as rows, nm (or (3, 3)).
    :param bead_types: (N,) 0-based bead type indices into the model's type names.
    :return: energies (F,) kJ/mol and forces (F, N, 3) kJ/mol/nm, float64.
    """
    if not isinstance(model, TrainedModel):
        model = load_trained(model)
    pos, box = as_frames(positions_nm, boxes_nm)
    types = np.asarray(bead_types, dtype=np.int64)
    if types.shape != pos.shape[1:2]:
        raise ValueError(f"bead_types has shape {types.shape}, expected ({pos.shape[1]},)")
    if types.min() < 0 or types.max() >= len(model.type_names):
        raise ValueError(f"bead types must be in [0, {len(model.type_names)})")
    _check_box(box, model.cutoff_nm, "predict_hippynn")
    species = torch.as_tensor(np.broadcast_to(types + 1, pos.shape[:2]).copy())
    coords = torch.as_tensor(pos * ANGSTROM_PER_NM, dtype=model.dtype)
    cells = torch.as_tensor(box * ANGSTROM_PER_NM, dtype=model.dtype)
    inputs = {"species": species, "coordinates": coords, "cell": cells}
    if model.thermal is not None:
        from .thermal import temperature_input

        inputs["temperature"] = torch.as_tensor(temperature_input(temperature, pos.shape[0]), dtype=model.dtype)
    elif temperature is not None:
        raise ConfigError("this model is not temperature-aware; predict without a temperature", "temperature")
    pred = model.predictor()
    with _quiet_hippynn(None):
        out = pred(**inputs, batch_size=batch_size)
    g = model.graph
    e_net = out[g.total.name].reshape(-1).double().numpy() * KJ_PER_KCAL
    f_net = out[g.force.name].double().numpy() * _FORCE_TO_KJ_NM
    e_pri, f_pri = prior_frames(model.prior, pos, box)
    return e_net + e_pri, f_net + f_pri
