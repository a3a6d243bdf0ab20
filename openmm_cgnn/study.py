"""Transferability study: HIP-NN(-TS) variants against a pairwise force-matched CG force field.

Every model is trained at the same state point(s) and evaluated with the comparison harness at
other temperatures and pressures. Besides the paper's models (HIP-NN, HIP-NN-TS variants, an l=2 model
trained at two temperatures, the pair baseline), the study trains a temperature-aware model U(R, T)
(:mod:`openmm_cgnn.thermal`) at the two temperatures, evaluated at every state point at that state's
temperature, and states how much its error grows from its training temperatures to the farthest one
tested (:func:`error_growth`). The output folder (``study_config.json``, ``data/``,
``models/<name>/``, ``study.json``, ``study.md`` and three plots) and how to read it are described
in ``docs/formats.md``; the plots and ``study.md`` are written by :mod:`~openmm_cgnn.reporting`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .deprecation import renamed
from .errors import ConfigError
from .files import write_json_atomic, write_text_atomic
from .geometry import aa_cutoff_for_edge, box_edge, box_widths
from .species import get_species
from .reporting import study_markdown, write_study_plots


@dataclass
class Variant:
    """One GNN model of the study (``tensor_order`` 0: HIP-NN, 1, 2: HIP-NN-TS; ``temperature_aware``:
    U(R, T) = E(R) - T S(R), :mod:`openmm_cgnn.thermal`)."""

    name: str
    tensor_order: int = 2
    n_interaction_layers: int = 1
    train_states: list[str] | None = None   # None: the study's train_states
    temperature_aware: bool = False


MULTI_VARIANT = "hipnn-ts-l2-multi"      # HIP-NN-TS l=2 trained on multi_train_states, no temperature input
THERMAL_VARIANT = "hipnn-ts-l2-thermal"  # the temperature-aware model, trained on multi_train_states
TEACHER, STUDENT = "hipnn-ts-l2", "hipnn-ts-l2-student"   # the distillation (student_preset): teacher -> student
STUDENT_TARGET = 1.2                     # a student's RDF MAD and ADF L1 within 20 % of its teacher's
GROWTH_TARGET = 1.3                      # issue target: error growth <= 1.3x to the farthest temperature


@dataclass
class StudyConfig:
    """All settings of a transferability study; ``preset`` "small" runs on a CPU in about an hour,
    "medium" in a few hours, "full" wants a GPU (see :meth:`from_preset`)."""

    preset: str = "small"
    species: str = "methanol"
    n_molecules: int = 64
    train_states: list[str] = field(default_factory=lambda: ["300K:0.787g/cm3"])
    multi_train_states: list[str] = field(default_factory=lambda: ["300K:0.787g/cm3", "400K:0.787g/cm3"])
    eval_states: list[str] = field(default_factory=lambda: [
        "250K:0.787g/cm3", "300K:0.787g/cm3", "350K:0.787g/cm3", "400K:0.787g/cm3", "500K:0.787g/cm3",
        "300K:1bar"])
    variants: list[Variant] = field(default_factory=lambda: [
        Variant("hipnn-l0", 0), Variant("hipnn-ts-l1", 1), Variant("hipnn-ts-l2", 2),
        Variant("hipnn-ts-l2-2int", 2, 2)])
    multi_variant: bool = True               # also train hipnn-ts-l2 on multi_train_states together
    thermal_variant: bool = True             # also train the temperature-aware model on multi_train_states
    pair_baseline: bool = True
    pair_cutoff: float | None = None         # nm; None: the GNN's cutoff, capped at half the box
    student_preset: str | None = None        # distil hipnn-ts-l2 into this TrainConfig preset ("fast") as one more
    #                                          model, hipnn-ts-l2-student, on the teacher's training data
    train_preset: str = "tiny"
    max_epochs: int | None = 6
    harness_preset: str = "default"
    harness_overrides: dict[str, Any] = field(default_factory=dict)   # fields of that preset to replace
    #                                        (flat names such as cg_production work: HarnessConfig.from_preset)
    adf_shell_cutoff: float | None = 0.6     # nm, one first shell at every state point (see DemoConfig)
    platform: str | None = None

    @classmethod
    def from_preset(cls, name: str) -> "StudyConfig":
        """``"toy"``: about a minute (tests: HIP-NN-TS l=2, a student distilled from it, the
        temperature-aware model and the pair baseline at four state points); ``"small"``: a CPU hour (64
        molecules, tiny networks for 6 epochs, 35 ps CG runs); ``"medium"``: a few hours on a 2-core CPU
        (216 molecules, the ``fast`` student network for up to 40 epochs, 20 + 100 ps all-atom references,
        5 + 50 ps CG runs: see ``MEDIUM``); ``"full"``: the paper network and sizes, and the ``fast``
        student distilled from it, for a GPU."""
        if name == "small":
            return cls()
        if name == "medium":
            return cls(preset="medium", **copy.deepcopy(MEDIUM))
        if name == "toy":  # the test suite: four models, four state points, seconds each
            return cls(preset="toy", variants=[Variant("hipnn-ts-l2", 2)], multi_variant=False,
                       eval_states=["300K:0.787g/cm3", "400K:0.787g/cm3", "450K:0.787g/cm3", "300K:1bar"],
                       max_epochs=1, student_preset="tiny",
                       harness_preset="tiny")
        if name == "full":
            return cls(preset="full", n_molecules=512, train_preset="paper", max_epochs=None, harness_preset="full",
                       student_preset="fast",
                       eval_states=["250K:0.787g/cm3", "300K:0.787g/cm3", "350K:0.787g/cm3", "400K:0.787g/cm3",
                                    "450K:0.787g/cm3", "500K:0.787g/cm3", "300K:1bar", "350K:1bar",
                                    "400K:1bar"])
        raise ConfigError(f"unknown study preset {name!r}; choose 'toy', 'small', 'medium' or 'full'", "preset")

    preset_named = renamed("from_preset")   # the old name


# The "medium" preset: every model of the paper's comparison that a CPU can train (HIP-NN l=0, HIP-NN-TS
# l=1 and l=2 as the `fast` student network, l=2 at two temperatures, the temperature-aware model, the
# pair baseline) and a `tiny` student distilled from the l=2 model, at 216 molecules, 250 to 500 K and
# 1 bar; about two hours on a 2-core CPU with two workers (README).
MEDIUM: dict[str, Any] = dict(
    n_molecules=216,
    variants=[Variant("hipnn-l0", 0), Variant("hipnn-ts-l1", 1), Variant("hipnn-ts-l2", 2)],
    train_preset="fast", max_epochs=40, harness_preset="default", student_preset="tiny",
    harness_overrides=dict(aa_equilibration=20.0, aa_production=100.0, aa_frame_interval=0.5,
                           cg_equilibration=5.0, cg_production=50.0, cg_frame_interval=0.5),
)


def _harness_config(config: StudyConfig):
    from .harness import HarnessConfig

    return replace(HarnessConfig.from_preset(config.harness_preset, **config.harness_overrides),
                   n_molecules=config.n_molecules,
                   species=config.species, platform=config.platform, adf_shell_cutoff=config.adf_shell_cutoff)


def _training_labels(config: StudyConfig) -> list[str]:
    """The state points of every training reference, once each."""
    multi = config.multi_variant or config.thermal_variant
    return list(dict.fromkeys(config.train_states + (config.multi_train_states if multi else [])))


def _evaluation_only_labels(config: StudyConfig, out: Path) -> list[str]:
    """The evaluation state points that no training reference covers: their all-atom references run
    beside the trainings (the harness then takes them as given data sets). Left out: those whose
    reference a model's report in ``out`` already holds (a study begun before this order; the
    comparisons reuse it)."""
    from .statepoints import parse_state_point

    covered = {parse_state_point(label).label() for label in _training_labels(config)}
    labels = []
    for label in dict.fromkeys(config.eval_states):
        sp = parse_state_point(label)
        if sp.label() not in covered and not any(
                (out / "models").glob(f"*/report/state_points/{sp.slug()}/reference-cg.npz")):
            labels.append(label)
    return labels


def _training_reference(label: str, config: StudyConfig, data: Path, progress: bool) -> Path:
    """The all-atom run and CG data set at one state point of the study (reused when present)."""
    from .statepoints import parse_state_point
    from .mapping import map_reference
    from .reference import ReferenceConfig, run_reference

    hc = _harness_config(config)
    sp = parse_state_point(label)
    slug = sp.slug()
    aa, cg = data / f"{slug}-aa.npz", data / f"{slug}-cg.npz"
    if not cg.exists():
        if not aa.exists():
            cutoff = hc.reference_cutoff or _auto_aa_cutoff(config, sp)
            run_reference(ReferenceConfig(species=config.species, n_molecules=config.n_molecules,
                                          temperature=sp.temperature, density=sp.density, pressure=sp.pressure,
                                          cutoff=cutoff, timestep=hc.reference.timestep,
                                          equilibration=hc.reference.equilibration,
                                          production=hc.reference.production,
                                          frame_interval=hc.reference.frame_interval, platform=config.platform,
                                          seed=hc.seed), aa, progress=progress)
        map_reference(aa, cg)
    return cg


def _auto_aa_cutoff(config: StudyConfig, sp) -> float:
    """The all-atom cutoff of a training reference: the harness's rule for its box
    (:func:`openmm_cgnn.geometry.aa_cutoff_for_edge`)."""
    species = get_species(config.species)
    return aa_cutoff_for_edge(box_edge(config.n_molecules, species.molecular_mass,
                                       sp.density or species.default_density))


def _train_variant(variant: Variant, datasets: list[Path], config: StudyConfig, folder: Path,
                   verbose: bool = True) -> Path:
    from .export import export_model
    from .training import TrainConfig, train

    model_pt = folder / "model.pt"
    if model_pt.exists():
        return model_pt
    tc = TrainConfig.from_preset(config.train_preset)
    tc.tensor_order = variant.tensor_order
    tc.n_interaction_layers = variant.n_interaction_layers
    if config.max_epochs is not None:
        tc.max_epochs = config.max_epochs
    if variant.temperature_aware:     # U(R, T) = E(R) - T S(R), as 'openmm-cgnn train --temperature-aware'
        tc.temperature_aware, tc.temperature_form = True, "split"
    train(datasets, tc, folder / "model", overwrite=True, verbose=verbose)
    return export_model(folder / "model", model_pt, dtype="float32", overwrite=True)


def _distil_student(teacher_pt: Path, datasets: list[Path], config: StudyConfig, folder: Path,
                    verbose: bool = True) -> Path:
    """The ``student_preset`` network trained on the forces of the teacher (the model directory beside its
    exported ``teacher_pt``) over the teacher's training frames (:func:`openmm_cgnn.distill.distill`)."""
    from .distill import distill
    from .export import export_model
    from .training import TrainConfig

    model_pt = folder / "model.pt"
    if model_pt.exists():
        return model_pt
    tc = TrainConfig.from_preset(config.student_preset)
    if config.max_epochs is not None:
        tc.max_epochs = config.max_epochs
    distill(Path(teacher_pt).parent / "model", datasets, tc, folder / "model", overwrite=True, verbose=verbose)
    return export_model(folder / "model", model_pt, dtype="float32", overwrite=True)


