"""Comparison harness: a CG model against all-atom references at several state points.

For every state point the harness gets the all-atom reference (runs it and maps it onto beads, or
reuses a given or earlier one), runs the CG model there from the last mapped frame, and compares the
two (RDF, first-shell ADF, density, pressure). A CG run that blows up is recorded as ``"blew_up"``, a
state point that could not be run as ``"failed"``; neither stops the others. This module only
orchestrates: state points are in :mod:`~openmm_cgnn.statepoints`, statistics in
:mod:`~openmm_cgnn.analysis`, plots and Markdown in :mod:`~openmm_cgnn.reporting`. Each piece of a
state point (:func:`reference_piece`, :func:`cg_piece`, :func:`analysis_piece`) is a module-level
function of paths and plain settings, and :class:`RunCache` decides which finished pieces are reused.

Use::

    from openmm_cgnn.harness import HarnessConfig, compare, summary_lines
    report = compare("model.pt", "300K:0.787g/cm3,400K:0.787g/cm3,300K:1bar", "report/",
                     HarnessConfig.from_preset("default"))
    print("\n".join(summary_lines(report)))

or ``openmm-cgnn compare --model model.pt --state-points ... --out report/``. The model may also be
a pair force field (``.json`` from ``openmm_cgnn.baselines``).

The output folder holds ``config.json``, ``report.json``, ``report.md``, ``rdf.png``, ``adf.png``,
``density.png``, ``curves.npz`` and ``state_points/``; ``report.json`` has the keys ``format``,
``version``, ``created``, ``config``, ``platform``, ``device``, ``versions``, ``model``,
``state_points``, ``summary``, ``files``, ``notes``, ``units``, ``timing_s``. Every file, key and
unit is described in ``docs/formats.md``; :func:`load_report` and :func:`load_curves` read a report
folder back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import CGNNError
from .files import OutputExistsError, cpu_model, read_config_file, save_npz_atomic, versions, write_json_atomic, write_text_atomic
from .files import check_writable, make_output_dir
from . import validation as V
from .deprecation import renamed
from .geometry import aa_cutoff_for_edge, box_edge, cutoff_fits
from .species import get_species
from .errors import ConfigError, InputFileError, MissingInputError
from .statepoints import (StatePoint, StatePointError, load_state_points, parse_state_point,  # noqa: F401
                          parse_state_points)
if TYPE_CHECKING:
    from .reference import ReferenceConfig
    from .simulate import CGSimulationConfig
from .reporting import harness_markdown, metrics_table_markdown, summary_lines, write_harness_plots  # noqa: F401

__all__ = [
    "StatePoint", "StatePointError", "parse_state_point", "parse_state_points", "load_state_points",
    "HarnessConfig", "compare", "summary_lines", "metrics_table_markdown", "load_report", "load_curves",
    "device_name", "RunCache", "reference_piece", "cg_piece", "analysis_piece", "plan_comparison", "ComparisonPlan",
    "state_point_dir", "REPORT_KEYS", "STATE_POINT_KEYS", "MODEL_KEYS", "REFERENCE_KEYS", "CG_KEYS", "RDF_KEYS",
    "ADF_KEYS", "DENSITY_KEYS", "PRESSURE_KEYS", "REPORT_FORMAT", "UNCERTAINTY_KEYS",
]

REPORT_FORMAT = "openmm-cgnn/comparison-report"
REPORT_VERSION = 1
REPORT_KEYS = ("format", "version", "created", "config", "platform", "device", "versions", "model",
               "state_points", "summary", "files", "notes", "units", "timing_s")
STATE_POINT_KEYS = ("label", "slug", "title", "state", "status", "message", "in_training", "reference", "cg",
                    "rdf", "adf", "density", "by_type", "pressure", "timing_s", "uncertainty")
MODEL_KEYS = ("file", "sha256", "kind", "label", "format", "type_names", "cutoff_nm", "network_class", "tensor_order",
              "dtype", "prior", "training_state_points", "training_datasets", "trained")
REFERENCE_KEYS = ("source", "dataset", "sha256", "n_frames", "n_beads", "species", "forcefield", "platform",
                  "config", "time_ps")
CG_KEYS = ("folder", "status", "error", "n_frames", "ns_per_day", "temperature_mean_K", "config")
# error bars (analysis.comparison_uncertainty): "<metric>_se" is the block-bootstrap standard error of a
# metric; "<metric>_noise_floor" (with its "_se") the value the metric takes from sampling noise alone
RDF_DISTANCES = ("mad", "max_abs_dev", "rmsd")
RDF_UNCERTAINTY_KEYS = (tuple(f"{k}_se" for k in RDF_DISTANCES + ("peak_position_error", "peak_height_error"))
                        + tuple(f"{k}_noise_floor{e}" for k in RDF_DISTANCES for e in ("", "_se")))
ADF_UNCERTAINTY_KEYS = ("l1_se", "l1_noise_floor", "l1_noise_floor_se")
DENSITY_UNCERTAINTY_KEYS = ("abs_error_se_bootstrap", "relative_error_se_bootstrap")
UNCERTAINTY_KEYS = ("method", "n_resamples", "seed", "n_sigma", "blocks", "noise_floor_method", "noise_floor_scale",
                    "notes")
RDF_KEYS = ("mad", "max_abs_dev", "rmsd", "peak_r_ref", "peak_r_cg", "peak_g_ref", "peak_g_cg",
            "peak_position_error", "peak_height_error", "r_max_nm", "bin_width_nm") + RDF_UNCERTAINTY_KEYS
ADF_KEYS = ("shell_cutoff_nm", "n_bins", "l1") + ADF_UNCERTAINTY_KEYS
DENSITY_KEYS = ("ensemble", "fixed", "ref_mean", "ref_se", "cg_mean", "cg_se", "n_blocks", "abs_error",
                "abs_error_se", "relative_error", "relative_error_se", "z") + DENSITY_UNCERTAINTY_KEYS
N_SIGMA = 2.0            # a difference counts when it exceeds this many combined standard errors
PRESSURE_KEYS = ("ref_mean", "ref_se", "cg_mean", "cg_se", "difference", "difference_se", "n_blocks")
UNITS = {"temperature": "K", "density": "g/cm^3", "pressure": "bar", "distance": "nm", "angle": "degree",
         "adf": "1/degree", "time": "ps", "timing": "s"}


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
# The fields of the run templates that the harness sets itself for every state point; every other field
# of ``HarnessConfig.reference`` (a ReferenceConfig) and ``HarnessConfig.cg`` (a CGSimulationConfig) is
# used as it is.
REFERENCE_PER_STATE_POINT = ("species", "n_molecules", "temperature", "density", "pressure", "cutoff", "seed",
                             "platform", "components", "box", "system_xml", "forcefield_files")
CG_PER_STATE_POINT = ("model", "temperature", "pressure", "seed", "platform", "start_dataset", "start_frame",
                      "n_beads", "density")
_SET_PER_STATE_POINT = "(set per state point)"
# the flat keys of configurations written before the harness composed the run configurations
_FLAT_KEYS = {"aa_cutoff": (None, "reference_cutoff"), "aa_forcefield": ("reference", "forcefield"),
              "aa_timestep": ("reference", "timestep"), "aa_equilibration": ("reference", "equilibration"),
              "aa_production": ("reference", "production"), "aa_frame_interval": ("reference", "frame_interval"),
              "cg_timestep": ("cg", "timestep"), "cg_friction": ("cg", "friction"),
              "cg_equilibration": ("cg", "equilibration"), "cg_production": ("cg", "production"),
              "cg_frame_interval": ("cg", "frame_interval"), "cg_cuda_graphs": ("cg", "use_cuda_graphs"),
              "cg_mts": ("cg", "mts"), "cg_mts_fast": ("cg", "mts_fast")}


def default_reference_settings():
    """The run settings of the all-atom references of the "default" preset (a ReferenceConfig whose
    state and system fields are placeholders: the harness sets them per state point)."""
    from .reference import ReferenceConfig

    return ReferenceConfig(equilibration=10.0, production=50.0, frame_interval=0.5)


def default_cg_settings():
    """The run settings of the CG runs of the "default" preset (a CGSimulationConfig whose model, state and
    start fields are placeholders: the harness sets them per state point)."""
    from .simulate import CGSimulationConfig

    return CGSimulationConfig(model=_SET_PER_STATE_POINT, start_dataset=_SET_PER_STATE_POINT, equilibration=5.0,
                              production=30.0, frame_interval=0.25)


@dataclass
class HarnessConfig:
    """Every setting of a comparison. Units: ps, nm, K.

    ``reference`` holds the run settings of the all-atom references (a :class:`~openmm_cgnn.reference.
    ReferenceConfig`: time step, equilibration, production, frame interval, force field, ...) and ``cg``
    those of the CG runs (a :class:`~openmm_cgnn.simulate.CGSimulationConfig`: time step, friction,
    equilibration, production, frame interval, CUDA graphs, multiple time stepping, ...); the harness
    fills in their state, system, seed and platform per state point (``REFERENCE_PER_STATE_POINT``,
    ``CG_PER_STATE_POINT``). The keywords of the older flat form (``aa_production=...``,
    ``cg_timestep=...``, listed in ``docs/formats.md``) are accepted by the constructor, :meth:`from_preset`,
    ``dataclasses.replace`` and :meth:`from_dict`, and read as attributes. See :meth:`from_preset` for "tiny"
    (tests), "default" (the CPU demo) and "full" (a GPU study).
    """

    name: str = "default"                # the preset it started from ("tiny", "default") or your own name
    species: str | None = None           # built-in liquid; None: the liquid the model was trained on
    n_molecules: int = 64                # molecules of a built-in species (other inputs keep their counts)
    system: dict | None = None           # the all-atom input instead of a species: keys components, box,
    #                                      system_xml, forcefield_files (as ReferenceConfig); None: the model's
    mapping: dict | None = None          # the CG map (residue -> beads); None: the model's training map
    reference: ReferenceConfig = field(default_factory=default_reference_settings)  # all-atom run settings
    reference_cutoff: float | None = None  # nm; None: min(1.0, 0.46 x initial box edge) per state point
    cg: CGSimulationConfig = field(default_factory=default_cg_settings)             # CG run settings
    # analysis
    rdf_bin_width: float = 0.005         # nm
    adf_bins: int = 60                   # over 0..180 degrees
    adf_shell_cutoff: float | None = None  # nm; None: the first minimum of each reference g(r)
    density_blocks: int = 5              # blocks for the NPT density mean and standard error
    bootstrap_resamples: int = 200       # block-bootstrap resamples for the error bars of every metric (0: none)
    bootstrap_min_blocks: int = 8        # blocks per trajectory at least (analysis.plan_blocks); 4+ for a floor
    # common
    platform: str | None = None          # None: CUDA if available, else CPU (the same for AA and CG)
    torch_threads: int | None = 1        # torch intra-op threads while comparing (None: torch's default);
    #                                      1 is several times faster for small CPU systems on busy cores
    seed: int = 2024
    reuse_references: bool = True        # reuse all-atom runs of an earlier harness run with the same settings

    def __post_init__(self) -> None:
        from .reference import ReferenceConfig
        from .simulate import CGSimulationConfig

        # own copies of the run templates: dataclasses.replace hands the same objects to the new config
        for name, cls in (("reference", ReferenceConfig), ("cg", CGSimulationConfig)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {value!r}", name)
            object.__setattr__(self, name, copy.copy(value))

    def __getattr__(self, name: str) -> Any:
        """The older flat names (``aa_production``, ``cg_timestep``, ...) read the composed settings."""
        where = _FLAT_KEYS.get(name)
        if where is None or "reference" not in self.__dict__:
            raise AttributeError(f"'HarnessConfig' object has no attribute {name!r}")
        part, key = where
        return getattr(self.__dict__[part] if part else self, key)

    def __setattr__(self, name: str, value: Any) -> None:
        where = _FLAT_KEYS.get(name)
        if where is None:
            object.__setattr__(self, name, value)
        else:
            part, key = where
            setattr(getattr(self, part) if part else self, key, value)

    def validate(self) -> None:
        """Check every field (the rules of :mod:`openmm_cgnn.validation`, the same as those of the
        reference and CG runs); ConfigError names the first bad one (run settings by their flat names,
        e.g. ``cg_timestep``)."""
        ref, cg = self.reference, self.cg
        V.positive(ref.equilibration, "aa_equilibration", "ps")
        V.frame_schedule(ref.timestep, ref.equilibration, ref.production, ref.frame_interval, "aa_")
        V.frame_schedule(cg.timestep, cg.equilibration, cg.production, cg.frame_interval, "cg_")
        V.positive(cg.friction, "cg_friction", "1/ps")
        V.positive(self.rdf_bin_width, "rdf_bin_width", "nm")
        if self.reference_cutoff is not None:
            V.cutoff(self.reference_cutoff, "aa_cutoff")
        V.integer(self.n_molecules, "n_molecules", 2)
        V.integer(self.adf_bins, "adf_bins", 3)
        if self.adf_shell_cutoff is not None:
            V.positive(self.adf_shell_cutoff, "adf_shell_cutoff", "nm")
        V.integer(self.density_blocks, "density_blocks", 2)
        V.integer(self.bootstrap_resamples, "bootstrap_resamples", 0)
        V.integer(self.bootstrap_min_blocks, "bootstrap_min_blocks", 4)
        if self.torch_threads is not None:
            V.integer(self.torch_threads, "torch_threads", 1)
        V.seed(self.seed)
        if self.species is not None and not isinstance(self.species, str):
            raise ConfigError(f"species must be a name such as 'methanol' or None (the model's), got "
                              f"{self.species!r}", "species")
        for name in ("system", "mapping"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a table (dict) or None (the model's), got "
                                  f"{getattr(self, name)!r}", name)
        V.integer(cg.mts, "cg_mts", 1)
        outer = cg.mts * cg.timestep
        if cg.mts > 1 and abs(cg.frame_interval / outer - round(cg.frame_interval / outer)) > 1e-6:
            raise ConfigError(f"cg_frame_interval ({cg.frame_interval:g} ps) must be a whole number of MTS outer "
                              f"steps (cg_mts x cg_timestep = {outer:g} ps)", "cg_frame_interval")
        if cg.use_cuda_graphs is not None and not isinstance(cg.use_cuda_graphs, bool):
            raise ConfigError(f"cg_cuda_graphs must be true, false or null (automatic), got {cg.use_cuda_graphs!r}",
                              "cg_cuda_graphs")
        ref.validate()
        cg.validate()

    preset = renamed("from_preset")   # the old name

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "HarnessConfig":
        """``"tiny"``: seconds per state point, for tests (64 molecules, 1.5 ps all-atom and 0.6 ps CG
        runs, 20 frames each; the numbers mean little). ``"default"``: the CPU demo, a few minutes per
        state point on 2 CPU cores for 64 molecules (10 + 50 ps all-atom with 100 frames, 5 + 30 ps
        CG with 120 frames). ``"full"``: a GPU study (512 molecules, 100 + 500 ps all-atom, 20 + 500 ps
        CG, 500 frames each). Keyword ``overrides`` replace single fields (flat names such as
        ``aa_production`` too)."""
        if name == "default":
            cfg = cls(name="default")
        elif name == "full":
            cfg = cls(name="full", n_molecules=512, aa_equilibration=100.0, aa_production=500.0,
                      aa_frame_interval=1.0, cg_equilibration=20.0, cg_production=500.0, cg_frame_interval=1.0,
                      adf_bins=90, density_blocks=10, torch_threads=None)
        elif name == "tiny":
            cfg = cls(name="tiny", n_molecules=64, aa_equilibration=0.5, aa_production=1.0,
                      aa_frame_interval=0.05, cg_equilibration=0.1, cg_production=0.5, cg_frame_interval=0.025,
                      rdf_bin_width=0.01, adf_bins=36, density_blocks=4)
        else:
            raise ConfigError(f"unknown harness preset {name!r}; choose 'tiny', 'default' or 'full'", "preset")
        return replace(cfg, **overrides) if overrides else cfg

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (``config.json``): the run templates without the fields set
        per state point."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("reference", "cg")}
        out["reference"] = {k: v for k, v in asdict(self.reference).items() if k not in REFERENCE_PER_STATE_POINT}
        out["cg"] = {k: v for k, v in asdict(self.cg).items() if k not in CG_PER_STATE_POINT}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HarnessConfig":
        """Settings from :meth:`to_dict`'s form, or from the older flat form (``aa_*``/``cg_*`` keys)."""
        if not isinstance(data, dict):
            raise InputFileError("a harness configuration must be a JSON object of settings")
        known = {f.name for f in fields(cls)} | set(_FLAT_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown harness configuration keys: {unknown}")
        data = dict(data)
        for part, template, fixed in (("reference", default_reference_settings, REFERENCE_PER_STATE_POINT),
                                      ("cg", default_cg_settings, CG_PER_STATE_POINT)):
            given = data.pop(part, None)
            if given is None:
                continue
            if not isinstance(given, dict):
                raise ConfigError(f"'{part}' of a harness configuration must be a table of run settings", part)
            base = template()
            bad = sorted(set(given) - (set(asdict(base)) - set(fixed)))
            if bad:
                raise ConfigError(f"unknown keys {bad} in the harness configuration's '{part}'", part)
            data[part] = replace(base, **given)
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "HarnessConfig":
        """Read a ``config.json`` written by :func:`compare` (or written by hand; the older flat form too)."""
        return cls.from_dict(read_config_file(path, "harness configuration", InputFileError, MissingInputError))


_dataclass_init = HarnessConfig.__init__


def _harness_config_init(self, *args: Any, **kwargs: Any) -> None:
    """The dataclass constructor, also taking the flat keywords (``aa_production=...``)."""
    flat = {k: kwargs.pop(k) for k in list(kwargs) if k in _FLAT_KEYS}
    _dataclass_init(self, *args, **kwargs)
    for key, value in flat.items():
        setattr(self, key, value)        # into the config's own copies of the templates
    self.validate()


HarnessConfig.__init__ = _harness_config_init


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[compare] {message}", flush=True)


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def device_name(platform_name: str) -> str:
    """The CUDA device name for a GPU platform, else the CPU model (from /proc/cpuinfo)."""
    if platform_name in ("CUDA", "OpenCL", "HIP"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:
            pass
        return f"{platform_name} device (name unavailable: torch sees no GPU)"
    return cpu_model()


def _dataset_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a CG data set, without loading its arrays."""
    from .files import read_metadata_json, read_npz
    from .dataset import FORMAT, DatasetFormatError

    z = read_npz(path, "reference data set", "a CG data set from 'openmm-cgnn map'", keys=("metadata_json",))
    meta = read_metadata_json(z, path, "reference data set") if "metadata_json" in z else {}
    if meta.get("format") != FORMAT:
        raise DatasetFormatError(f"'{path}' is not a CG data set (format {meta.get('format')!r}); map an all-atom "
                                 "reference first with 'openmm-cgnn map'")
    return meta


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(_clean(a), sort_keys=True) == json.dumps(_clean(b), sort_keys=True)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return Path(path).name


# ---------------------------------------------------------------------------------------------
# which all-atom system: the model's (from its training metadata) unless the configuration says
# ---------------------------------------------------------------------------------------------
_INPUT_KEYS = ("components", "box", "system_xml", "forcefield_files")


class HarnessInputError(CGNNError, ValueError):
    """The all-atom system or the mapping does not fit the model (found before any simulation runs)."""


def resolve_system(config: HarnessConfig, meta: dict[str, Any], notes: list[str] | None = None) -> HarnessConfig:
    """``config`` with ``species``/``system``/``mapping`` filled in from the model's training metadata
    where the configuration leaves them open (the data set sources recorded at training)."""
    training = meta.get("training") or {}
    datasets = training.get("datasets") or []
    source = next((d.get("source") for d in datasets if d.get("source")), None) or {}
    ref_cfg = source.get("config") or {}
    spec = next((d.get("mapping_spec") for d in datasets if d.get("mapping_spec") is not None), None)
    changes: dict[str, Any] = {}
    if ref_cfg.get("imported") and config.species is None and config.system is None:
        # trained on imported data: the harness cannot rerun that system unless it is told how
        return replace(config, mapping=config.mapping if config.mapping is not None else spec)
    if config.species is None and config.system is None:
        given = {k: ref_cfg.get(k) for k in _INPUT_KEYS if ref_cfg.get(k)}
        if given:
            changes["system"] = given
        elif ref_cfg.get("species") or source.get("species"):
            changes["species"] = ref_cfg.get("species") or source.get("species")
        else:
            changes["species"] = "methanol"
            if notes is not None:
                notes.append("the model records no all-atom system it was trained on; using the built-in "
                             "methanol (set species or system in the harness configuration to choose)")
        if config.reference.forcefield is None and ref_cfg.get("forcefield"):
            changes["reference"] = replace(config.reference, forcefield=ref_cfg["forcefield"])
    if config.mapping is None and spec:
        changes["mapping"] = spec
    if config.system is not None:
        unknown = sorted(set(config.system) - set(_INPUT_KEYS))
        if unknown:
            raise HarnessInputError(f"unknown keys {unknown} in the harness 'system'; use {', '.join(_INPUT_KEYS)}")
    return replace(config, **changes) if changes else config


def reference_input(config: HarnessConfig, **state: Any) -> "ReferenceConfig":
    """The ReferenceConfig of an all-atom run of ``config``: its run settings (``config.reference``) with the
    system of ``config`` and the state, cutoff, seed and platform given in ``state``."""
    system = config.system or {}
    return replace(config.reference, species=config.species or "methanol", n_molecules=config.n_molecules,
                   **{k: system.get(k) for k in _INPUT_KEYS}, **state)


def check_mapping(config: HarnessConfig, type_names: Sequence[str]) -> list[str]:
    """Map the all-atom topology of ``config`` with its mapping and refuse bead types the model does not
    know -- before anything runs. Returns the bead types of the system."""
    from .aa_input import aa_topology
    from .mapping import create_mapping

    inp = reference_input(config)
    try:
        mapping = create_mapping(aa_topology(inp), config.mapping)
    except CGNNError:
        raise
    except ValueError as exc:
        raise HarnessInputError(f"the mapping does not fit the all-atom system: {exc}") from None
    unknown = [t for t in mapping.type_names if t not in list(type_names)]
    if unknown:
        what = config.system or {"species": inp.species}
        raise HarnessInputError(
            f"the all-atom system {json.dumps(what)} maps onto bead types {', '.join(mapping.type_names)}, but the "
            f"model was trained on {', '.join(type_names)} ({', '.join(unknown)} unknown); give the liquid the model "
            "was trained on (--species, --components, --box) or leave them out to use the model's own")
    return mapping.type_names


def _input_mass_and_count(config: HarnessConfig) -> tuple[float, int]:
    """(total mass amu, molecules) of the all-atom input of ``config``."""
    from .aa_input import total_mass_and_molecules

    if not config.system:
        return get_species(config.species or "methanol").molecular_mass * config.n_molecules, config.n_molecules
    return total_mass_and_molecules(reference_input(config))


def _initial_density(config: HarnessConfig, sp: StatePoint) -> float:
    """The density (g/cm^3) the all-atom box of ``sp`` starts at."""
    if sp.density is not None:
        return sp.density
    if not config.system:
        from .species import get_species

        return get_species(config.species or "methanol").default_density
    from .aa_input import box_density, box_from_file, load_molecule, parse_components

    if config.system.get("box"):
        top, _, box = box_from_file(config.system["box"])
        return box_density(top, box)
    comps = parse_components(config.system["components"])
    mols = [load_molecule(name) for name, _ in comps]
    if not all(m.species for m in mols):
        raise HarnessInputError("an NPT state point of components from molecule files needs a starting density; "
                                "give the state point as TEMPERATURE:DENSITY or use a box file")
    mass = np.array([m.mass * c for m, (_, c) in zip(mols, comps)])
    return float(mass.sum() / sum(mm / m.species.default_density for mm, m in zip(mass, mols)))


# ---------------------------------------------------------------------------------------------
# model provenance
# ---------------------------------------------------------------------------------------------
def _model_info(model: Path, cg_model: Any) -> dict[str, Any]:
    """Provenance of a model file (``MODEL_KEYS``): its file and hash, what its potential family says of
    it (kind, label, format, network, training data) and the facts every model has."""
    meta = cg_model.metadata
    info = {"file": model.name, "sha256": _sha256(model), "type_names": meta.get("type_names"),
            "cutoff_nm": meta.get("cutoff_nm"), "prior": meta.get("prior"), **cg_model.describe()}
    return {key: info[key] for key in MODEL_KEYS}


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------
def _empty_result(sp: StatePoint, in_training: bool) -> dict[str, Any]:
    return {
        "label": sp.label(), "slug": sp.slug(), "title": sp.title(), "state": sp.to_dict(),
        "status": "complete", "message": None, "in_training": in_training,
        "reference": {k: None for k in REFERENCE_KEYS}, "cg": {k: None for k in CG_KEYS},
        "rdf": {k: None for k in RDF_KEYS}, "adf": {k: None for k in ADF_KEYS},
        "density": {**{k: None for k in DENSITY_KEYS}, "ensemble": sp.ensemble, "fixed": sp.ensemble == "NVT"},
        "by_type": {"composition": None, "rdf": {}, "adf": {}},
        "pressure": {k: None for k in PRESSURE_KEYS},
        "uncertainty": {k: None for k in UNCERTAINTY_KEYS},
        "timing_s": {"reference": None, "cg": None, "analysis": None},
    }


def _match_given(paths: Sequence[str | Path] | None, points: list[StatePoint],
                 notes: list[str], progress: bool) -> dict[int, Path]:
    """Which given reference data set serves which state point (by ``metadata.state``)."""
    given: dict[int, Path] = {}
    for p in paths or []:
        p = Path(p)
        state = _dataset_metadata(p).get("state", {})
        hits = [i for i, sp in enumerate(points) if sp.matches(state)]
        if not hits:
            msg = (f"reference data set '{p.name}' (state {state}) matches none of the state points; "
                   "it is not used")
            notes.append(msg)
            _log(progress, "note: " + msg)
        for i in hits:
            if i in given:
                raise ConfigError(f"two reference data sets match state point {points[i].label()}: "
                                 f"'{given[i]}' and '{p}'; give one")
            given[i] = p
    return given


def _check_sizes(config: HarnessConfig, points: list[StatePoint], given: dict[int, Path],
                 cutoff_nm: float | None) -> None:
    """Refuse before any run when a box is too small for the model or the all-atom cutoff."""
    from .dataset import CGDataset

    mass, n_mol = (None, None) if len(given) == len(points) else _input_mass_and_count(config)
    for i, sp in enumerate(points):
        if i in given:
            ds = CGDataset.load(given[i])
            from .analysis import minimum_image_radius

            edge = 2.0 * minimum_image_radius(ds.boxes[-1])
            where = f"reference data set '{given[i].name}'"
            n = ds.n_beads
        else:
            rho = _initial_density(config, sp)
            edge = box_edge(1, mass, rho)
            where = f"{n_mol} molecules at {rho:g} g/cm^3"
            n = n_mol
            if config.reference_cutoff is not None and not cutoff_fits(np.eye(3) * edge, config.reference_cutoff):
                raise ConfigError(
                    f"state point {sp.label()}: {where} make a {edge:.3f} nm box, smaller than twice the all-atom "
                    f"cutoff ({config.reference_cutoff} nm); use more molecules or aa_cutoff <= {edge / 2:.3f} nm")
        if cutoff_nm and not cutoff_fits(np.eye(3) * edge, cutoff_nm):
            need = math.ceil(n * (2.0 * cutoff_nm / edge) ** 3 * 1.1)
            raise ConfigError(
                f"state point {sp.label()}: {where} make a {edge:.3f} nm box, too small for the model's cutoff "
                f"({cutoff_nm:g} nm needs an edge above {2 * cutoff_nm:g} nm); use at least {need} molecules")


def compare(model: str | Path, state_points: Any, out_dir: str | Path, config: HarnessConfig | None = None,
            reference_datasets: Sequence[str | Path] | None = None, overwrite: bool = False,
            progress: bool = True, cluster: Any = None) -> dict[str, Any]:
    """Compare the exported CG ``model`` with all-atom references at ``state_points``; write ``out_dir``.

    :param model: a model file any registered potential reads: an exported model (``.pt`` from ``openmm-cgnn
        export``, ``MLPotential("cgnn")``) or a pair force field (``.json``, ``MLPotential("cgpair")``).
    :param state_points: StatePoints, strings ("300K:0.787g/cm3"), a comma-separated string or a TOML path.
    :param out_dir: output folder (its files are described in ``docs/formats.md``).
    :param config: the settings (default ``HarnessConfig.from_preset("default")``).
    :param reference_datasets: CG data sets (from ``openmm-cgnn map``) to use as the reference where
        their ``metadata.state`` matches a state point, instead of running the all-atom simulation.
    :param overwrite: replace an existing report; without it an ``out_dir`` that holds ``report.json``
        is refused. (An interrupted comparison without a report is resumed: finished runs with the same
        settings are reused.)
    :param cluster: where the pieces of every state point (all-atom reference, CG run, analysis) run
        (:mod:`openmm_cgnn.cluster`): None here, one after the other; a ``ClusterConfig`` on a Dask
        cluster (a local one sized to the machine, or ``scheduler=ADDRESS``); an open ``Runner`` (kept
        open). The report is the same either way.
    :return: the report (the content of ``report.json``).
    """
    from .cluster import runner_for

    plan = plan_comparison(model, state_points, out_dir, config, reference_datasets, overwrite, progress)
    with runner_for(cluster, len(plan.points), cpu_only=plan.config.platform in ("CPU", "Reference")) as runner:
        plan.start(runner)
        results = runner.run(plan.pieces(), progress=progress and runner.parallel,
                             on_done=plan.log_piece if runner.parallel else None)
    return plan.finish(results)


def plan_comparison(model: str | Path, state_points: Any, out_dir: str | Path, config: HarnessConfig | None = None,
                    reference_datasets: Sequence[str | Path] | None = None, overwrite: bool = False,
                    progress: bool = True, key_prefix: str = "",
                    shared_references: dict[str, Any] | None = None) -> "ComparisonPlan":
    """Check everything :func:`compare` checks before a run (inputs, sizes, output folder) and return the
    comparison as a graph of pieces, without running anything. ``key_prefix`` prefixes the piece keys
    (several comparisons in one graph); ``shared_references`` maps a state-point label to the
    :class:`~openmm_cgnn.cluster.Result` of another comparison's reference piece, whose data set is then
    used as a given reference (when that piece succeeded; else this comparison runs its own)."""
    from .system import CGModel

    config = config if config is not None else HarnessConfig.from_preset("default")
    config.validate()
    points = parse_state_points(state_points)
    out = Path(out_dir)
    if (out / "report.json").exists() and not overwrite and not _has_failed_state_points(out):
        raise OutputExistsError(f"'{out}' already holds a comparison report; choose another folder or pass "
                                "--overwrite")
    check_writable(out)
    model = Path(model)
    cg_model = CGModel(model)
    meta = cg_model.metadata
    model_info = _model_info(model, cg_model)
    notes: list[str] = []
    config = resolve_system(config, meta, notes)
    given: dict[int, Any] = dict(_match_given(reference_datasets, points, notes, progress))
    for i, sp in enumerate(points):
        if i not in given and sp.label() in (shared_references or {}):
            given[i] = shared_references[sp.label()]
    files_given = {i: p for i, p in given.items() if isinstance(p, Path)}
    if len(files_given) < len(points):
        if config.species is None and config.system is None:
            raise HarnessInputError(
                "the model was trained on imported all-atom data, which the harness cannot rerun; give the all-atom "
                "system (--box with --forcefield-xml or --system-xml, or --components) or mapped reference data "
                "sets for every state point (--reference-data)")
        check_mapping(config, meta.get("type_names") or [])
    _check_sizes(config, points, files_given, meta.get("cutoff_nm"))
    return ComparisonPlan(model=model, model_info=model_info, config=config, points=points, out=out, given=given,
                          overwrite=overwrite, progress=progress, notes=notes, key_prefix=key_prefix)


def _platform_and_device(name: str | None) -> tuple[str, str]:
    """(OpenMM platform name, device name) that ``name`` (None: the best available) gives where this runs."""
    from .reference import choose_platform

    platform = choose_platform(name).getName()
    return platform, device_name(platform)


@dataclass
class ComparisonPlan:
    """A comparison as pieces of work (from :func:`plan_comparison`): per state point the all-atom
    reference, then the CG run, then the analysis. :meth:`start` chooses the platform and writes
    ``config.json``; the pieces run anywhere (:mod:`openmm_cgnn.cluster`); :meth:`finish` writes the
    report from their results."""

    model: Path
    model_info: dict[str, Any]
    config: HarnessConfig
    points: list[StatePoint]
    out: Path
    given: dict[int, Any]
    overwrite: bool
    progress: bool
    notes: list[str]
    key_prefix: str = ""
    platform: str | None = None
    device: str | None = None
    parallel: bool = False
    started: float = field(default_factory=time.perf_counter)

    def start(self, runner: Any, platform_device: tuple[str, str] | None = None) -> None:
        """Choose the OpenMM platform where the pieces run (on a worker of a cluster: the client may have
        no GPU), create the output folder and write ``config.json``."""
        from .cluster import ClusterError, Piece, PieceFailure

        self.parallel = bool(runner.parallel)
        if platform_device is None:
            if self.parallel:
                probe = runner.run([Piece("platform", _platform_and_device, (self.config.platform,), gpu=True)])
                platform_device = probe["platform"]
                if isinstance(platform_device, PieceFailure):
                    raise ClusterError(f"on the cluster's workers: {platform_device.message}")
            else:
                platform_device = _platform_and_device(self.config.platform)
        self.platform, self.device = platform_device
        make_output_dir(self.out)
        write_json_atomic(self.out / "config.json", self.config.to_dict())
        _log(self.progress, f"{len(self.points)} state point(s): {', '.join(p.label() for p in self.points)}; "
                            f"model {self.model.name}; platform {self.platform} ({self.device}); settings "
                            f"{self.config.name!r}; output {self.out}"
                            + (f"; on a {runner.description}" if self.parallel else ""))

    def keys(self, sp: StatePoint) -> tuple[str, str, str]:
        """The keys of the reference, CG-run and analysis pieces of ``sp``."""
        base = f"{self.key_prefix}{sp.slug()}"
        return f"{base}/reference", f"{base}/cg", f"{base}/analysis"

    def pieces(self) -> list[Any]:
        """The pieces of every state point, in state-point order (reference -> CG run -> analysis)."""
        from .cluster import Piece, Result

        if self.platform is None:
            raise RuntimeError("ComparisonPlan.start() must run before its pieces")
        out: list[Piece] = []
        threads = self.config.torch_threads
        for i, sp in enumerate(self.points):
            job = self._job(i, sp)
            ref, cg, ana = self.keys(sp)
            name = f"{self.key_prefix}{sp.label()}"
            out += [Piece(ref, _step_reference, (job,), gpu=True, torch_threads=threads, label=f"{name} reference"),
                    Piece(cg, _step_cg, (Result(ref),), gpu=True, torch_threads=threads, label=f"{name} CG run"),
                    Piece(ana, _step_analysis, (Result(cg),), torch_threads=threads, label=f"{name} analysis")]
        return out

    def _job(self, i: int, sp: StatePoint) -> dict[str, Any]:
        """What the pieces of state point ``i`` need (paths, settings; picklable). On a cluster the paths
        are absolute: a worker may start in another folder (the report keeps them relative)."""
        where = (lambda p: p.absolute() if isinstance(p, Path) else p) if self.parallel else (lambda p: p)
        return {"i": i, "n": len(self.points), "sp": sp, "model": where(self.model),
                "model_sha256": self.model_info["sha256"],
                "in_training": any(sp.matches(s) for s in self.model_info.get("training_state_points") or []),
                "config": self.config, "platform": self.platform, "out": where(self.out),
                "given": where(self.given.get(i)), "overwrite": self.overwrite,
                "progress": self.progress and not self.parallel}

    def log_piece(self, piece: Any, value: Any) -> list[str]:
        """The progress lines of a finished piece (printed by the runner of a cluster)."""
        from .cluster import PieceFailure

        if not self.progress:
            return []
        if isinstance(value, PieceFailure):
            return [f"[compare] {piece.label}: {value.message}"]
        return [f"[compare] {value['tag']}: {line}" for line in value["said"]]

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write curves, plots, ``report.md`` and ``report.json`` from the pieces' results; the report."""
        states = [self._state_of(sp, results) for sp in self.points]
        results_sp = [s["res"] for s in states]
        curves = [s["curves"] for s in states]
        notes = list(self.notes)
        for s in states:
            notes.extend(s["notes"])
        return _write_report(self, results_sp, curves, notes)

    def _state_of(self, sp: StatePoint, results: dict[str, Any]) -> dict[str, Any]:
        """The final state of ``sp``'s chain; a piece that did not return (its worker died ...) makes the
        state point "failed", as an exception inside it would."""
        from .cluster import PieceFailure

        last: dict[str, Any] | None = None
        for key, stage in zip(self.keys(sp), ("the all-atom reference", "the CG simulation", "the analysis")):
            value = results[key]
            if not isinstance(value, PieceFailure):
                last = value
                continue
            if value.cause is not None:      # not run because an earlier piece of the chain failed
                continue
            state = _next(last) if last is not None else _new_state(self._job(self.points.index(sp), sp))
            state["progress"] = False
            _fail(state, stage, value.message, value.traceback)
            return state
        return last


def _write_report(plan: ComparisonPlan, results: list[dict[str, Any]], curves: list[dict[str, np.ndarray]],
                  notes: list[str]) -> dict[str, Any]:
    out, model_info, progress = plan.out, plan.model_info, plan.progress
    files = _write_curves(out, plan.points, curves)
    trained_temperatures = [s["temperature_K"] for s in model_info["training_state_points"] or []
                            if s.get("temperature_K") is not None]
    files.update(write_harness_plots(out, results, curves, trained_temperatures, model_info["label"]))
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": plan.config.to_dict(), "platform": plan.platform, "device": plan.device, "versions": versions(),
        "model": model_info, "state_points": results, "summary": {}, "files": {}, "notes": notes,
        "units": UNITS, "timing_s": {},
    }
    counts = {s: sum(r["status"] == s for r in results) for s in ("complete", "blew_up", "failed")}
    report["summary"] = {"n_state_points": len(results), "n_complete": counts["complete"],
                         "n_blew_up": counts["blew_up"], "n_failed": counts["failed"],
                         "lines": summary_lines(report)}
    files.update({"report": "report.json", "markdown": "report.md", "config": "config.json"})
    report["files"] = files
    report["timing_s"] = {"total": time.perf_counter() - plan.started}
    report = _clean(report)
    write_text_atomic(out / "report.md", harness_markdown(report))
    write_json_atomic(out / "report.json", report)
    _log(progress, f"done in {report['timing_s']['total']:.0f} s: {counts['complete']} complete, "
                   f"{counts['blew_up']} blew up, {counts['failed']} failed; report in {out / 'report.md'}")
    for line in report["summary"]["lines"]:
        _log(progress, "  " + line)
    return report


def _has_failed_state_points(out: Path) -> bool:
    """Whether the report in ``out`` has a state point that could not be run: such a report may be redone
    without --overwrite (the finished runs with the same model and settings are reused)."""
    try:
        report = json.loads((out / "report.json").read_text())
        return any(sp.get("status") == "failed" for sp in report.get("state_points", []))
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# the three pieces of a state point, as steps that pass one state dict along (picklable, run anywhere)
# ---------------------------------------------------------------------------------------------
def _new_state(job: dict[str, Any]) -> dict[str, Any]:
    sp = job["sp"]
    return {**job, "res": _empty_result(sp, job["in_training"]), "curves": {}, "notes": [], "said": [],
            "ds_path": None, "stop": False, "tag": f"{job['i'] + 1}/{job['n']} {sp.label()}"}


def _say(state: dict[str, Any], message: str) -> None:
    """A progress line of the current step: printed at once when running here, kept for the client else."""
    state["said"].append(message)
    _log(state["progress"], f"{state['tag']}: {message}")


def _sp_dir(state: dict[str, Any]) -> Path:
    return state_point_dir(state["out"], state["sp"])


def _fail(state: dict[str, Any], stage: str, message: str, trace: str) -> None:
    """Record that ``stage`` failed: the state point is "failed" and its traceback goes to error.txt."""
    res = state["res"]
    res["status"] = "failed"
    res["message"] = f"{stage} failed: {message}"
    state["stop"] = True
    sp_dir = _sp_dir(state)
    sp_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sp_dir / "error.txt", trace)
    _say(state, res["message"])


