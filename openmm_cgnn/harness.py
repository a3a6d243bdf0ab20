"""Comparison harness: a CG model against all-atom references at several state points.

For every state point the harness

1. gets the all-atom reference: it runs ``reference.run_reference`` and ``mapping.map_reference``
   (or reuses a CG data set given by the user whose ``metadata.state`` matches, or one that an
   earlier harness run with the same settings left in the output folder);
2. runs the CG model there with ``simulate.run_cg_simulation``, on the same OpenMM platform,
   starting from the last mapped reference frame;
3. compares the two with ``analysis``: the bead-bead RDF on one r grid up to the minimum-image
   radius (half the box edge), the first-shell ADF with the shell cutoff at the first minimum of
   the *reference* RDF (or at ``HarnessConfig.adf_shell_cutoff``), and (NPT) the block-averaged
   density on both sides.

A CG run that blows up (or stops with an OpenMM error) is recorded with ``status = "blew_up"``
and its message; a state point the harness could not run at all (e.g. the all-atom run failed) is
recorded as ``"failed"``. Neither stops the other state points.

Use::

    from openmm_cgnn.harness import HarnessConfig, compare, summary_lines
    report = compare("model.pt", "300K:0.787g/cm3,400K:0.787g/cm3,300K:1bar", "report/",
                     HarnessConfig.preset("default"))
    print("\n".join(summary_lines(report)))

or ``openmm-cgnn compare --model model.pt --state-points ... --out report/``. The model may also be
a pair force field (``.json`` from ``openmm_cgnn.baselines``). ``notebooks/analysis.ipynb`` reads
a report folder back (``load_report``, ``load_curves``).

State points
------------
``"300K:0.787g/cm3"`` is NVT at 300 K and 0.787 g/cm^3 (``g/cm^3`` and ``g/cc`` are accepted
too); ``"300K:1bar"`` is NPT at 300 K and 1 bar (``atm`` is accepted and converted to bar). A list
is comma-separated: ``"300K:0.787g/cm3,400K:0.787g/cm3,300K:1bar"``. A TOML file holds either or
both of::

    state_points = ["300K:0.787g/cm3", "300K:1bar"]

    [[state_point]]
    temperature = 350.0   # K
    density = 0.76        # g/cm^3 -> NVT

    [[state_point]]
    temperature = 350.0
    pressure = 1.0        # bar -> NPT

Outputs (in ``out_dir``; every file is written atomically)
----------------------------------------------------------
================  ============================================================================
file              content
================  ============================================================================
config.json       the :class:`HarnessConfig` used (load it with ``HarnessConfig.from_json``)
report.json       every metric, state point, provenance (keys below)
report.md         the summary, a Markdown table of the metrics, and the three plots
rdf.png           g(r) of reference and CG, one panel per state point
adf.png           first-shell angle distribution P(theta), one panel per state point
density.png       density against temperature, all-atom and CG, for the NPT state points
                  (one more ``density-<P>bar.png`` per further pressure; a note if none is NPT)
curves.npz        the curves, for replotting (keys below)
state_points/     one folder per state point (``StatePoint.slug()``): reference-aa.npz (all-atom
                  reference), reference-cg.npz (mapped), cg/ (the CG simulation folder, see
                  ``simulate``; trajectory.dcd + topology.pdb for mdtraj; harness-run.json, the
                  model and start-frame hashes that let a resumed comparison reuse it), error.txt
                  (the traceback) when the state point failed
================  ============================================================================

``report.json`` keys (``REPORT_KEYS``): ``format``, ``version``, ``created``, ``config`` (the
HarnessConfig), ``platform`` (OpenMM platform name of every run), ``device`` (CUDA device name
or CPU model), ``versions``, ``model`` (provenance from the exported metadata: ``MODEL_KEYS``),
``state_points`` (one entry per state point, below), ``summary`` (``n_state_points``,
``n_complete``, ``n_blew_up``, ``n_failed``, ``lines``: the three lines of :func:`summary_lines`),
``files`` (output file names), ``notes`` (warnings: an unused reference data set, a density
still drifting, no ADF shell found),
``units``, ``timing_s`` (``total``).

Each ``state_points`` entry (``STATE_POINT_KEYS``): ``label`` (e.g. "300K:1bar"), ``slug``,
``title``, ``state`` (``temperature_K``, ``density_g_cm3``, ``pressure_bar``, ``ensemble``),
``status`` ("complete", "blew_up" or "failed"), ``message`` (None when complete),
``in_training`` (the model was trained at this state point), ``reference`` (data provenance:
``REFERENCE_KEYS``), ``cg`` (``CG_KEYS``), ``rdf`` (``RDF_KEYS``: the keys of
``analysis.rdf_metrics`` plus ``r_max_nm`` and ``bin_width_nm``), ``adf`` (``ADF_KEYS``:
``shell_cutoff_nm``, ``n_bins``, ``l1``), ``density`` (``DENSITY_KEYS``: ``ensemble``, ``fixed``
(True for NVT: the density is imposed), ``ref_mean``, ``ref_se``, ``cg_mean``, ``cg_se`` in
g/cm^3 (block averages for NPT), ``n_blocks`` and the keys of ``analysis.density_error``:
``abs_error``, ``abs_error_se``, ``relative_error``, ``relative_error_se``, ``z``; None for NVT),
``by_type`` (``composition``: bead type -> number of beads of the reference; with several bead
types also ``rdf``: "A-B" -> the ``analysis.rdf_metrics`` of the partial RDF of that type pair, and
``adf``: "A" -> ``l1`` of the ADF of angles centred on a bead of type A, in the same shell),
``pressure`` (``PRESSURE_KEYS``: block-averaged mean and standard error, in bar, of the instantaneous
pressure recorded with the all-atom frames (``ref_*``) and the CG frames (``cg_*``), both from
OpenMM's finite-difference estimator, and ``difference`` = CG - all-atom with its error; None where a
run recorded none), ``timing_s`` (``reference``, ``cg``, ``analysis``). A metric that could not be computed (the CG run
blew up, ...) is None; every key is always present.

``curves.npz``: ``labels`` (S,) str (the state-point labels, in order), ``slugs`` (S,) str and,
for state point i, ``sp{i}_r`` (nm), ``sp{i}_g_ref``, ``sp{i}_g_cg``, ``sp{i}_theta`` (degrees),
``sp{i}_p_ref``, ``sp{i}_p_cg`` (1/degree), ``sp{i}_density_ref``, ``sp{i}_density_cg``
(per-frame densities, g/cm^3), ``sp{i}_pressure_ref``, ``sp{i}_pressure_cg`` (per-frame pressures, bar). Curves that do not exist (no reference, CG blew up) are absent;
:func:`load_curves` returns them by label with None for the missing ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
import traceback
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CGNNError
from .files import OutputExistsError, cpu_model, read_config_file, save_npz_atomic, versions, write_json_atomic, write_text_atomic
from .files import check_writable, make_output_dir
from . import validation as V
from .errors import ConfigError, InputFileError, MissingInputError

__all__ = [
    "StatePoint", "StatePointError", "parse_state_point", "parse_state_points", "load_state_points",
    "HarnessConfig", "compare", "summary_lines", "metrics_table_markdown", "load_report", "load_curves",
    "device_name", "REPORT_KEYS", "STATE_POINT_KEYS", "MODEL_KEYS", "REFERENCE_KEYS", "CG_KEYS", "RDF_KEYS",
    "ADF_KEYS", "DENSITY_KEYS", "PRESSURE_KEYS", "REPORT_FORMAT",
]

REPORT_FORMAT = "openmm-cgnn/comparison-report"
REPORT_VERSION = 1
REPORT_KEYS = ("format", "version", "created", "config", "platform", "device", "versions", "model",
               "state_points", "summary", "files", "notes", "units", "timing_s")
STATE_POINT_KEYS = ("label", "slug", "title", "state", "status", "message", "in_training", "reference", "cg",
                    "rdf", "adf", "density", "by_type", "pressure", "timing_s")
MODEL_KEYS = ("file", "sha256", "kind", "label", "format", "type_names", "cutoff_nm", "network_class", "tensor_order",
              "dtype", "prior", "training_state_points", "training_datasets", "trained")
REFERENCE_KEYS = ("source", "dataset", "sha256", "n_frames", "n_beads", "species", "forcefield", "platform",
                  "config", "time_ps")
CG_KEYS = ("folder", "status", "error", "n_frames", "ns_per_day", "temperature_mean_K", "config")
RDF_KEYS = ("mad", "max_abs_dev", "rmsd", "peak_r_ref", "peak_r_cg", "peak_g_ref", "peak_g_cg",
            "peak_position_error", "peak_height_error", "r_max_nm", "bin_width_nm")
ADF_KEYS = ("shell_cutoff_nm", "n_bins", "l1")
DENSITY_KEYS = ("ensemble", "fixed", "ref_mean", "ref_se", "cg_mean", "cg_se", "n_blocks", "abs_error",
                "abs_error_se", "relative_error", "relative_error_se", "z")
PRESSURE_KEYS = ("ref_mean", "ref_se", "cg_mean", "cg_se", "difference", "difference_se", "n_blocks")
UNITS = {"temperature": "K", "density": "g/cm^3", "pressure": "bar", "distance": "nm", "angle": "degree",
         "adf": "1/degree", "time": "ps", "timing": "s"}

BAR_PER_ATM = 1.01325
_T_TOL = 0.05            # K
_RHO_TOL = 5e-4          # g/cm^3
_P_TOL_REL = 1e-3


# ---------------------------------------------------------------------------------------------
# state points
# ---------------------------------------------------------------------------------------------
class StatePointError(ConfigError):
    """A state point (or a list or file of them) cannot be read."""


def _num(x: float) -> str:
    return f"{float(x):g}"


@dataclass(frozen=True)
class StatePoint:
    """A thermodynamic state: NVT (temperature K, density g/cm^3) or NPT (temperature K, pressure bar)."""

    temperature: float
    density: float | None = None
    pressure: float | None = None

    def __post_init__(self) -> None:
        V.temperature(self.temperature, error=StatePointError)
        if (self.density is None) == (self.pressure is None):
            raise StatePointError("a state point needs exactly one of density (NVT) or pressure (NPT)")
        if self.density is not None:
            V.density(self.density, error=StatePointError)
        V.pressure(self.pressure, error=StatePointError)

    @property
    def ensemble(self) -> str:
        return "NPT" if self.pressure is not None else "NVT"

    def label(self) -> str:
        """The canonical text form, which ``parse_state_point`` reads back: "300K:0.787g/cm3", "300K:1bar"."""
        if self.pressure is not None:
            return f"{_num(self.temperature)}K:{_num(self.pressure)}bar"
        return f"{_num(self.temperature)}K:{_num(self.density)}g/cm3"

    def title(self) -> str:
        """A human title for plots and tables: "300 K, 0.787 g/cm\u00b3 (NVT)"."""
        second = f"{_num(self.pressure)} bar" if self.pressure is not None else f"{_num(self.density)} g/cm\u00b3"
        return f"{_num(self.temperature)} K, {second} ({self.ensemble})"

    def slug(self) -> str:
        """A file-name-safe form: "300K_0.787gcm3", "300K_1bar"."""
        second = f"{_num(self.pressure)}bar" if self.pressure is not None else f"{_num(self.density)}gcm3"
        return f"{_num(self.temperature)}K_{second}"

    def to_dict(self) -> dict[str, Any]:
        """The state in the form data sets and models record it (``metadata.state``)."""
        return {"temperature_K": float(self.temperature),
                "density_g_cm3": None if self.density is None else float(self.density),
                "pressure_bar": None if self.pressure is None else float(self.pressure),
                "ensemble": self.ensemble}

    def matches(self, state: dict[str, Any] | None) -> bool:
        """Whether a recorded state (``{"temperature_K", "density_g_cm3", "pressure_bar", ...}``) is this one
        (within 0.05 K, 5e-4 g/cm^3, 0.1 % in pressure)."""
        if not state or state.get("temperature_K") is None:
            return False
        if abs(float(state["temperature_K"]) - self.temperature) > _T_TOL:
            return False
        p = state.get("pressure_bar")
        if self.pressure is not None:
            return p is not None and abs(float(p) - self.pressure) <= _P_TOL_REL * self.pressure + 1e-9
        rho = state.get("density_g_cm3")
        return p is None and rho is not None and abs(float(rho) - self.density) <= _RHO_TOL


_SYNTAX = "TEMPERATURE:DENSITY (NVT, e.g. 300K:0.787g/cm3) or TEMPERATURE:PRESSURE (NPT, e.g. 300K:1bar)"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_DENSITY_UNITS = ("g/cm3", "g/cm^3", "g/cc", "g/ml")
_PRESSURE_UNITS = {"bar": 1.0, "atm": BAR_PER_ATM}


def parse_state_point(text: str) -> StatePoint:
    """Read one state point: "300K:0.787g/cm3" (NVT) or "300K:1bar" / "300K:1atm" (NPT).

    Raises StatePointError with the accepted syntax when the text does not follow it.
    """
    raw = str(text).strip()
    parts = raw.split(":")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise StatePointError(f"state point '{raw}' does not read as {_SYNTAX}")
    t_text, v_text = parts[0].strip().replace(" ", ""), parts[1].strip().replace(" ", "")
    m = re.fullmatch(rf"({_NUMBER})(K?)", t_text, flags=re.IGNORECASE)
    if m is None:
        raise StatePointError(f"state point '{raw}': temperature '{t_text}' must be a number of kelvin such as 300K")
    if not m.group(2):
        raise StatePointError(f"state point '{raw}': temperature '{t_text}' needs its unit, e.g. {t_text}K")
    temperature = float(m.group(1))
    m = re.fullmatch(rf"({_NUMBER})(.*)", v_text)
    if m is None:
        raise StatePointError(f"state point '{raw}': '{v_text}' must be a density such as 0.787g/cm3 "
                              "or a pressure such as 1bar")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise StatePointError(f"state point '{raw}': '{v_text}' needs a unit: g/cm3 (NVT density) "
                              "or bar / atm (NPT pressure)")
    if unit in _DENSITY_UNITS:
        return StatePoint(temperature, density=value)
    if unit in _PRESSURE_UNITS:
        return StatePoint(temperature, pressure=value * _PRESSURE_UNITS[unit])
    raise StatePointError(f"state point '{raw}': unknown unit '{m.group(2)}'; use g/cm3 for a density (NVT) "
                          "or bar / atm for a pressure (NPT)")


def parse_state_points(text: str | Sequence[str | StatePoint] | StatePoint) -> list[StatePoint]:
    """State points from a comma-separated string, a TOML file path, or a list of strings/StatePoints.

    Raises StatePointError for bad syntax, an empty list or a state point given twice.
    """
    if isinstance(text, StatePoint):
        items: list[Any] = [text]
    elif isinstance(text, (str, Path)):
        s = str(text).strip()
        if s.lower().endswith(".toml") or (Path(s).is_file() and ":" not in Path(s).name):
            return load_state_points(s)
        items = [p for p in re.split(r"[,;]", s) if p.strip()]
    else:
        items = list(text)
    points = [p if isinstance(p, StatePoint) else parse_state_point(p) for p in items]
    if not points:
        raise StatePointError(f"no state points given; give a comma-separated list of {_SYNTAX}")
    seen: set[str] = set()
    for p in points:
        if p.label() in seen:
            raise StatePointError(f"state point {p.label()} is given twice")
        seen.add(p.label())
    return points


def load_state_points(path: str | Path) -> list[StatePoint]:
    """State points from a TOML file (format in the module docstring)."""
    path = Path(path)
    data = read_config_file(path, "state-point file", StatePointError, fmt="toml")
    unknown = sorted(set(data) - {"state_points", "state_point"})
    if unknown:
        raise StatePointError(f"state-point file '{path}': unknown keys {unknown}; use 'state_points = [...]' "
                              "and/or [[state_point]] tables")
    items: list[Any] = []
    strings = data.get("state_points", [])
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise StatePointError(f"state-point file '{path}': state_points must be a list of strings such as "
                              "\"300K:1bar\"")
    items.extend(strings)
    tables = data.get("state_point", [])
    if not isinstance(tables, list):
        raise StatePointError(f"state-point file '{path}': write state points as [[state_point]] tables")
    for k, t in enumerate(tables):
        bad = sorted(set(t) - {"temperature", "density", "pressure"})
        if bad or "temperature" not in t:
            raise StatePointError(f"state-point file '{path}', [[state_point]] number {k + 1}: needs 'temperature' "
                                  f"(K) and one of 'density' (g/cm^3) or 'pressure' (bar)"
                                  + (f"; unknown keys {bad}" if bad else ""))
        try:
            items.append(StatePoint(float(t["temperature"]),
                                    density=None if t.get("density") is None else float(t["density"]),
                                    pressure=None if t.get("pressure") is None else float(t["pressure"])))
        except (TypeError, ValueError) as exc:
            raise StatePointError(f"state-point file '{path}', [[state_point]] number {k + 1}: {exc}") from None
    if not items:
        raise StatePointError(f"state-point file '{path}' holds no state points")
    return parse_state_points(items)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class HarnessConfig:
    """Every setting of a comparison. Units: ps, nm, K; ``aa_*`` for the all-atom reference runs,
    ``cg_*`` for the CG runs. See :meth:`preset` for "tiny" (tests), "default" (the CPU demo) and "full"
    (a GPU study)."""

    name: str = "default"                # the preset it started from ("tiny", "default") or your own name
    species: str | None = None           # built-in liquid; None: the liquid the model was trained on
    n_molecules: int = 64                # molecules of a built-in species (other inputs keep their counts)
    system: dict | None = None           # the all-atom input instead of a species: keys components, box,
    #                                      system_xml, forcefield_files (as ReferenceConfig); None: the model's
    mapping: dict | None = None          # the CG map (residue -> beads); None: the model's training map
    # all-atom reference
    aa_cutoff: float | None = None       # nm; None: min(1.0, 0.46 x initial box edge) per state point
    aa_forcefield: str | None = None     # None: the species' default
    aa_timestep: float = 0.002
    aa_equilibration: float = 10.0
    aa_production: float = 50.0
    aa_frame_interval: float = 0.5
    # CG simulation
    cg_timestep: float = 0.002
    cg_friction: float = 1.0             # 1/ps
    cg_equilibration: float = 5.0
    cg_production: float = 30.0
    cg_frame_interval: float = 0.25
    cg_cuda_graphs: bool | None = None   # CUDA graphs for the model: None = on for the CUDA platform, off elsewhere
    cg_mts: int = 1                      # multiple time stepping: the network every cg_mts steps of cg_timestep
    cg_mts_fast: str = "prior"           # the fast force of the inner steps: "prior" or a pair force field (.json)
    # analysis
    rdf_bin_width: float = 0.005         # nm
    adf_bins: int = 60                   # over 0..180 degrees
    adf_shell_cutoff: float | None = None  # nm; None: the first minimum of each reference g(r)
    density_blocks: int = 5              # blocks for the NPT density mean and standard error
    # common
    platform: str | None = None          # None: CUDA if available, else CPU (the same for AA and CG)
    torch_threads: int | None = 1        # torch intra-op threads while comparing (None: torch's default);
    #                                      1 is several times faster for small CPU systems on busy cores
    seed: int = 2024
    reuse_references: bool = True        # reuse all-atom runs of an earlier harness run with the same settings

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (the rules of :mod:`openmm_cgnn.validation`, the same as those of the
        reference and CG runs); ConfigError names the first bad one."""
        V.positive(self.aa_equilibration, "aa_equilibration", "ps")
        V.frame_schedule(self.aa_timestep, self.aa_equilibration, self.aa_production, self.aa_frame_interval, "aa_")
        V.frame_schedule(self.cg_timestep, self.cg_equilibration, self.cg_production, self.cg_frame_interval, "cg_")
        V.positive(self.cg_friction, "cg_friction", "1/ps")
        V.positive(self.rdf_bin_width, "rdf_bin_width", "nm")
        if self.aa_cutoff is not None:
            V.cutoff(self.aa_cutoff, "aa_cutoff")
        V.integer(self.n_molecules, "n_molecules", 2)
        V.integer(self.adf_bins, "adf_bins", 3)
        if self.adf_shell_cutoff is not None:
            V.positive(self.adf_shell_cutoff, "adf_shell_cutoff", "nm")
        V.integer(self.density_blocks, "density_blocks", 2)
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
        V.integer(self.cg_mts, "cg_mts", 1)
        outer = self.cg_mts * self.cg_timestep
        if self.cg_mts > 1 and abs(self.cg_frame_interval / outer - round(self.cg_frame_interval / outer)) > 1e-6:
            raise ConfigError(f"cg_frame_interval ({self.cg_frame_interval:g} ps) must be a whole number of MTS outer "
                              f"steps (cg_mts x cg_timestep = {outer:g} ps)", "cg_frame_interval")
        if self.cg_cuda_graphs is not None and not isinstance(self.cg_cuda_graphs, bool):
            raise ConfigError(f"cg_cuda_graphs must be true, false or null (automatic), got {self.cg_cuda_graphs!r}",
                              "cg_cuda_graphs")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "HarnessConfig":
        """``"tiny"``: seconds per state point, for tests (64 molecules, 1.5 ps all-atom and 0.6 ps CG
        runs, 20 frames each; the numbers mean little). ``"default"``: the CPU demo, a few minutes per
        state point on 2 CPU cores for 64 molecules (10 + 50 ps all-atom with 100 frames, 5 + 30 ps
        CG with 120 frames). ``"full"``: a GPU study (512 molecules, 100 + 500 ps all-atom, 20 + 500 ps
        CG, 500 frames each). Keyword ``overrides`` replace single fields."""
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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HarnessConfig":
        if not isinstance(data, dict):
            raise InputFileError("a harness configuration must be a JSON object of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown harness configuration keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "HarnessConfig":
        """Read a ``config.json`` written by :func:`compare` (or written by hand)."""
        return cls.from_dict(read_config_file(path, "harness configuration", InputFileError, MissingInputError))


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


def _molecule_mass(species_name: str) -> float:
    import openmm.app as app
    import openmm.unit as u

    from .species import get_species

    sp = get_species(species_name)
    return float(sum(app.Element.getBySymbol(e).mass.value_in_unit(u.dalton) for e in sp.elements))


def _box_edge(n_molecules: int, molecule_mass: float, density: float) -> float:
    from .units import volume_for_density_nm3

    return volume_for_density_nm3(molecule_mass * n_molecules, density) ** (1.0 / 3.0)


def _auto_cutoff(edge: float) -> float:
    return min(1.0, math.floor(0.46 * edge * 100.0) / 100.0)


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
        if config.aa_forcefield is None and ref_cfg.get("forcefield"):
            changes["aa_forcefield"] = ref_cfg["forcefield"]
    if config.mapping is None and spec:
        changes["mapping"] = spec
    if config.system is not None:
        unknown = sorted(set(config.system) - set(_INPUT_KEYS))
        if unknown:
            raise HarnessInputError(f"unknown keys {unknown} in the harness 'system'; use {', '.join(_INPUT_KEYS)}")
    return replace(config, **changes) if changes else config


def reference_input(config: HarnessConfig, **state: Any):
    """A ReferenceConfig for the all-atom input of ``config`` (state and run settings from ``state``)."""
    from .reference import ReferenceConfig

    return ReferenceConfig(species=config.species or "methanol", n_molecules=config.n_molecules,
                           forcefield=config.aa_forcefield, **(config.system or {}), **state)


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
        return _molecule_mass(config.species or "methanol") * config.n_molecules, config.n_molecules
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
def _model_info(model: Path, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Provenance of an exported GNN model (``kind`` "torchscript") or a pair baseline ("pair")."""
    if kind == "pair":
        prov = meta.get("provenance") or {}
        states = [s for s in prov.get("state_points") or [] if s]
        datasets = [{"name": None, "n_frames": f, "n_beads": b, "state": s}
                    for s, f, b in zip(prov.get("state_points") or [], prov.get("n_frames") or [],
                                       prov.get("n_beads") or [])]
        return {"file": model.name, "sha256": _sha256(model), "kind": kind, "label": "CG (pair MS-CG)",
                "format": "openmm-cgnn/pair-force-field", "type_names": meta.get("type_names"),
                "cutoff_nm": meta.get("cutoff_nm"), "network_class": None, "tensor_order": None, "dtype": None,
                "prior": meta.get("prior"), "training_state_points": states, "training_datasets": datasets,
                "trained": None}
    training = meta.get("training") or {}
    datasets = [{"name": d.get("name"), "n_frames": d.get("n_frames"), "n_beads": d.get("n_beads"),
                 "state": d.get("state")} for d in training.get("datasets", [])]
    return {
        "file": model.name, "sha256": _sha256(model), "kind": kind, "label": "CG (GNN)", "format": meta.get("format"),
        "type_names": meta.get("type_names"), "cutoff_nm": meta.get("cutoff_nm"),
        "network_class": meta.get("network_class"), "tensor_order": meta.get("tensor_order"),
        "dtype": meta.get("dtype"), "prior": meta.get("prior"),
        "training_state_points": training.get("state_points", [d["state"] for d in datasets if d.get("state")]),
        "training_datasets": datasets, "trained": training.get("created"),
    }


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
            edge = _box_edge(1, mass, rho)
            where = f"{n_mol} molecules at {rho:g} g/cm^3"
            n = n_mol
            if config.aa_cutoff is not None and 2.0 * config.aa_cutoff > edge:
                raise ConfigError(
                    f"state point {sp.label()}: {where} make a {edge:.3f} nm box, smaller than twice the all-atom "
                    f"cutoff ({config.aa_cutoff} nm); use more molecules or aa_cutoff <= {edge / 2:.3f} nm")
        if cutoff_nm and edge <= 2.0 * cutoff_nm:
            need = math.ceil(n * (2.0 * cutoff_nm / edge) ** 3 * 1.1)
            raise ConfigError(
                f"state point {sp.label()}: {where} make a {edge:.3f} nm box, too small for the model's cutoff "
                f"({cutoff_nm:g} nm needs an edge above {2 * cutoff_nm:g} nm); use at least {need} molecules")


def compare(model: str | Path, state_points: Any, out_dir: str | Path, config: HarnessConfig | None = None,
            reference_datasets: Sequence[str | Path] | None = None, overwrite: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Compare the exported CG ``model`` with all-atom references at ``state_points``; write ``out_dir``.

    :param model: exported model (``.pt`` from ``openmm-cgnn export``).
    :param state_points: StatePoints, strings ("300K:0.787g/cm3"), a comma-separated string or a TOML path.
    :param out_dir: output folder (files in the module docstring).
    :param config: the settings (default ``HarnessConfig.preset("default")``).
    :param reference_datasets: CG data sets (from ``openmm-cgnn map``) to use as the reference where
        their ``metadata.state`` matches a state point, instead of running the all-atom simulation.
    :param overwrite: replace an existing report; without it an ``out_dir`` that holds ``report.json``
        is refused. (An interrupted comparison without a report is resumed: finished runs with the same
        settings are reused.)
    :return: the report (the content of ``report.json``).
    """
    from .reference import choose_platform
    from .system import CGModel

    started = time.perf_counter()
    config = config if config is not None else HarnessConfig.preset("default")
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
    model_info = _model_info(model, cg_model.kind, meta)
    notes: list[str] = []
    config = resolve_system(config, meta, notes)
    given = _match_given(reference_datasets, points, notes, progress)
    if len(given) < len(points):
        if config.species is None and config.system is None:
            raise HarnessInputError(
                "the model was trained on imported all-atom data, which the harness cannot rerun; give the all-atom "
                "system (--box with --forcefield-xml or --system-xml, or --components) or mapped reference data "
                "sets for every state point (--reference-data)")
        check_mapping(config, meta.get("type_names") or [])
    _check_sizes(config, points, given, meta.get("cutoff_nm"))
    platform = choose_platform(config.platform).getName()
    device = device_name(platform)
    make_output_dir(out)
    write_json_atomic(out / "config.json", config.to_dict())
    _log(progress, f"{len(points)} state point(s): {', '.join(p.label() for p in points)}; model {model.name}; "
                   f"platform {platform} ({device}); settings {config.name!r}; output {out}")

    results, curves = [], []
    with _torch_threads(config.torch_threads):
        for i, sp in enumerate(points):
            res, cur = _run_state_point(i, len(points), sp, model, model_info, config, platform, out, given.get(i),
                                        overwrite, notes, progress)
            results.append(res)
            curves.append(cur)

    files = _write_curves(out, points, curves)
    trained_temperatures = [s["temperature_K"] for s in model_info["training_state_points"] or []
                            if s.get("temperature_K") is not None]
    files.update(_write_plots(out, results, curves, trained_temperatures, model_info["label"]))
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(), "platform": platform, "device": device, "versions": versions(),
        "model": model_info, "state_points": results, "summary": {}, "files": {}, "notes": notes,
        "units": UNITS, "timing_s": {},
    }
    counts = {s: sum(r["status"] == s for r in results) for s in ("complete", "blew_up", "failed")}
    report["summary"] = {"n_state_points": len(results), "n_complete": counts["complete"],
                         "n_blew_up": counts["blew_up"], "n_failed": counts["failed"],
                         "lines": summary_lines(report)}
    files.update({"report": "report.json", "markdown": "report.md", "config": "config.json"})
    report["files"] = files
    report["timing_s"] = {"total": time.perf_counter() - started}
    report = _clean(report)
    write_text_atomic(out / "report.md", _markdown(report))
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


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` torch intra-op threads (the TorchForce runs in this process), then restore."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_state_point(i: int, n: int, sp: StatePoint, model: Path, model_info: dict, config: HarnessConfig,
                     platform: str, out: Path, given: Path | None, overwrite: bool, notes: list[str],
                     progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    in_training = any(sp.matches(s) for s in model_info.get("training_state_points") or [])
    res = _empty_result(sp, in_training)
    curves: dict[str, np.ndarray] = {}
    sp_dir = out / "state_points" / sp.slug()
    sp_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{i + 1}/{n} {sp.label()}"

    def fail(stage: str, exc: BaseException) -> None:
        res["status"] = "failed"
        res["message"] = f"{stage} failed: {type(exc).__name__}: {exc}"
        write_text_atomic(sp_dir / "error.txt", "".join(traceback.format_exception(exc)))
        _log(progress, f"{tag}: {res['message']}")

    # 1. all-atom reference
    t0 = time.perf_counter()
    try:
        ds_path, res["reference"] = _reference(sp, config, platform, out, sp_dir, given, tag, progress)
    except Exception as exc:          # recorded, so that the other state points still run
        fail("the all-atom reference", exc)
        return res, curves
    finally:
        res["timing_s"]["reference"] = time.perf_counter() - t0
    (sp_dir / "error.txt").unlink(missing_ok=True)

    # 2. CG simulation
    t0 = time.perf_counter()
    sim_dir = sp_dir / "cg"
    try:
        # a freshly computed reference invalidates any interrupted CG run that started from the old one
        fresh = overwrite or res["reference"]["source"] == "computed"
        res["cg"] = _cg_run(sp, model, model_info, config, platform, ds_path, sim_dir, out, fresh, tag, progress)
        if res["cg"]["status"] != "complete":
            res["status"] = "blew_up"
            res["message"] = res["cg"]["error"]
            _log(progress, f"{tag}: the CG run blew up: {res['message']}")
    except Exception as exc:
        fail("the CG simulation", exc)
    finally:
        res["timing_s"]["cg"] = time.perf_counter() - t0

    # 3. analysis (the reference side always, the CG side when its run completed)
    t0 = time.perf_counter()
    _log(progress, f"{tag}: analysis (RDF, ADF, density)")
    try:
        for note in _analyse(sp, config, ds_path, sim_dir if res["status"] == "complete" else None, res, curves):
            notes.append(note)
            _log(progress, "note: " + note)
    except Exception as exc:
        fail("the analysis", exc)
    finally:
        res["timing_s"]["analysis"] = time.perf_counter() - t0
    if res["status"] == "complete":
        r, a, d = res["rdf"], res["adf"], res["density"]
        msg = f"{tag}: RDF MAD {r['mad']:.4f}, first peak \u0394r {r['peak_position_error']:+.4f} nm"
        if a["l1"] is not None:
            msg += f", ADF L1 {a['l1']:.3f}"
        if d["relative_error"] is not None:
            msg += f", density {100 * d['relative_error']:+.2f} \u00b1 {100 * (d['relative_error_se'] or 0):.2f} %"
        _log(progress, msg)
    return res, curves


def _reference(sp: StatePoint, config: HarnessConfig, platform: str, out: Path, sp_dir: Path, given: Path | None,
               tag: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """The mapped reference data set of a state point and its provenance."""
    from .dataset import CGDataset
    from .mapping import map_reference
    from .reference import ReferenceConfig, load_reference, run_reference
    from .species import get_species

    if given is not None:
        source, ds_path = "given", given
        _log(progress, f"{tag}: all-atom reference: the given data set {given.name}")
    else:
        rho0 = _initial_density(config, sp)
        cutoff = config.aa_cutoff if config.aa_cutoff is not None else _auto_cutoff(
            _box_edge(1, _input_mass_and_count(config)[0], rho0))
        ref_cfg = reference_input(config, temperature=sp.temperature, density=sp.density, pressure=sp.pressure,
                                  cutoff=cutoff, timestep=config.aa_timestep,
                                  equilibration=config.aa_equilibration, production=config.aa_production,
                                  frame_interval=config.aa_frame_interval, seed=config.seed, platform=platform)
        want = asdict(ref_cfg)
        aa_path, ds_path = sp_dir / "reference-aa.npz", sp_dir / "reference-cg.npz"
        source = "computed"
        if config.reuse_references and ds_path.exists() and \
                _same_json((_dataset_metadata(ds_path).get("source") or {}).get("config"), want):
            source = "reused"
            _log(progress, f"{tag}: all-atom reference: reusing {_rel(ds_path, out)} (same settings)")
        else:
            aa_ok = False
            if config.reuse_references and aa_path.exists():
                try:
                    aa_ok = _same_json(load_reference(aa_path).metadata.get("config"), want)
                except Exception:
                    aa_ok = False
            if aa_ok:
                source = "reused"
                _log(progress, f"{tag}: all-atom reference: reusing {_rel(aa_path, out)} (same settings)")
            else:
                _log(progress, f"{tag}: all-atom reference: {ref_cfg.ensemble}, {config.n_molecules} molecules, "
                               f"{config.aa_equilibration:g} + {config.aa_production:g} ps, cutoff {cutoff:g} nm")
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


def _cg_run(sp: StatePoint, model: Path, model_info: dict, config: HarnessConfig, platform: str, ds_path: Path,
            sim_dir: Path, out: Path, overwrite: bool, tag: str, progress: bool) -> dict[str, Any]:
    """Run (or reuse) the CG simulation of a state point; its status, never raising on a blow-up."""
    import openmm

    from .simulate import CGSimulationBlowUp, CGSimulationConfig, load_cg_frames, run_cg_simulation

    cfg = CGSimulationConfig(model=str(model), temperature=sp.temperature, pressure=sp.pressure,
                             timestep=config.cg_timestep, friction=config.cg_friction,
                             equilibration=config.cg_equilibration, production=config.cg_production,
                             frame_interval=config.cg_frame_interval, seed=config.seed, platform=platform,
                             start_dataset=str(ds_path), start_frame=-1, use_cuda_graphs=config.cg_cuda_graphs,
                             mts=config.cg_mts, mts_fast=config.cg_mts_fast)
    marker = sim_dir / "harness-run.json"
    # the run's settings, with the paths of this machine made relative (model: its file name), so that a
    # moved report folder is still recognised; the files themselves are identified by their hashes
    portable = {**asdict(cfg), "model": model.name, "start_dataset": _rel(ds_path, out)}
    stamp = {"model_sha256": model_info["sha256"], "start_sha256": _sha256(ds_path), "config": portable}
    info_path = sim_dir / "simulation.json"
    reuse = (not overwrite and info_path.exists() and marker.exists()
             and _same_json(json.loads(marker.read_text()), stamp))
    status, error = "complete", None
    if reuse:
        _log(progress, f"{tag}: CG simulation: reusing {_rel(sim_dir, out)} (same model and settings)")
    else:
        marker.unlink(missing_ok=True)
        finished_before = info_path.exists()
        info_path.unlink(missing_ok=True)          # so that a run that stops with an error leaves none
        _log(progress, f"{tag}: CG simulation: {cfg.ensemble}, {config.cg_equilibration:g} + "
                       f"{config.cg_production:g} ps, dt {config.cg_timestep * 1000:g} fs, platform {platform}")
        try:
            # overwrite: never resume an interrupted run of an earlier --overwrite'd comparison
            run_cg_simulation(cfg, sim_dir, overwrite=overwrite or finished_before, progress=progress)
        except CGSimulationBlowUp as exc:
            status, error = "blew_up", str(exc)
        except openmm.OpenMMException as exc:
            # e.g. the model refusing a box that collapsed below twice its cutoff under the barostat
            status, error = "blew_up", f"the CG simulation stopped with an OpenMM error: {str(exc).strip()}"
        write_json_atomic(marker, stamp)
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


def _series_mean_se(x: np.ndarray, n_blocks: int) -> tuple[float, float | None, int | None]:
    from .analysis import block_average

    x = np.asarray(x, dtype=np.float64)
    blocks = min(n_blocks, len(x) // 2)
    if blocks < 2:
        return float(np.mean(x)), None, None
    mean, se = block_average(x, blocks)
    return float(mean), float(se), blocks


def _drift(x: np.ndarray, n_blocks: int, tolerance: float = 0.01) -> tuple[float, float] | None:
    """(first, last) block mean when the block means change monotonically by more than ``tolerance``
    (relative) over the run, else None. A stationary series has monotonic block means with
    probability 2 / n_blocks! (2 % for 5 blocks)."""
    x = np.asarray(x, dtype=np.float64)
    n = min(n_blocks, len(x) // 2)
    if n < 3:
        return None
    length = len(x) // n
    means = x[len(x) - n * length:].reshape(n, length).mean(axis=1)
    steps = np.diff(means)
    if (np.all(steps > 0) or np.all(steps < 0)) and abs(means[-1] - means[0]) > tolerance * abs(means.mean()):
        return float(means[0]), float(means[-1])
    return None


def _analyse(sp: StatePoint, config: HarnessConfig, ds_path: Path, sim_dir: Path | None, res: dict[str, Any],
             curves: dict[str, np.ndarray]) -> list[str]:
    """Fill ``res``'s rdf/adf/density entries and ``curves``; returns notes (e.g. why there is no ADF)."""
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
    r, g_ref = A.rdf(ds.positions, ds.boxes, r_max=r_max, bin_width=bw)
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
        theta, p_ref = A.adf(ds.positions, ds.boxes, shell, n_bins=config.adf_bins)
        curves.update(theta=theta, p_ref=p_ref)
        res["adf"].update(shell_cutoff_nm=shell, n_bins=config.adf_bins)
    res["by_type"]["composition"] = {name: int(np.sum(ds.bead_types == t)) for t, name in enumerate(ds.type_names)}
    if cg is not None and len(ds.type_names) > 1:
        _analyse_by_type(ds, cg, r_max, bw, shell, config.adf_bins, res["by_type"], curves)
    dens = res["density"]
    pres = res["pressure"]
    if ds.pressure is not None:
        m, se, nb = _series_mean_se(ds.pressure, config.density_blocks)
        pres.update(ref_mean=m, ref_se=se, n_blocks=nb)
        curves["pressure_ref"] = ds.pressure
    if sp.ensemble == "NVT":
        dens.update(ref_mean=float(np.mean(ref_rho)), ref_se=0.0)
    else:
        m, se, nb = _series_mean_se(ref_rho, config.density_blocks)
        dens.update(ref_mean=m, ref_se=se, n_blocks=nb)
    if cg is None:
        return notes

    r_cg, g_cg = A.rdf(cg["positions"], cg["boxes"], r_max=r_max, bin_width=bw)
    if r_cg.shape != r.shape or not np.allclose(r_cg, r):
        raise RuntimeError("the reference and CG RDF grids differ")
    cg_rho = np.asarray(cg["density"], dtype=np.float64)
    curves.update(g_cg=g_cg, density_cg=cg_rho)
    if "pressure" in cg:
        m, se, nb = _series_mean_se(cg["pressure"], config.density_blocks)
        pres.update(cg_mean=m, cg_se=se)
        curves["pressure_cg"] = np.asarray(cg["pressure"], dtype=np.float64)
        if pres["ref_mean"] is not None:
            pres["difference"] = m - pres["ref_mean"]
            if se is not None and pres["ref_se"] is not None:
                pres["difference_se"] = math.hypot(se, pres["ref_se"])
    res["rdf"].update(A.rdf_metrics(r, g_ref, g_cg))
    if shell is not None:
        _, p_cg = A.adf(cg["positions"], cg["boxes"], shell, n_bins=config.adf_bins)
        curves["p_cg"] = p_cg
        if p_cg.sum() > 0 and curves["p_ref"].sum() > 0:
            res["adf"]["l1"] = A.adf_l1(curves["p_ref"], p_cg, curves["theta"])
        else:
            notes.append(f"{sp.label()}: no ADF distance: a run has no bead with two neighbours in the shell")
    if sp.ensemble == "NVT":
        dens.update(cg_mean=float(np.mean(cg_rho)), cg_se=0.0)
        return notes
    m, se, nb = _series_mean_se(cg_rho, config.density_blocks)
    dens.update(cg_mean=m, cg_se=se, n_blocks=min(nb, dens["n_blocks"]) if nb and dens["n_blocks"] else None)
    for side, series in (("all-atom", ref_rho), ("CG", cg_rho)):
        drift = _drift(series, config.density_blocks)
        if drift is not None:
            notes.append(f"{sp.label()}: the {side} density is still drifting (block means {drift[0]:.3f} -> "
                         f"{drift[1]:.3f} g/cm^3, steadily); its mean and error bar are not converged: run longer")
    dens.update(A.density_error(m, se or 0.0, dens["ref_mean"], dens["ref_se"] or 0.0))
    if se is None or dens["ref_se"] is None:
        dens["abs_error_se"] = dens["relative_error_se"] = dens["z"] = None
    return notes


def _analyse_by_type(ds: Any, cg: dict[str, np.ndarray], r_max: float, bw: float, shell: float | None, adf_bins: int,
                     out: dict[str, Any], curves: dict[str, np.ndarray]) -> None:
    """Partial RDFs of every bead-type pair and ADFs per central bead type (reference vs CG); the CG run
    keeps the bead order and types of the reference data set it started from."""
    from . import analysis as A

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
            r, g_ref = A.rdf(ds.positions, ds.boxes, r_max=r_max, bin_width=bw, types=types, pair=(a, b))
            _, g_cg = A.rdf(cg["positions"], cg["boxes"], r_max=r_max, bin_width=bw, types=types, pair=(a, b))
            curves[f"g_ref_{key}"], curves[f"g_cg_{key}"] = g_ref, g_cg
            try:
                out["rdf"][key] = A.rdf_metrics(r, g_ref, g_cg)
            except ValueError as exc:        # e.g. no peak above 1 in a sparse partial RDF
                out["rdf"][key] = {"mad": float(np.mean(np.abs(g_cg - g_ref))), "note": str(exc)}
    if shell is None:
        return
    for t, name in enumerate(names):
        _, p_ref = A.adf(ds.positions, ds.boxes, shell, n_bins=adf_bins, types=types, centre=t)
        theta, p_cg = A.adf(cg["positions"], cg["boxes"], shell, n_bins=adf_bins, types=types, centre=t)
        curves[f"p_ref_{name}"], curves[f"p_cg_{name}"] = p_ref, p_cg
        l1 = A.adf_l1(p_ref, p_cg, theta) if p_ref.sum() > 0 and p_cg.sum() > 0 else None
        out["adf"][name] = {"l1": l1, "shell_cutoff_nm": shell}


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
_CURVE_NAMES = ("r", "g_ref", "g_cg", "theta", "p_ref", "p_cg", "density_ref", "density_cg", "pressure_ref",
                "pressure_cg")


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


def _panel_title(res: dict[str, Any], extra: str | None = None) -> str:
    title = res["title"]
    if res.get("in_training"):
        title += " [training]"
    if extra:
        title += "\n" + extra
    if res["status"] == "blew_up":
        title += "\nCG blew up"
    elif res["status"] == "failed":
        title += "\nfailed"
    return title


def _message_png(path: Path, text: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .files import atomic_write

    fig = Figure(figsize=(5.2, 2.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _write_plots(out: Path, results: list[dict[str, Any]], curves: list[dict[str, np.ndarray]],
                 trained_temperatures: Sequence[float] = (), cg_label: str = "CG (GNN)") -> dict[str, str]:
    from . import analysis as A

    files = {"rdf_plot": "rdf.png", "adf_plot": "adf.png", "density_plot": "density.png"}
    rdfs = {_panel_title(res): (c["r"], c["g_ref"], c.get("g_cg")) for res, c in zip(results, curves) if "r" in c}
    if rdfs:
        A.plot_rdfs(rdfs, out / "rdf.png", title="Bead-bead radial distribution function", cg_label=cg_label)
    else:
        _message_png(out / "rdf.png", "no RDF: no state point has a reference")
    adfs = {_panel_title(res, f"shell < {res['adf']['shell_cutoff_nm']:.3f} nm"):
            (c["theta"], c["p_ref"], c.get("p_cg")) for res, c in zip(results, curves) if "theta" in c}
    if adfs:
        A.plot_adfs(adfs, out / "adf.png", title="First-shell angle distribution", cg_label=cg_label)
    else:
        _message_png(out / "adf.png", "no ADF: no state point has a reference with a first RDF minimum")
    groups: dict[float, list[dict[str, Any]]] = {}
    for res in results:
        if res["state"]["ensemble"] == "NPT" and res["density"]["ref_mean"] is not None:
            d = res["density"]
            groups.setdefault(res["state"]["pressure_bar"], []).append(
                {"temperature_K": res["state"]["temperature_K"], "ref_mean": d["ref_mean"], "ref_se": d["ref_se"],
                 "cg_mean": d["cg_mean"], "cg_se": d["cg_se"],
                 "training": any(abs(res["state"]["temperature_K"] - t) <= _T_TOL for t in trained_temperatures)})
    if not groups:
        _message_png(out / "density.png", "No NPT state point: every density was imposed (NVT).\n"
                                          "Add e.g. 300K:1bar to compare densities.")
    for k, (pressure, rows) in enumerate(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
        name = "density.png" if k == 0 else f"density-{_num(pressure)}bar.png"
        A.plot_density_vs_temperature(rows, out / name, title=f"Density at {_num(pressure)} bar (NPT)",
                                      ref_label="all-atom (mapped)", cg_label=cg_label)
        if k:
            files[f"density_plot_{_num(pressure)}bar"] = name
    return files


# ---------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str, missing: str = "\u2014") -> str:
    return missing if v is None else format(v, spec)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Three lines with the key errors: RDF, ADF, density (used by the demo and report.md)."""
    sps = report["state_points"]
    done = [s for s in sps if s["status"] == "complete" and s["rdf"]["mad"] is not None]
    bad = [s for s in sps if s["status"] != "complete"]
    head = ""
    if bad:
        head = (f"{len(sps) - len(bad)}/{len(sps)} state points complete ("
                + ", ".join(f"{s['label']} {s['status'].replace('_', ' ')}" for s in bad) + "). ")
    if done:
        worst = max(done, key=lambda s: s["rdf"]["mad"])
        mean_mad = float(np.mean([s["rdf"]["mad"] for s in done]))
        dr = max(abs(s["rdf"]["peak_position_error"]) for s in done)
        dg = max(abs(s["rdf"]["peak_height_error"]) for s in done)
        line1 = (f"{head}RDF: mean |g_CG - g_AA| {mean_mad:.3f} (worst {worst['rdf']['mad']:.3f} at "
                 f"{worst['label']}); first peak off by up to {dr:.3f} nm and {dg:.2f} in height.")
    else:
        line1 = f"{head}RDF: no CG run completed, nothing to compare."
    with_adf = [s for s in done if s["adf"]["l1"] is not None]
    if with_adf:
        worst = max(with_adf, key=lambda s: s["adf"]["l1"])
        line2 = (f"ADF: L1 distance {np.mean([s['adf']['l1'] for s in with_adf]):.3f} on average (worst "
                 f"{worst['adf']['l1']:.3f} at {worst['label']}; 0 = identical, 2 = disjoint).")
    else:
        line2 = "ADF: no comparison (no completed CG run with a first-shell cutoff)."
    npt = [s for s in done if s["state"]["ensemble"] == "NPT" and s["density"]["relative_error"] is not None]
    if npt:
        parts = [f"{s['label']} {100 * s['density']['relative_error']:+.1f}"
                 + (f" \u00b1 {100 * s['density']['relative_error_se']:.1f}"
                    if s["density"]["relative_error_se"] is not None else "") + " %" for s in npt]
        line3 = "Density (NPT, CG vs all-atom): " + "; ".join(parts) + "."
    elif any(s["state"]["ensemble"] == "NPT" for s in sps):
        line3 = "Density: no NPT CG run completed, nothing to compare."
    else:
        line3 = "Density: no NPT state point (NVT densities are imposed, not predicted)."
    nvt_p = [s for s in done if s["state"]["ensemble"] == "NVT" and (s.get("pressure") or {}).get("difference")
             is not None]
    if nvt_p:
        line3 += " Pressure (NVT, CG - all-atom): " + "; ".join(
            f"{s['label']} {s['pressure']['difference']:+.0f}"
            + (f" \u00b1 {s['pressure']['difference_se']:.0f}" if s["pressure"]["difference_se"] is not None else "")
            + " bar" for s in nvt_p) + "."
    return [line1, line2, line3]


def metrics_table_markdown(report: dict[str, Any]) -> str:
    """The metrics of every state point as a Markdown table."""
    head = ("| state point | ensemble | trained here | status | RDF MAD | RDF max \\|\u0394g\\| | peak \u0394r (nm) "
            "| peak \u0394g | ADF L1 | \u03c1 AA (g/cm\u00b3) | \u03c1 CG (g/cm\u00b3) | \u03c1 error (%) "
            "| P AA (bar) | P CG (bar) |")
    rows = [head, "|" + "---|" * 14]
    for s in report["state_points"]:
        r, a, d = s["rdf"], s["adf"], s["density"]
        if d["fixed"]:
            rho_aa = f"{_fmt(d['ref_mean'], '.3f')} (fixed)"
            rho_cg = "(fixed)"
            err = "\u2014"
        else:
            rho_aa = _fmt(d["ref_mean"], ".3f") + (f" \u00b1 {d['ref_se']:.3f}" if d["ref_se"] is not None else "")
            rho_cg = _fmt(d["cg_mean"], ".3f") + (f" \u00b1 {d['cg_se']:.3f}" if d["cg_se"] is not None else "")
            err = _fmt(None if d["relative_error"] is None else 100 * d["relative_error"], "+.2f")
            if d["relative_error_se"] is not None:
                err += f" \u00b1 {100 * d['relative_error_se']:.2f}"
        rows.append("| " + " | ".join([
            s["label"], s["state"]["ensemble"], "yes" if s["in_training"] else "no", s["status"].replace("_", " "),
            _fmt(r["mad"], ".4f"), _fmt(r["max_abs_dev"], ".3f"), _fmt(r["peak_position_error"], "+.4f"),
            _fmt(r["peak_height_error"], "+.3f"), _fmt(a["l1"], ".3f"), rho_aa, rho_cg, err,
            _pressure_cell(s, "ref"), _pressure_cell(s, "cg")]) + " |")
    return "\n".join(rows) + "\n"


def _by_type_markdown(report: dict[str, Any]) -> list[str]:
    """Composition, partial RDFs and per-centre ADFs, for models with several bead types."""
    rows = []
    for sp in report["state_points"]:
        bt = sp.get("by_type") or {}
        if not bt.get("rdf") and not bt.get("adf"):
            continue
        comp = ", ".join(f"{k} {v}" for k, v in (bt.get("composition") or {}).items())
        rdfs = ", ".join(f"{k} {_fmt(v.get('mad'), '.3f')}" for k, v in bt["rdf"].items())
        adfs = ", ".join(f"{k} {_fmt(v.get('l1'), '.3f')}" for k, v in bt.get("adf", {}).items())
        rows.append(f"| {sp['label']} | {comp} | {rdfs} | {adfs or _fmt(None, '')} |")
    if not rows:
        return []
    return ["## By bead type", "", "| state point | composition (beads) | partial RDF MAD | ADF L1 by centre type |",
            "| --- | --- | --- | --- |", *rows, ""]


def _pressure_cell(s: dict[str, Any], side: str) -> str:
    p = s.get("pressure") or {}
    mean, se = p.get(f"{side}_mean"), p.get(f"{side}_se")
    return _fmt(mean, ".0f") + (f" \u00b1 {se:.0f}" if se is not None and mean is not None else "")


def _markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    trained = ", ".join(StatePoint(s["temperature_K"], s.get("density_g_cm3") if s.get("pressure_bar") is None
                                   else None, s.get("pressure_bar")).label()
                        for s in m.get("training_state_points") or [] if s.get("temperature_K"))
    cfg = report["config"]
    kind = (f"{m.get('network_class')}, tensor order {m.get('tensor_order')}" if m.get("kind") != "pair"
            else "pair force field, MS-CG")
    lines = [
        "# CG model vs all-atom reference", "",
        f"Model `{m['file']}` ({kind}, cutoff {m.get('cutoff_nm')} nm, bead types "
        f"{', '.join(m.get('type_names') or [])}), trained at "
        f"{trained or 'unknown state points'}. Platform {report['platform']} ({report['device']}), settings "
        f"`{cfg['name']}`: all-atom {cfg['aa_production']:g} ps, CG {cfg['cg_production']:g} ps per state point. "
        f"Created {report['created']}.", "",
        "## Summary", "", *[f"- {line}" for line in report["summary"]["lines"]], "",
        "## Metrics", "", metrics_table_markdown(report),
        "RDF MAD: mean |g_CG(r) - g_AA(r)| over the r grid (0 = identical); max |\u0394g|: the largest deviation; "
        "peak \u0394r / \u0394g: CG minus all-atom position (nm) and height of the first RDF peak. ADF L1: "
        "distance between the first-shell angle distributions (0 = identical, 2 = disjoint). Density: "
        "block-averaged mean \u00b1 standard error of NPT runs; NVT densities are imposed. P: instantaneous "
        "pressure (OpenMM's finite-difference estimator, molecular for all-atom), block-averaged mean \u00b1 "
        "standard error.", "",
    ]
    lines += _by_type_markdown(report)
    problems = [s for s in report["state_points"] if s["status"] != "complete"]
    if problems:
        lines += ["## Problems", ""] + [f"- **{s['label']}** ({s['status'].replace('_', ' ')}): {s['message']}"
                                        for s in problems] + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["## Radial distribution functions", "", "![RDF](rdf.png)", "",
              "## Angular distribution functions", "", "![ADF](adf.png)", "",
              "## Density", "", "![density](density.png)", ""]
    for k, v in report["files"].items():
        if k.startswith("density_plot_"):
            lines += [f"![density]({v})", ""]
    return "\n".join(lines)