def _fit_pair(datasets: list[Path], config: StudyConfig, folder: Path, gnn_cutoff_nm: float) -> Path:
    from .baselines import fit_pair_force_matching
    from .dataset import CGDataset

    path = folder / "pair.json"
    if path.exists():
        return path
    sets = [CGDataset.load(p) for p in datasets]
    half_box = min(float(box_widths(ds.boxes).min()) for ds in sets) / 2.0
    bin_width = 0.01
    cutoff = config.pair_cutoff or min(gnn_cutoff_nm, half_box)
    cutoff = np.floor(cutoff / bin_width - 1e-9) * bin_width
    from .training import TrainConfig

    tc = TrainConfig.from_preset(config.train_preset)   # the same volume-term treatment as the GNN models
    ff = fit_pair_force_matching(sets, cutoff=float(cutoff), bin_width=bin_width, fit_volume=tc.fit_volume,
                                 volume_source=tc.volume_source, volume_nvt_ps=tc.volume_nvt_ps,
                                 volume_nvt_equilibration_ps=tc.volume_nvt_equilibration_ps)
    folder.mkdir(parents=True, exist_ok=True)
    return ff.save(path)


def _gnn_cutoff(model_pt: Path | None) -> float:
    from .system import CGModel

    return CGModel(model_pt).metadata["cutoff_nm"] if model_pt is not None else 1.0