def _fail_exc(state: dict[str, Any], stage: str, exc: BaseException) -> None:
    _fail(state, stage, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


def _next(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` for the next step (its own progress lines)."""
    return {**state, "said": []}


def _step_reference(job: dict[str, Any]) -> dict[str, Any]:
    """Piece 1 of a state point: the mapped all-atom reference (run, reused or given)."""
    state = _new_state(job)
    res, sp = state["res"], state["sp"]
    given = job["given"]
    if isinstance(given, dict):       # another comparison's reference piece: its data set, if it made one
        given = given.get("ds_path") if not given.get("stop") else None
    sp_dir = _sp_dir(state)
    sp_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        state["ds_path"], res["reference"] = reference_piece(
            sp, state["config"], state["platform"], Path(state["out"]), None if given is None else Path(given),
            state["progress"], state["tag"])
    except Exception as exc:          # recorded, so that the other state points still run
        _fail_exc(state, "the all-atom reference", exc)
        return state
    finally:
        res["timing_s"]["reference"] = time.perf_counter() - t0
    (sp_dir / "error.txt").unlink(missing_ok=True)
    if not state["progress"]:
        state["said"].append(f"all-atom reference {res['reference']['source']} "
                             f"({res['timing_s']['reference']:.0f} s)")
    return state


def _step_cg(state: dict[str, Any]) -> dict[str, Any]:
    """Piece 2 of a state point: the CG run from the last reference frame (run or reused)."""
    state = _next(state)
    if state["stop"]:
        return state
    res = state["res"]
    t0 = time.perf_counter()
    try:
        # a freshly computed reference invalidates any interrupted CG run that started from the old one
        fresh = state["overwrite"] or res["reference"]["source"] == "computed"
        res["cg"] = cg_piece(state["sp"], Path(state["model"]), state["model_sha256"], state["config"],
                             state["platform"], state["ds_path"], Path(state["out"]), fresh, state["progress"],
                             state["tag"])
        if res["cg"]["status"] != "complete":
            res["status"] = "blew_up"
            res["message"] = res["cg"]["error"]
            _say(state, f"the CG run blew up: {res['message']}")
    except Exception as exc:
        _fail_exc(state, "the CG simulation", exc)
    finally:
        res["timing_s"]["cg"] = time.perf_counter() - t0
    if not state["progress"] and res["status"] == "complete":
        state["said"].append(f"CG simulation complete ({res['timing_s']['cg']:.0f} s)")
    return state


def _step_analysis(state: dict[str, Any]) -> dict[str, Any]:
    """Piece 3 of a state point: RDF, ADF, density and pressure of the reference and (if it completed)
    the CG run."""
    state = _next(state)
    if state["stop"] and state["ds_path"] is None:
        return state
    res, sp = state["res"], state["sp"]
    t0 = time.perf_counter()
    _log(state["progress"], f"{state['tag']}: analysis (RDF, ADF, density)")
    try:
        sim_dir = _sp_dir(state) / "cg" if res["status"] == "complete" else None
        _, _, found = analysis_piece(sp, state["config"], state["ds_path"], sim_dir, res, state["curves"])
        for note in found:
            state["notes"].append(note)
            _say(state, "note: " + note)
    except Exception as exc:
        _fail_exc(state, "the analysis", exc)
    finally:
        res["timing_s"]["analysis"] = time.perf_counter() - t0
    if res["status"] == "complete":
        r, a, d = res["rdf"], res["adf"], res["density"]
        msg = f"RDF MAD {r['mad']:.4f}, first peak \u0394r {r['peak_position_error']:+.4f} nm"
        if a["l1"] is not None:
            msg += f", ADF L1 {a['l1']:.3f}"
        if d["relative_error"] is not None:
            msg += f", density {100 * d['relative_error']:+.2f} \u00b1 {100 * (d['relative_error_se'] or 0):.2f} %"
        _say(state, msg)
    return state


def reference_piece(sp: StatePoint, config: HarnessConfig, platform: str, out: Path, given: Path | None = None,
                    progress: bool = False, tag: str = "") -> tuple[Path, dict[str, Any]]:
    """The all-atom reference of one state point, mapped onto beads: run it (or reuse it) and map it.

    :param sp: the state point.
    :param config: the harness settings (already resolved against the model: :func:`resolve_system`).
    :param platform: the OpenMM platform name of the all-atom run.
    :param out: the report folder; the files go to ``state_points/<slug>/``: ``reference-aa.npz``
        (all-atom) and ``reference-cg.npz`` (mapped). A finished run with the same settings is reused
        (:class:`RunCache`).
    :param given: a CG data set to use instead (its state must match ``sp``); nothing is run then.
    :return: (path of the mapped CG data set, its provenance: the ``REFERENCE_KEYS`` entry of the report).
    """
    from .dataset import CGDataset
    from .mapping import map_reference
    from .reference import run_reference

    if given is not None:
        source, ds_path = "given", given
        _log(progress, f"{tag}: all-atom reference: the given data set {given.name}")
    else:
        rho0 = _initial_density(config, sp)
        cutoff = config.reference_cutoff if config.reference_cutoff is not None else aa_cutoff_for_edge(
            box_edge(1, _input_mass_and_count(config)[0], rho0))
        ref_cfg = reference_input(config, temperature=sp.temperature, density=sp.density, pressure=sp.pressure,
                                  cutoff=cutoff, seed=config.seed, platform=platform)
        want = asdict(ref_cfg)
        sp_dir = state_point_dir(out, sp)
        sp_dir.mkdir(parents=True, exist_ok=True)
        aa_path, ds_path = sp_dir / "reference-aa.npz", sp_dir / "reference-cg.npz"
        source = "computed"
        cache = RunCache(config.reuse_references)
        if cache.mapped_reference_done(ds_path, want):
            source = "reused"
            _log(progress, f"{tag}: all-atom reference: reusing {_rel(ds_path, out)} (same settings)")
        else:
            if cache.reference_run_done(aa_path, want):
                source = "reused"
                _log(progress, f"{tag}: all-atom reference: reusing {_rel(aa_path, out)} (same settings)")
            else:
                _log(progress, f"{tag}: all-atom reference: {ref_cfg.ensemble}, {config.n_molecules} molecules, "
                               f"{ref_cfg.equilibration:g} + {ref_cfg.production:g} ps, cutoff {cutoff:g} nm")
                run_reference(ref_cfg, aa_path, overwrite=True, progress=progress)
            map_reference(aa_path, ds_path, config.mapping, overwrite=True)
            _log(progress, f"{tag}: mapped onto beads -> {_rel(ds_path, out)}")
    meta = _dataset_metadata(ds_path)
    ds = CGDataset.load(ds_path)
    src = meta.get("source") or {}
    t = meta.get("time_ps") or []
    info = {"source": source, "dataset": _rel(ds_path, out) if source != "given" else ds_path.name,
            "sha256": _sha256(ds_path), "n_frames": ds.n_frames, "n_beads": ds.n_beads,
            "species": src.get("species"), "forcefield": src.get("forcefield"), "platform": src.get("platform"),
            "config": src.get("config"), "time_ps": [t[0], t[-1]] if t else None}
    return ds_path, info


def cg_piece(sp: StatePoint, model: Path, model_sha256: str, config: HarnessConfig, platform: str, ds_path: Path,
             out: Path, overwrite: bool = False, progress: bool = False, tag: str = "") -> dict[str, Any]:
    """Run (or reuse) the CG simulation of one state point; its status, never raising on a blow-up.

    :param model: the exported model (``.pt``) or pair force field (``.json``); ``model_sha256`` its hash.
    :param ds_path: the mapped reference (from :func:`reference_piece`); the run starts from its last frame.
    :param out: the report folder; the run goes to ``state_points/<slug>/cg/`` (see ``simulate``), with
        ``harness-run.json``, the stamp by which :class:`RunCache` reuses a finished run.
    :param overwrite: never reuse or resume an earlier run (e.g. because the reference was just recomputed).
    :return: the ``CG_KEYS`` entry of the report (``status`` "complete" or "blew_up", ``error``, frames, speed).
    """
    import openmm

    from .simulate import CGSimulationBlowUpError, load_cg_frames, run_cg_simulation

    cfg = replace(config.cg, model=str(model), temperature=sp.temperature, pressure=sp.pressure, seed=config.seed,
                  platform=platform, start_dataset=str(ds_path), start_frame=-1, n_beads=None, density=None)
    model = Path(model)
    sim_dir = state_point_dir(out, sp) / "cg"
    cache = RunCache()
    # the run's settings, with the paths of this machine made relative (model: its file name), so that a
    # moved report folder is still recognised; the files themselves are identified by their hashes
    portable = {**asdict(cfg), "model": model.name, "start_dataset": _rel(ds_path, out)}
    stamp = cache.cg_stamp(model_sha256, ds_path, portable)
    info_path = sim_dir / "simulation.json"
    reuse = not overwrite and cache.cg_run_done(sim_dir, stamp)
    status, error = "complete", None
    if reuse:
        _log(progress, f"{tag}: CG simulation: reusing {_rel(sim_dir, out)} (same model and settings)")
    else:
        cache.forget_cg_run(sim_dir)
        finished_before = info_path.exists()
        info_path.unlink(missing_ok=True)          # so that a run that stops with an error leaves none
        _log(progress, f"{tag}: CG simulation: {cfg.ensemble}, {cfg.equilibration:g} + "
                       f"{cfg.production:g} ps, dt {cfg.timestep * 1000:g} fs, platform {platform}")
        try:
            # overwrite: never resume an interrupted run of an earlier --overwrite'd comparison
            run_cg_simulation(cfg, sim_dir, overwrite=overwrite or finished_before, progress=progress)
        except CGSimulationBlowUpError as exc:
            status, error = "blew_up", str(exc)
        except openmm.OpenMMException as exc:
            # e.g. the model refusing a box that collapsed below twice its cutoff under the barostat
            status, error = "blew_up", f"the CG simulation stopped with an OpenMM error: {str(exc).strip()}"
        cache.record_cg_run(sim_dir, stamp)
    info = {k: None for k in CG_KEYS}
    info.update({"folder": _rel(sim_dir, out), "config": portable})
    if info_path.exists():
        sim = json.loads(info_path.read_text())
        info.update({"n_frames": sim.get("n_frames"), "ns_per_day": sim.get("ns_per_day")})
        if reuse:
            status, error = sim.get("status", "complete"), sim.get("error")
    elif status == "complete":
        status, error = "blew_up", "the CG simulation wrote no output"
    if status == "complete":
        frames, _ = load_cg_frames(sim_dir)
        if len(frames["temperature"]):
            info["temperature_mean_K"] = float(np.mean(frames["temperature"]))
    if error:   # simulate names its output folder by the path it was given: keep the report portable
        error = error.replace(str(sim_dir), _rel(sim_dir, out))
    info.update({"status": status, "error": error})
    return info


def analysis_piece(sp: StatePoint, config: HarnessConfig, ds_path: Path, sim_dir: Path | None = None,
                   res: dict[str, Any] | None = None, curves: dict[str, np.ndarray] | None = None
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """Compare the CG run of one state point with its reference: RDF, ADF, density, pressure.

    :param ds_path: the mapped reference (from :func:`reference_piece`).
    :param sim_dir: the CG simulation folder (``state_points/<slug>/cg``) of a completed run, or None to
        analyse the reference side only (the CG run blew up or failed).
    :param res: the state point's report entry to fill (default: a fresh one); it is filled as the
        analysis goes, so that what was computed before an error stays in it.
    :param curves: the dictionary to fill with the curves (default: a fresh one).
    :return: (the state point's entry, whose ``rdf``, ``adf``, ``density``, ``by_type`` and ``pressure``
        are filled; the curves: ``r`` nm, ``g_ref``, ``g_cg``, ``theta`` degrees, ``p_ref``, ``p_cg``
        1/degree, each (n_bins,), and ``density_*`` g/cm^3, ``pressure_*`` bar, each (n_frames,); notes).
    """
    res = res if res is not None else _empty_result(sp, False)
    curves = curves if curves is not None else {}
    notes = _analyse(sp, config, ds_path, sim_dir, res, curves)
    return res, curves, notes


def state_point_dir(out: str | Path, sp: StatePoint) -> Path:
    """The folder of one state point's runs in a report folder: ``out/state_points/<slug>``."""
    return Path(out) / "state_points" / sp.slug()


class RunCache:
    """Which finished pieces of a comparison may be reused on a rerun (resume).

    A piece is reused only when it finished and was made with the same settings: the all-atom run and
    its mapped data set record their ``ReferenceConfig`` (compared as JSON); a CG run folder holds a
    stamp (``harness-run.json``: the sha256 of the model and of the start data set, and the run's
    portable settings) written after the run ended. With ``reuse_references`` False no reference is
    reused. The only state is that flag, so a piece run in another process builds its own.
    """

    MARKER = "harness-run.json"

    def __init__(self, reuse_references: bool = True):
        self.reuse_references = reuse_references

    def mapped_reference_done(self, ds_path: Path, settings: dict[str, Any]) -> bool:
        """Whether the mapped data set ``ds_path`` exists and came from an all-atom run with ``settings``."""
        return bool(self.reuse_references and ds_path.exists()
                    and _same_json((_dataset_metadata(ds_path).get("source") or {}).get("config"), settings))

    def reference_run_done(self, aa_path: Path, settings: dict[str, Any]) -> bool:
        """Whether the all-atom reference ``aa_path`` exists, loads, and was run with ``settings``."""
        from .reference import load_reference

        if not (self.reuse_references and aa_path.exists()):
            return False
        try:
            return _same_json(load_reference(aa_path).metadata.get("config"), settings)
        except Exception:
            return False

    @staticmethod
    def cg_stamp(model_sha256: str, start_dataset: Path, settings: dict[str, Any]) -> dict[str, Any]:
        """What identifies a CG run: the model's and the start data set's sha256 and the run settings."""
        return {"model_sha256": model_sha256, "start_sha256": _sha256(start_dataset), "config": settings}

    def cg_run_done(self, sim_dir: Path, stamp: dict[str, Any]) -> bool:
        """Whether ``sim_dir`` holds a finished CG run (``simulation.json``) with this stamp."""
        marker = sim_dir / self.MARKER
        return ((sim_dir / "simulation.json").exists() and marker.exists()
                and _same_json(json.loads(marker.read_text()), stamp))

    def forget_cg_run(self, sim_dir: Path) -> None:
        """Remove the stamp before a CG run starts (an interrupted run must not look finished)."""
        (sim_dir / self.MARKER).unlink(missing_ok=True)

    def record_cg_run(self, sim_dir: Path, stamp: dict[str, Any]) -> None:
        """Write the stamp after a CG run ended (completed or blew up)."""
        write_json_atomic(sim_dir / self.MARKER, stamp)


def _analyse(sp: StatePoint, config: HarnessConfig, ds_path: Path, sim_dir: Path | None, res: dict[str, Any],
             curves: dict[str, np.ndarray]) -> list[str]:
    """Fill ``res``'s rdf/adf/density entries, their error bars and ``curves``; returns notes (e.g. why there is
    no ADF)."""
    sums_ref: dict[str, Any] = {}
    sums_cg: dict[str, Any] = {}
    notes = _analyse_metrics(sp, config, ds_path, sim_dir, res, curves, sums_ref, sums_cg)
    return notes + _uncertainty(sp, config, sums_ref, sums_cg, res, curves)


def _uncertainty(sp: StatePoint, config: HarnessConfig, sums_ref: dict[str, Any], sums_cg: dict[str, Any],
                 res: dict[str, Any], curves: dict[str, np.ndarray] | None = None) -> list[str]:
    """Block-bootstrap standard errors of every metric and the noise floors of the distances
    (``analysis.comparison_uncertainty``) into ``res``'s new ``*_se`` / ``*_noise_floor`` keys and its
    ``uncertainty`` entry; returns notes (too few frames for independent blocks, ...)."""
    from . import analysis as A

    if not config.bootstrap_resamples or not sums_ref:
        return []
    try:
        unc = A.comparison_uncertainty(sums_ref, sums_cg or None, n_resamples=config.bootstrap_resamples,
                                       seed=config.seed, min_blocks=config.bootstrap_min_blocks)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:   # the metrics stand without error bars
        res["uncertainty"]["notes"] = [f"no error bars: {exc}"]
        return [f"{sp.label()}: no error bars: {exc}"]
    res["uncertainty"].update(method="block bootstrap", n_resamples=unc["n_resamples"], seed=unc["seed"],
                              n_sigma=N_SIGMA, blocks=unc["blocks"], noise_floor_method=unc["floor_method"],
                              noise_floor_scale=unc["floor_scale"], notes=unc["notes"])
    for name, prefix in (("rdf", "g"), ("adf", "p")):
        for side, tag in (("reference", "ref"), ("cg", "cg")):
            se = unc["curve_se"].get(name, {}).get(side)
            if curves is not None and se is not None:
                curves[f"{prefix}_{tag}_se"] = se
    bt = res["by_type"]
    for name, m in unc["metrics"].items():
        if name == "density":
            res["density"]["abs_error_se_bootstrap"] = m["se"].get("abs_error")
            res["density"]["relative_error_se_bootstrap"] = m["se"].get("relative_error")
            continue
        kind, _, part = name.partition(" ")
        target = (res[kind] if not part else
                  bt[kind].get(part) if isinstance(bt[kind].get(part), dict) else None)
        if target is None:
            continue
        allowed = RDF_UNCERTAINTY_KEYS if kind == "rdf" else ADF_UNCERTAINTY_KEYS
        for key, value in m["se"].items():
            if f"{key}_se" in allowed:
                target[f"{key}_se"] = value
        for key, value in m["noise_floor"].items():
            if f"{key}_noise_floor" in allowed:
                target[f"{key}_noise_floor"] = value
                target[f"{key}_noise_floor_se"] = m["noise_floor_se"].get(key)
    return [f"{sp.label()}: {note}" for note in unc["notes"]]


def _analyse_metrics(sp: StatePoint, config: HarnessConfig, ds_path: Path, sim_dir: Path | None,
                     res: dict[str, Any], curves: dict[str, np.ndarray], sums_ref: dict[str, Any],
                     sums_cg: dict[str, Any]) -> list[str]:
    """The metrics of ``_analyse``; fills ``sums_ref`` / ``sums_cg`` with the per-frame sums of every curve
    (``analysis.FrameSums``, named as ``analysis.comparison_uncertainty`` expects)."""
    from . import analysis as A
    from .dataset import CGDataset
    from .simulate import load_cg_frames

    notes: list[str] = []
    ds = CGDataset.load(ds_path)
    cg = None
    if sim_dir is not None:
        cg, _ = load_cg_frames(sim_dir)
        if len(cg["positions"]) == 0:
            cg = None
    # RDF on one grid: up to the smaller minimum-image radius (half the box edge) of the two runs
    r_max = A.minimum_image_radius(ds.boxes)
    if cg is not None:
        r_max = min(r_max, A.minimum_image_radius(cg["boxes"]))
    bw = config.rdf_bin_width
    sums_ref["rdf"] = A.rdf_frames(ds.positions, ds.boxes, r_max=r_max, bin_width=bw)
    r, g_ref = sums_ref["rdf"].x, sums_ref["rdf"].curve()
    ref_rho = ds.densities()
    curves.update(r=r, g_ref=g_ref, density_ref=ref_rho)
    res["rdf"].update(r_max_nm=r_max, bin_width_nm=bw)
    # ADF shell: the first minimum of the reference g(r), unless the configuration fixes it
    shell = None
    if config.adf_shell_cutoff is not None:
        if config.adf_shell_cutoff > r_max:
            notes.append(f"{sp.label()}: no ADF: adf_shell_cutoff {config.adf_shell_cutoff} nm exceeds the "
                         f"minimum-image radius {r_max:.3f} nm")
        else:
            shell = float(config.adf_shell_cutoff)
    else:
        try:
            g_shell = g_ref
            if len(np.unique(ds.bead_residues)) < ds.n_beads:
                # multi-bead molecules: the bond peaks would set the "first minimum"; take the shell from the
                # intermolecular RDF instead
                _, g_shell = A.rdf(ds.positions, ds.boxes, r_max=r_max, bin_width=bw, molecules=ds.bead_residues)
            shell = A.first_minimum(r, g_shell)
        except ValueError as exc:
            notes.append(f"{sp.label()}: no ADF: {exc}")
    if shell is not None:
        sums_ref["adf"] = A.adf_frames(ds.positions, ds.boxes, shell, n_bins=config.adf_bins)
        theta, p_ref = sums_ref["adf"].x, sums_ref["adf"].curve()
        curves.update(theta=theta, p_ref=p_ref)
        res["adf"].update(shell_cutoff_nm=shell, n_bins=config.adf_bins)
    res["by_type"]["composition"] = {name: int(np.sum(ds.bead_types == t)) for t, name in enumerate(ds.type_names)}
    if cg is not None and len(ds.type_names) > 1:
        _analyse_by_type(ds, cg, r_max, bw, shell, config.adf_bins, res["by_type"], curves, sums_ref, sums_cg)
    dens = res["density"]
    pres = res["pressure"]
    if ds.pressure is not None:
        m, se, nb = A.series_mean_se(ds.pressure, config.density_blocks)
        pres.update(ref_mean=m, ref_se=se, n_blocks=nb)
        curves["pressure_ref"] = ds.pressure
    if sp.ensemble == "NVT":
        dens.update(ref_mean=float(np.mean(ref_rho)), ref_se=0.0)
    else:
        m, se, nb = A.series_mean_se(ref_rho, config.density_blocks)
        dens.update(ref_mean=m, ref_se=se, n_blocks=nb)
        sums_ref["density"] = A.FrameSums.of_series(ref_rho)
    if cg is None:
        return notes

    sums_cg["rdf"] = A.rdf_frames(cg["positions"], cg["boxes"], r_max=r_max, bin_width=bw)
    r_cg, g_cg = sums_cg["rdf"].x, sums_cg["rdf"].curve()
    if r_cg.shape != r.shape or not np.allclose(r_cg, r):
        raise RuntimeError("the reference and CG RDF grids differ")
    cg_rho = np.asarray(cg["density"], dtype=np.float64)
    curves.update(g_cg=g_cg, density_cg=cg_rho)
    if "pressure" in cg:
        m, se, nb = A.series_mean_se(cg["pressure"], config.density_blocks)
        pres.update(cg_mean=m, cg_se=se)
        curves["pressure_cg"] = np.asarray(cg["pressure"], dtype=np.float64)
        if pres["ref_mean"] is not None:
            pres["difference"] = m - pres["ref_mean"]
            if se is not None and pres["ref_se"] is not None:
                pres["difference_se"] = math.hypot(se, pres["ref_se"])
    res["rdf"].update(A.rdf_metrics(r, g_ref, g_cg))
    if shell is not None:
        sums_cg["adf"] = A.adf_frames(cg["positions"], cg["boxes"], shell, n_bins=config.adf_bins)
        p_cg = sums_cg["adf"].curve()
        curves["p_cg"] = p_cg
        if p_cg.sum() > 0 and curves["p_ref"].sum() > 0:
            res["adf"]["l1"] = A.adf_l1(curves["p_ref"], p_cg, curves["theta"])
        else:
            notes.append(f"{sp.label()}: no ADF distance: a run has no bead with two neighbours in the shell")
    if sp.ensemble == "NVT":
        dens.update(cg_mean=float(np.mean(cg_rho)), cg_se=0.0)
        return notes
    m, se, nb = A.series_mean_se(cg_rho, config.density_blocks)
    sums_cg["density"] = A.FrameSums.of_series(cg_rho)
    dens.update(cg_mean=m, cg_se=se, n_blocks=min(nb, dens["n_blocks"]) if nb and dens["n_blocks"] else None)
    for side, series in (("all-atom", ref_rho), ("CG", cg_rho)):
        drift = A.block_drift(series, config.density_blocks)
        if drift is not None:
            notes.append(f"{sp.label()}: the {side} density is still drifting (block means {drift[0]:.3f} -> "
                         f"{drift[1]:.3f} g/cm^3, steadily); its mean and error bar are not converged: run longer")
    dens.update(A.density_error(m, se or 0.0, dens["ref_mean"], dens["ref_se"] or 0.0))
    if se is None or dens["ref_se"] is None:
        dens["abs_error_se"] = dens["relative_error_se"] = dens["z"] = None
    return notes


def _analyse_by_type(ds: Any, cg: dict[str, np.ndarray], r_max: float, bw: float, shell: float | None, adf_bins: int,
                     out: dict[str, Any], curves: dict[str, np.ndarray], sums_ref: dict[str, Any] | None = None,
                     sums_cg: dict[str, Any] | None = None) -> None:
    """Partial RDFs of every bead-type pair and ADFs per central bead type (reference vs CG); the CG run
    keeps the bead order and types of the reference data set it started from. Their per-frame sums go into
    ``sums_ref`` / ``sums_cg`` as "rdf A-B" and "adf A"."""
    from . import analysis as A

    sums_ref = {} if sums_ref is None else sums_ref
    sums_cg = {} if sums_cg is None else sums_cg

    types = ds.bead_types
    if cg["positions"].shape[1] != len(types):
        raise RuntimeError("the CG run has a different number of beads than its reference")
    names = ds.type_names
    for a in range(len(names)):
        for b in range(a, len(names)):
            na, nb = int(np.sum(types == a)), int(np.sum(types == b))
            if (na < 2 if a == b else na * nb == 0):
                continue
            key = f"{names[a]}-{names[b]}"
            sums_ref[f"rdf {key}"] = A.rdf_frames(ds.positions, ds.boxes, r_max=r_max, bin_width=bw, types=types,
                                                  pair=(a, b))
            sums_cg[f"rdf {key}"] = A.rdf_frames(cg["positions"], cg["boxes"], r_max=r_max, bin_width=bw, types=types,
                                                 pair=(a, b))
            r, g_ref, g_cg = sums_ref[f"rdf {key}"].x, sums_ref[f"rdf {key}"].curve(), sums_cg[f"rdf {key}"].curve()
            curves[f"g_ref_{key}"], curves[f"g_cg_{key}"] = g_ref, g_cg
            try:
                out["rdf"][key] = A.rdf_metrics(r, g_ref, g_cg)
            except ValueError as exc:        # e.g. no peak above 1 in a sparse partial RDF
                out["rdf"][key] = {"mad": float(np.mean(np.abs(g_cg - g_ref))), "note": str(exc)}
    if shell is None:
        return
    for t, name in enumerate(names):
        sums_ref[f"adf {name}"] = A.adf_frames(ds.positions, ds.boxes, shell, n_bins=adf_bins, types=types, centre=t)
        sums_cg[f"adf {name}"] = A.adf_frames(cg["positions"], cg["boxes"], shell, n_bins=adf_bins, types=types,
                                              centre=t)
        theta, p_ref, p_cg = sums_ref[f"adf {name}"].x, sums_ref[f"adf {name}"].curve(), sums_cg[f"adf {name}"].curve()
        curves[f"p_ref_{name}"], curves[f"p_cg_{name}"] = p_ref, p_cg
        l1 = A.adf_l1(p_ref, p_cg, theta) if p_ref.sum() > 0 and p_cg.sum() > 0 else None
        out["adf"][name] = {"l1": l1, "shell_cutoff_nm": shell}


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
_CURVE_NAMES = ("r", "g_ref", "g_cg", "theta", "p_ref", "p_cg", "density_ref", "density_cg", "pressure_ref",
                "pressure_cg", "g_ref_se", "g_cg_se", "p_ref_se", "p_cg_se")


def _write_curves(out: Path, points: list[StatePoint], curves: list[dict[str, np.ndarray]]) -> dict[str, str]:
    arrays: dict[str, np.ndarray] = {"labels": np.array([p.label() for p in points], dtype=str),
                                     "slugs": np.array([p.slug() for p in points], dtype=str)}
    for i, cur in enumerate(curves):
        for k, v in cur.items():
            arrays[f"sp{i}_{k}"] = np.asarray(v, dtype=np.float64)
    save_npz_atomic(out / "curves.npz", **arrays)
    return {"curves": "curves.npz"}


def load_curves(folder: str | Path) -> dict[str, dict[str, np.ndarray | None]]:
    """The curves of a report folder: {state-point label -> {r, g_ref, g_cg, theta, p_ref, p_cg,
    density_ref, density_cg}}, None for a curve that does not exist (in state-point order)."""
    with np.load(Path(folder) / "curves.npz", allow_pickle=False) as z:
        labels = [str(s) for s in z["labels"]]
        return {label: {k: (z[f"sp{i}_{k}"] if f"sp{i}_{k}" in z.files else None) for k in _CURVE_NAMES}
                for i, label in enumerate(labels)}


def load_report(folder: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a report folder."""
    path = Path(folder) / "report.json"
    if not path.exists():
        raise MissingInputError(f"no comparison report in '{folder}' (expected {path.name}); make one with "
                                "'openmm-cgnn compare'")
    return json.loads(path.read_text())