def _fit_pair_at_gnn_cutoff(datasets: list[Path], config: StudyConfig, folder: Path, first_gnn: Path | None) -> Path:
    return _fit_pair(datasets, config, folder, _gnn_cutoff(first_gnn))


def training_pieces(config: StudyConfig, out: str | Path, progress: bool = True) -> tuple[list, list]:
    """The study's first stage as pieces (:mod:`openmm_cgnn.cluster`): one all-atom reference per state
    point (training and evaluation), and every model's training after its data (the pair baseline after
    the first GNN, whose cutoff it takes). Returns (pieces, models): models are (name, key of the piece
    that returns its file, training state points), in the order of the study's table."""
    from .cluster import Piece, Result

    out = Path(out)
    pieces = [Piece(f"data/{label}", _training_reference, (label, config, out / "data", progress), gpu=True,
                    label=f"all-atom reference {label}")
              for label in _training_labels(config) + _evaluation_only_labels(config, out)]

    def data(labels: list[str]) -> list:
        return [Result(f"data/{label}") for label in labels]

    models: list[tuple[str, str, list[str]]] = []
    variants = [(v, config.train_states) for v in config.variants]
    if config.multi_variant:
        variants.append((Variant(MULTI_VARIANT, 2), config.multi_train_states))
    if config.thermal_variant:
        variants.append((Variant(THERMAL_VARIANT, 2, temperature_aware=True), config.multi_train_states))
    for v, states in variants:
        key = f"train/{v.name}"
        pieces.append(Piece(key, _train_variant, (v, data(states), config, out / "models" / v.name, progress),
                            gpu=True, label=f"training {v.name}"))
        models.append((v.name, key, states))
    if config.student_preset is not None:
        if f"train/{TEACHER}" not in {key for _, key, _ in models}:
            raise ConfigError(f"student_preset needs the teacher {TEACHER!r} among the variants", "student_preset")
        key = f"train/{STUDENT}"
        pieces.append(Piece(key, _distil_student, (Result(f"train/{TEACHER}"), data(config.train_states), config,
                                                   out / "models" / STUDENT, progress),
                            gpu=True, label=f"distilling {STUDENT} from {TEACHER}"))
        models.append((STUDENT, key, config.train_states))
    if config.pair_baseline:
        first = Result(models[0][1]) if models else None
        pieces.append(Piece("train/pair-fm", _fit_pair_at_gnn_cutoff,
                            (data(config.train_states), config, out / "models" / "pair-fm", first),
                            label="fitting pair-fm"))
        models.append(("pair-fm", "train/pair-fm", config.train_states))
    return pieces, models


def run_transfer_study(out: str | Path, config: StudyConfig | None = None, progress: bool = True,
                       cluster: Any = None) -> dict[str, Any]:
    """Run the study into ``out``; return the content of ``study.json``. Finished parts are reused.

    ``cluster``: where the pieces run (:mod:`openmm_cgnn.cluster`): None in this process, one after the
    other; a ``ClusterConfig`` on Dask (a local cluster sized to the machine, or ``scheduler=``). The
    all-atom references of every state point (in ``data/``) and the models' trainings run first (in
    parallel where they can: the evaluation references beside the trainings), then every model's
    comparison at every state point as one graph, each taking the references as given data sets.
    """
    from .files import make_output_dir
    from .cluster import PieceFailure, failures, runner_for

    config = config or StudyConfig()
    out = Path(out)
    make_output_dir(out / "data")
    write_json_atomic(out / "study_config.json", asdict(config))
    started = time.perf_counter()
    pieces, models = training_pieces(config, out, progress)
    training_refs = {f"data/{label}" for label in _training_labels(config)}
    ref_keys = [p.key for p in pieces if p.key.startswith("data/")]   # training first, then evaluation-only
    width = max(len(pieces), (len(models) or 1) * len(config.eval_states))
    with runner_for(cluster, width, cpu_only=config.platform in ("CPU", "Reference")) as runner:
        if runner.parallel:       # workers do not print (the runner prints a line per finished piece), and
            #                       may start in another folder
            pieces, models = training_pieces(config, out.absolute(), progress=False)
        trained = runner.run(pieces, progress=progress and runner.parallel,
                             on_done=_log_failure if runner.parallel else None)
        for key, failure in failures(trained).items():   # every model needs its data: stop at the first error
            if failure.cause is None and key in training_refs:   # (the harness retries the others and records it)
                failure.reraise()
        refs = [Path(trained[key]) for key in ref_keys if not isinstance(trained[key], PieceFailure)]
        paths = [(name, Path(trained[key]), states) for name, key, states in models]
        reports = _compare_all(paths, config, out, refs, runner, progress)
    rows: list[dict[str, Any]] = []
    for (name, _, trained_at), report in zip(paths, reports):
        rows.extend(_rows(name, trained_at, report))
    summary = _conclude(rows, config)
    result = {"format": "openmm-cgnn/transfer-study", "version": 1, "config": asdict(config), "rows": rows,
              "conclusion": summary, "seconds": time.perf_counter() - started,
              "units": {"rdf_mad": "1 (g(r) is dimensionless)", "adf_l1": "1", "density_relative_error": "1",
                        "temperature": "K"}}
    write_json_atomic(out / "study.json", result)
    write_study_plots(rows, out)
    write_text_atomic(out / "study.md", study_markdown(result))
    if progress:
        print(f"[study] {out / 'study.md'}")
        for line in summary["lines"]:
            print("  " + line)
    return result


def _log_failure(piece: Any, value: Any) -> list[str]:
    from .cluster import PieceFailure

    status = f"failed: {value.message}" if isinstance(value, PieceFailure) else "done"
    return [f"[study] {piece.label or piece.key}: {status}"]


def _compare_all(models: list[tuple[str, Path, list[str]]], config: StudyConfig, out: Path, known_refs: list[Path],
                 runner: Any, progress: bool) -> list[dict[str, Any]]:
    """Every model's harness report at the evaluation state points: existing reports are read, the others
    compared in one graph. ``known_refs``: the study's reference data sets (normally one per state point,
    from :func:`training_pieces`); the first model compared runs any reference that none covers (one that
    failed there), and the others use it (as a given reference) once it exists."""
    from .cluster import Result
    from .harness import plan_comparison
    from .statepoints import parse_state_points

    points = parse_state_points(",".join(config.eval_states))
    harness_config = _harness_config(config)
    reports: dict[str, dict[str, Any]] = {}
    plans = []
    shared: dict[str, Any] = {}
    known_refs = list(known_refs)
    for name, path, _ in models:
        report_dir = out / "models" / name / "report"
        if (report_dir / "report.json").exists():
            reports[name] = json.loads((report_dir / "report.json").read_text())
            _add_computed_refs(reports[name], report_dir, known_refs, points)
            continue
        plan = plan_comparison(path, points, report_dir, harness_config, reference_datasets=known_refs,
                               overwrite=True, progress=progress, key_prefix=f"{name}/",
                               shared_references=shared if plans else None)
        if not plans:      # the first comparison runs the references that no data set covers; share them
            covered = set(plan.given)
            shared = {sp.label(): Result(plan.keys(sp)[0]) for i, sp in enumerate(points) if i not in covered}
        plans.append((name, plan))
    if plans:
        platform_device = None
        for _, plan in plans:
            plan.start(runner, platform_device)
            platform_device = (plan.platform, plan.device)
        by_prefix = {plan.key_prefix: plan for _, plan in plans}

        def log(piece: Any, value: Any) -> list[str]:
            return by_prefix[piece.key.split("/", 1)[0] + "/"].log_piece(piece, value)

        results = runner.run([p for _, plan in plans for p in plan.pieces()], progress=progress and runner.parallel,
                             on_done=log if runner.parallel else None)
        for name, plan in plans:
            reports[name] = plan.finish(results)
    return [reports[name] for name, _, _ in models]


def _add_computed_refs(report: dict[str, Any], report_dir: Path, known_refs: list[Path], points: list) -> None:
    """The reference data sets a finished report computed (or reused), for the models compared after it,
    where no known data set serves that state point already (a study begun before the evaluation
    references ran beside the trainings has them in its first model's report). ``points``: the
    evaluation state points."""
    from .harness import _dataset_metadata

    def served(path: Path) -> set[int]:
        state = _dataset_metadata(path).get("state", {})
        return {i for i, sp in enumerate(points) if sp.matches(state)}

    taken = set().union(*(served(p) for p in known_refs)) if known_refs else set()
    for sp in report["state_points"]:
        ds = (sp.get("reference") or {}).get("dataset")
        if ds and sp["reference"].get("source") != "given":
            candidate = report_dir / ds
            if candidate.exists() and candidate not in known_refs and not served(candidate) & taken:
                known_refs.append(candidate)
                taken |= served(candidate)


def _rows(name: str, trained_at: list[str], report: dict[str, Any]) -> list[dict[str, Any]]:
    sps = report["state_points"]
    train_sp = next((s for s in sps if s["in_training"] and s["status"] == "complete"), None)
    base_mad = train_sp["rdf"]["mad"] if train_sp else None
    base_l1 = train_sp["adf"]["l1"] if train_sp else None
    base_mad_se = train_sp["rdf"].get("mad_se") if train_sp else None
    rows = []
    for s in sps:
        rdf, adf, dens = s.get("rdf") or {}, s.get("adf") or {}, s.get("density") or {}
        mad, l1 = rdf.get("mad"), adf.get("l1")
        rows.append({
            "model": name, "trained_at": trained_at, "state": s["label"], "ensemble": s["state"]["ensemble"],
            "temperature_K": s["state"]["temperature_K"], "in_training": s["in_training"], "status": s["status"],
            "rdf_mad": mad, "rdf_peak_height_error": rdf.get("peak_height_error"), "adf_l1": l1,
            "density_relative_error": dens.get("relative_error") if dens else None,
            "density_relative_error_se": dens.get("relative_error_se") if dens else None,
            "rdf_mad_relative_to_training": (mad / base_mad) if (mad is not None and base_mad) else None,
            "adf_l1_relative_to_training": (l1 / base_l1) if (l1 is not None and base_l1) else None,
            # error bars from the harness report (None in reports written without them)
            "rdf_mad_se": rdf.get("mad_se"), "rdf_mad_noise_floor": rdf.get("mad_noise_floor"),
            "rdf_mad_noise_floor_se": rdf.get("mad_noise_floor_se"),
            "adf_l1_se": adf.get("l1_se"), "adf_l1_noise_floor": adf.get("l1_noise_floor"),
            "adf_l1_noise_floor_se": adf.get("l1_noise_floor_se"),
            "rdf_mad_relative_to_training_se": 0.0 if s is train_sp and rdf.get("mad_se") is not None else
            _ratio_se(mad, rdf.get("mad_se"), base_mad, base_mad_se),
        })
    return rows


def _ratio_se(a: float | None, se_a: float | None, b: float | None, se_b: float | None) -> float | None:
    """First-order standard error of a / b from independent errors of a and b (None if anything is missing)."""
    if a is None or b is None or se_a is None or se_b is None or not b:
        return None
    return abs(a / b) * math.hypot(se_a / a if a else 0.0, se_b / b)


N_SIGMA = 2.0        # a difference is stated only beyond this many combined standard errors


def _mean_se(values: list[float], ses: list[float | None]) -> tuple[float | None, float | None]:
    """Mean of independent values (one per state point) and its standard error sqrt(sum se^2) / n;
    (None, None) without values, SE None when any value lacks one."""
    if not values:
        return None, None
    se = None if any(e is None for e in ses) else math.sqrt(sum(e * e for e in ses)) / len(values)
    return float(np.mean(values)), se


def _pm(value: float | None, se: float | None, spec: str = ".4f") -> str:
    if value is None:
        return "\u2014"
    return format(value, spec) + (f" \u00b1 {format(se, spec.lstrip('+'))}" if se is not None else " (no error bar)")


def conclude(rows: list[dict[str, Any]], config: StudyConfig) -> dict[str, Any]:
    """The conclusion of a study from its rows (``study.json``'s ``rows``): ``per_model`` numbers, ``lines``,
    ``n_sigma`` and ``claim`` (-1: HIP-NN-TS lower beyond 2 sigma, +1: pair lower, 0: the data cannot tell,
    None: no error bars); ``thermal_growth`` and ``thermal_claim`` for the temperature-aware model
    (:func:`error_growth`; -1: its error grows less than ``GROWTH_TARGET`` times beyond 2 sigma, +1: more,
    0: the data cannot tell, None: no error bars or no growth). See ``_conclude``."""
    return _conclude(rows, config)


def error_growth(rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """How much a model's RDF MAD grows from its training temperatures to the farthest temperature tested.

    ``growth`` = (RDF MAD at the temperature farthest from every training temperature) / (mean RDF MAD at
    its training state points), over the model's NVT rows (the reference density), with the first-order
    standard error ``growth_se`` from the rows' ``rdf_mad_se`` (the state points are separate runs, so
    independent). Where two tested temperatures are equally far, the larger growth counts. Returns None
    when the model has no NVT training row or no NVT row away from training; else a dict with
    ``growth``, ``growth_se`` (None without error bars), ``training_K`` (the training temperatures evaluated),
    ``training_not_evaluated_K`` (those of ``trained_at`` that were not; distances count from them too),
    ``farthest_K``, ``farthest_state``,
    ``farthest_rdf_mad`` (+ ``_se``), ``training_rdf_mad_mean`` (+ ``_se``), ``failed`` (the farthest
    run did not complete, or a training run did not: then ``growth`` is None), and ``training_above_floor``,
    ``farthest_above_floor`` (:func:`~openmm_cgnn.analysis.significant_difference` of each error against its
    noise floor: +1 a real error, 0 within 2 sigma of sampling noise, None without floors).
    """
    from .analysis import significant_difference

    from .statepoints import parse_state_point

    mine = [r for r in rows if r["model"] == model and r["ensemble"] == "NVT"]
    trained = [r for r in mine if r["in_training"]]
    away = [r for r in mine if not r["in_training"]]
    if not trained or not away:
        return None
    train_t = sorted({float(r["temperature_K"]) for r in trained})
    # distances count from every training temperature, evaluated or not (``trained_at``)
    all_train_t = set(train_t)
    for r in mine:
        for label in r.get("trained_at") or []:
            all_train_t.add(float(parse_state_point(label).temperature))

    def distance(r: dict[str, Any]) -> float:
        return min(abs(float(r["temperature_K"]) - t) for t in all_train_t)

    far = max(distance(r) for r in away)
    farthest = [r for r in away if distance(r) == far]
    out: dict[str, Any] = {"training_K": train_t, "farthest_K": None, "farthest_state": None, "growth": None,
                           "growth_se": None, "farthest_rdf_mad": None, "farthest_rdf_mad_se": None,
                           "training_rdf_mad_mean": None, "training_rdf_mad_mean_se": None, "failed": None,
                           "training_above_floor": None, "farthest_above_floor": None,
                           "training_not_evaluated_K": sorted(all_train_t - set(train_t))}

    def usable(r: dict[str, Any]) -> bool:
        return r["status"] == "complete" and r["rdf_mad"] is not None

    if not all(usable(r) for r in trained):
        bad = next(r for r in trained if not usable(r))
        out.update(failed=bad["state"], farthest_K=float(farthest[0]["temperature_K"]),
                   farthest_state=farthest[0]["state"])
        return out
    base, base_se = _mean_se([r["rdf_mad"] for r in trained], [r.get("rdf_mad_se") for r in trained])
    out.update(training_rdf_mad_mean=base, training_rdf_mad_mean_se=base_se)
    if all(r.get("rdf_mad_noise_floor") is not None for r in trained):
        floor, floor_se = _mean_se([r["rdf_mad_noise_floor"] for r in trained],
                                   [r.get("rdf_mad_noise_floor_se") for r in trained])
        out["training_above_floor"] = significant_difference(base, base_se, floor, floor_se, N_SIGMA)
    broken = [r for r in farthest if not usable(r)]
    if broken:
        out.update(failed=broken[0]["state"], farthest_K=float(broken[0]["temperature_K"]),
                   farthest_state=broken[0]["state"])
        return out
    best = None
    for r in farthest:
        g = r["rdf_mad"] / base if base else None
        if g is not None and (best is None or g > best[0]):
            best = (g, _ratio_se(r["rdf_mad"], r.get("rdf_mad_se"), base, base_se), r)
    if best is None:
        return out
    g, g_se, r = best
    out.update(growth=g, growth_se=g_se, farthest_K=float(r["temperature_K"]), farthest_state=r["state"],
               farthest_rdf_mad=r["rdf_mad"], farthest_rdf_mad_se=r.get("rdf_mad_se"),
               farthest_above_floor=significant_difference(r["rdf_mad"], r.get("rdf_mad_se"),
                                                           r.get("rdf_mad_noise_floor"),
                                                           r.get("rdf_mad_noise_floor_se"), N_SIGMA))
    return out


def _growth_line(name: str, growth: dict[str, Any] | None, target: float = GROWTH_TARGET) -> tuple[str, int | None]:
    """The conclusion line on a model's error growth (:func:`error_growth`) against ``target`` and its claim
    (-1 below the target beyond ``N_SIGMA``, +1 above, 0 cannot tell, None no verdict)."""
    from .analysis import significant_difference

    if growth is None:
        return f"{name}: no error growth (no NVT state point at and away from its training temperatures).", None
    trained = ", ".join(f"{t:g}" for t in growth["training_K"]) + " K"
    missing = growth.get("training_not_evaluated_K") or []
    if missing:
        trained += f"; also trained at {', '.join(f'{t:g}' for t in missing)} K, not evaluated there"
    if growth["failed"]:
        return (f"{name}: the run at {growth['failed']} did not complete, so its error growth from {trained} to "
                f"{growth['farthest_K']:g} K cannot be computed (a failure to transfer there).", None)
    if growth["growth"] is None:
        return f"{name}: its training-point RDF MAD is zero; no error growth can be computed.", None
    claim = significant_difference(growth["growth"], growth["growth_se"], target, 0.0, N_SIGMA)
    verdict = {
        -1: f"below {target:g}x by more than {N_SIGMA:g} sigma: the target (<= {target:g}x) holds here",
        1: f"above {target:g}x by more than {N_SIGMA:g} sigma: the target (<= {target:g}x) fails here",
        0: f"within {N_SIGMA:g} sigma of {target:g}x: the data cannot tell whether the target (<= {target:g}x) "
           "holds",
        None: f"without error bars the data cannot tell whether it stays <= {target:g}x",
    }[claim]
    line = (f"{name}: RDF MAD grows {_pm(growth['growth'], growth['growth_se'], '.2f')}x from its training "
            f"temperatures ({trained}; mean "
            f"{_pm(growth['training_rdf_mad_mean'], growth['training_rdf_mad_mean_se'])}) to the farthest tested, "
            f"{growth['farthest_K']:g} K ({_pm(growth['farthest_rdf_mad'], growth['farthest_rdf_mad_se'])}): "
            f"{verdict}.")
    noisy = [where for where, key in (("its training points", "training_above_floor"),
                                      (f"{growth['farthest_K']:g} K", "farthest_above_floor"))
             if growth[key] is not None and growth[key] != 1]
    if noisy:
        line += (f" But its error at {' and at '.join(noisy)} is not above the noise floor by {N_SIGMA:g} sigma, "
                 "so this ratio measures sampling noise as much as the model.")
    return line, claim


def _conclude(rows: list[dict[str, Any]], config: StudyConfig) -> dict[str, Any]:
    """Mean errors away from training per model, with standard errors and noise floors, and verdicts that
    say no more than the error bars allow.

    A model's error counts as real only where it exceeds its noise floor (two halves of the all-atom run)
    by more than ``N_SIGMA`` combined standard errors; HIP-NN-TS (l=2) and the pair baseline count as
    different only where their mean off-training RDF MADs differ by more than ``N_SIGMA``
    sqrt(se_a^2 + se_b^2). Otherwise the lines say that the data cannot tell. The means over state points
    treat the state points as independent (they are separate runs).
    """
    from .analysis import significant_difference

    per_model: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        off = [r for r in mine if not r["in_training"] and r["status"] == "complete" and r["rdf_mad"] is not None]
        on = [r for r in mine if r["in_training"] and r["rdf_mad"] is not None]
        mad, mad_se = _mean_se([r["rdf_mad"] for r in off], [r.get("rdf_mad_se") for r in off])
        with_floor = [r for r in off if r.get("rdf_mad_noise_floor") is not None]
        floor, floor_se = (None, None)
        if len(with_floor) == len(off):
            floor, floor_se = _mean_se([r["rdf_mad_noise_floor"] for r in off],
                                       [r.get("rdf_mad_noise_floor_se") for r in off])
        per_model[name] = {
            "train_rdf_mad": on[0]["rdf_mad"] if on else None,
            "train_rdf_mad_se": on[0].get("rdf_mad_se") if on else None,
            "off_rdf_mad_mean": mad,
            "off_rdf_mad_mean_se": mad_se,
            "off_rdf_mad_noise_floor_mean": floor,
            "off_rdf_mad_noise_floor_mean_se": floor_se,
            "off_rdf_mad_above_floor": significant_difference(mad, mad_se, floor, floor_se, N_SIGMA),
            "off_adf_l1_mean": float(np.mean([r["adf_l1"] for r in off if r["adf_l1"] is not None]))
            if any(r["adf_l1"] is not None for r in off) else None,
            "off_rdf_mad_relative_mean": float(np.mean([r["rdf_mad_relative_to_training"] for r in off
                                                        if r["rdf_mad_relative_to_training"] is not None]))
            if any(r["rdf_mad_relative_to_training"] is not None for r in off) else None,
            "n_blew_up": sum(1 for r in mine if r["status"] != "complete"),
        }
    lines = []
    claim = ratio = ratio_se = None
    gnn = per_model.get("hipnn-ts-l2")
    pair = per_model.get("pair-fm")
    if gnn and pair and gnn["off_rdf_mad_mean"] is not None and pair["off_rdf_mad_mean"] is not None:
        g, p = gnn["off_rdf_mad_mean"], pair["off_rdf_mad_mean"]
        g_se, p_se = gnn["off_rdf_mad_mean_se"], pair["off_rdf_mad_mean_se"]
        claim = significant_difference(g, g_se, p, p_se, N_SIGMA)
        combined = math.hypot(g_se, p_se) if g_se is not None and p_se is not None else None
        verdict = {
            -1: f"HIP-NN-TS is lower by more than {N_SIGMA:g} sigma: the paper's claim holds here",
            1: f"the pair model is lower by more than {N_SIGMA:g} sigma: the paper's claim does not hold here",
            0: f"the difference is within {N_SIGMA:g} sigma of the combined uncertainty: the data cannot tell "
               "whether the paper's claim holds",
            None: "without error bars on both sides the data cannot tell whether the paper's claim holds",
        }[claim]
        ratio, ratio_se = (g / p, _ratio_se(g, g_se, p, p_se)) if p else (None, None)
        lines.append(f"Away from training, HIP-NN-TS (l=2) RDF MAD {_pm(g, g_se)} vs pair {_pm(p, p_se)} "
                     f"(difference {_pm(g - p, combined, '+.4f')}"
                     + (f", ratio {_pm(ratio, ratio_se, '.2f')}" if ratio is not None else "") + f"): {verdict}.")
        lines.append(_per_state_verdicts(rows))
    for name, m in per_model.items():
        if m["off_rdf_mad_mean"] is None:
            continue
        line = (f"{name}: training-point RDF MAD {_pm(m['train_rdf_mad'], m['train_rdf_mad_se'])}, off-training "
                f"mean {_pm(m['off_rdf_mad_mean'], m['off_rdf_mad_mean_se'])}")
        if m["off_rdf_mad_relative_mean"] is not None:
            line += f" ({m['off_rdf_mad_relative_mean']:.2f}x its training error)"
        above = m["off_rdf_mad_above_floor"]
        if m["off_rdf_mad_noise_floor_mean"] is None:
            line += "; no noise floor, so it cannot be told from sampling noise"
        else:
            floor = _pm(m["off_rdf_mad_noise_floor_mean"], m["off_rdf_mad_noise_floor_mean_se"])
            line += f"; noise floor {floor}: " + {
                1: f"a real error (above the floor by more than {N_SIGMA:g} sigma)",
                0: f"within {N_SIGMA:g} sigma of the floor, so the data cannot tell it from sampling noise",
                -1: "below the floor (the floor is conservative): no error this run length can resolve",
                None: "without error bars the data cannot tell it from sampling noise",
            }[above]
        if m["n_blew_up"]:
            line += f"; {m['n_blew_up']} runs did not complete"
        lines.append(line)
    thermal_growth = thermal_claim = None
    for name in per_model:
        per_model[name]["error_growth"] = error_growth(rows, name)
    if THERMAL_VARIANT in per_model:
        thermal_growth = per_model[THERMAL_VARIANT]["error_growth"]
        line, thermal_claim = _growth_line(f"Temperature-aware model ({THERMAL_VARIANT})", thermal_growth)
        multi = per_model.get(MULTI_VARIANT, {}).get("error_growth")
        if multi and multi.get("growth") is not None:
            line += (f" The same data without the temperature ({MULTI_VARIANT}): "
                     f"{_pm(multi['growth'], multi['growth_se'], '.2f')}x to {multi['farthest_K']:g} K.")
        lines.append(line)
    student = _student_line(per_model)
    if student is not None:
        lines.append(student["line"])
    if config.preset in ("toy", "small", "medium"):
        lines.append(f"Preset '{config.preset}': {config.n_molecules} molecules, CPU-sized runs and networks. "
                     "The error bars cover the sampling noise of the runs only, not the spread between networks "
                     "trained again (compare the variants); use --preset full on a GPU for a conclusion.")
    return {"per_model": per_model, "lines": lines, "n_sigma": N_SIGMA, "claim": claim,
            "gnn_to_pair_ratio": ratio, "gnn_to_pair_ratio_se": ratio_se,
            "thermal_growth": thermal_growth, "thermal_claim": thermal_claim, "growth_target": GROWTH_TARGET,
            "student": student}


def _student_line(per_model: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The distilled student's mean off-training RDF MAD against its teacher's: the ratio with its
    propagated standard error, "within" the 1.2x target only when ratio + 2 SE <= 1.2, "beyond" only when
    ratio - 2 SE > 1.2 (otherwise the data cannot tell)."""
    st, te = per_model.get(STUDENT), per_model.get(TEACHER)
    if not st or not te or st["off_rdf_mad_mean"] is None or not te["off_rdf_mad_mean"]:
        return None
    ratio = st["off_rdf_mad_mean"] / te["off_rdf_mad_mean"]
    se = _ratio_se(st["off_rdf_mad_mean"], st["off_rdf_mad_mean_se"], te["off_rdf_mad_mean"],
                   te["off_rdf_mad_mean_se"])
    if se is None:
        verdict = None
    else:
        verdict = 1 if ratio + N_SIGMA * se <= STUDENT_TARGET else (-1 if ratio - N_SIGMA * se > STUDENT_TARGET else 0)
    words = {1: f"within the {STUDENT_TARGET:g}x target beyond {N_SIGMA:g} sigma",
             -1: f"beyond the {STUDENT_TARGET:g}x target by more than {N_SIGMA:g} sigma",
             0: f"the data cannot tell whether it is within {STUDENT_TARGET:g}x", None: "no error bars"}[verdict]
    line = (f"Distilled student ({STUDENT}, from {TEACHER}): off-training RDF MAD "
            f"{_pm(st['off_rdf_mad_mean'], st['off_rdf_mad_mean_se'])} vs the teacher's "
            f"{_pm(te['off_rdf_mad_mean'], te['off_rdf_mad_mean_se'])}, ratio {_pm(ratio, se, '.2f')}: {words}.")
    return {"ratio": ratio, "ratio_se": se, "target": STUDENT_TARGET, "verdict": verdict, "line": line}


def _per_state_verdicts(rows: list[dict[str, Any]]) -> str:
    """Where, state point by state point, HIP-NN-TS (l=2) and the pair model differ beyond 2 sigma."""
    from .analysis import significant_difference

    by_state: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["model"] in ("hipnn-ts-l2", "pair-fm") and not r["in_training"] and r["status"] == "complete":
            by_state.setdefault(r["state"], {})[r["model"]] = r
    groups: dict[Any, list[str]] = {-1: [], 1: [], 0: [], None: []}
    for state, pair_rows in by_state.items():
        if len(pair_rows) == 2:
            g, p = pair_rows["hipnn-ts-l2"], pair_rows["pair-fm"]
            groups[significant_difference(g["rdf_mad"], g.get("rdf_mad_se"), p["rdf_mad"], p.get("rdf_mad_se"),
                                          N_SIGMA)].append(state)
    parts = [f"HIP-NN-TS lower at {', '.join(groups[-1]) or 'none'}", f"pair lower at {', '.join(groups[1]) or 'none'}",
             f"cannot tell at {', '.join(groups[0] + groups[None]) or 'none'}"]
    return f"State point by state point (RDF MAD, {N_SIGMA:g} sigma): " + "; ".join(parts) + "."
