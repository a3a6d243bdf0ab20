"""The ``openmm-cgnn`` command line: a thin layer over the pipeline modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CGNNError, ConfigError


class CLIError(CGNNError):
    """An error to show the user as one line."""


# configuration fields whose command-line option is not "--" + the field name with dashes
_OPTION_DEST = {"production": "ns", "n_molecules": "molecules", "n_beads": "beads", "max_epochs": "epochs",
                "start_dataset": "start", "torch_threads": "threads", "tensor_order": "tensor_order",
                "use_cuda_graphs": "cuda_graphs", "cuda_graph_warmup_steps": "cuda_graph_warmup"}
_CONVERTED = {"production", "timestep"}   # --ns (ns -> ps) and --timestep (fs -> ps)


def _one_line(exc: CGNNError, args: argparse.Namespace) -> str:
    """The error's message on one line, naming the command-line option of a bad configuration field."""
    message = " ".join(str(exc).split("\n")).strip() or type(exc).__name__
    field = getattr(exc, "field", None) if isinstance(exc, ConfigError) else None
    if field:
        dest = _OPTION_DEST.get(field, field)
        option = "--" + dest.replace("_", "-")
        value = vars(args).get(dest)
        if value is not None and option not in message:   # the option was given (or defaulted)
            message = f"{option}: {message}"
            if field in _CONVERTED:   # the configuration holds it in other units than the option
                message += f" (given as {option} {value:g})"
    return message


def _add_reference(sub) -> None:
    p = sub.add_parser("reference", help="run an all-atom reference simulation and save positions, forces, boxes",
                       description="Run an all-atom OpenMM reference (NVT at --density, or NPT with --pressure) and "
                                   "save frames of positions (nm), forces (kJ/mol/nm), boxes and energies to an NPZ file. "
                                   "Rerunning an interrupted command resumes it.")
    p.add_argument("--species", default="methanol",
                   help="built-in liquid: methanol, ethanol or water (default methanol)")
    p.add_argument("--molecules", type=int, default=512, help="number of molecules (default 512)")
    _add_aa_input_args(p)
    p.add_argument("--temperature", type=float, default=300.0, help="temperature, K (default 300)")
    p.add_argument("--density", type=float, default=None,
                   help="density, g/cm^3: fixed for NVT, initial for NPT (default: the species' liquid density)")
    p.add_argument("--pressure", type=float, default=None, help="pressure, bar: run NPT with a Monte Carlo barostat")
    p.add_argument("--forcefield", default=None,
                   help="force field name (methanol, ethanol: oplsaa (default), charmm36; water: spce (default), "
                        "tip3p, opc3, spce-opls) "
                        "or the path of an OpenMM force-field XML")
    p.add_argument("--cutoff", type=float, default=1.0, help="nonbonded cutoff, nm (default 1.0)")
    p.add_argument("--timestep", type=float, default=2.0, help="time step, fs (default 2)")
    p.add_argument("--equilibration", type=float, default=100.0, help="equilibration, ps (default 100)")
    p.add_argument("--ns", type=float, default=1.0, help="production length, ns (default 1)")
    p.add_argument("--frame-interval", type=float, default=1.0, help="time between saved frames, ps (default 1)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--platform", default=None, help="OpenMM platform (default: CUDA if available, else CPU)")
    _add_output(p, "output NPZ file")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_reference)


def _add_output(p, help: str, overwrite: str = "replace an existing output") -> None:
    """The required --out (``help`` says what it is) and --overwrite."""
    p.add_argument("--out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help=overwrite)


def _cmd_reference(args) -> None:
    from .reference import ReferenceConfig, run_reference

    cfg = ReferenceConfig(species=args.species, n_molecules=args.molecules, temperature=args.temperature,
                          density=args.density, pressure=args.pressure, forcefield=args.forcefield,
                          cutoff=args.cutoff, timestep=args.timestep * 1e-3, equilibration=args.equilibration,
                          production=args.ns * 1000.0, frame_interval=args.frame_interval, seed=args.seed,
                          platform=args.platform, **_aa_input_fields(args))
    if cfg.components is None and cfg.box is None:
        from .species import get_species
        get_species(cfg.species)  # fail fast on an unknown species
    run_reference(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)


def _add_aa_input_args(p, override: bool = False) -> None:
    """The options that name an all-atom system other than a built-in species (reference and compare)."""
    pre = "instead of the model's all-atom system: " if override else ""
    p.add_argument("--components", default=None, metavar="NAME:COUNT,...",
                   help=pre + "a mixture or a molecule of your own: built-in species or molecule files (PDB, "
                        "PDBx) with counts, packed at --density, e.g. methanol:100,water:200 or mol.pdb:64")
    p.add_argument("--box", default=None, metavar="FILE",
                   help=pre + "a whole periodic box as PDB or PDBx/mmCIF (with --forcefield-xml or --system-xml); "
                              "--density rescales it for NVT")
    p.add_argument("--system-xml", default=None, metavar="FILE",
                   help=pre + "a serialised OpenMM System (XmlSerializer) of the atoms in --box")
    p.add_argument("--forcefield-xml", nargs="+", default=None, metavar="FILE",
                   help="force-field XML files (as app.ForceField takes) for --box or molecule-file components")


def _aa_input_fields(args) -> dict:
    components = None
    if args.components:
        from .aa_input import parse_components

        components = parse_components(args.components)
        from .aa_input import is_builtin

        # absolute paths: the model records them, and the harness may run elsewhere
        components = [[name if is_builtin(name) else _absolute(name), n] for name, n in components]
    return {"components": components, "box": _absolute(args.box), "system_xml": _absolute(args.system_xml),
            "forcefield_files": [_absolute(f) if Path(f).exists() else f for f in args.forcefield_xml]
            if args.forcefield_xml else None}


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _add_import(sub) -> None:
    p = sub.add_parser("import-trr", help="import an all-atom GROMACS TRR trajectory with forces as a reference file",
                       description="Read positions, forces and boxes from a TRR (written with forces, e.g. GROMACS "
                                   "nstfout > 0) and a topology file (PDB, GRO, ... as mdtraj reads), and write the "
                                   "same all-atom reference NPZ as 'openmm-cgnn reference', ready for 'map'.")
    p.add_argument("--trr", required=True, help="TRR trajectory with forces")
    p.add_argument("--top", required=True, help="topology file of the same atoms (PDB, GRO, PSF, prmtop...)")
    p.add_argument("--temperature", type=float, required=True, help="temperature of the run, K")
    p.add_argument("--pressure", type=float, default=None, help="pressure of an NPT run, bar (omit for NVT)")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame (default 1)")
    _add_output(p, "output NPZ (all-atom reference format)")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args) -> None:
    from .trajectory_import import import_trr

    out = import_trr(args.trr, args.top, args.out, args.temperature, args.pressure, args.stride, args.overwrite)
    print(f"[import-trr] {args.trr} -> {out}")


def _add_map(sub) -> None:
    p = sub.add_parser("map", help="map an all-atom reference file onto CG beads (a CG data set)",
                       description="Map atomic positions to bead centres of mass and atomic forces to summed bead "
                                   "forces; write a CG data set (NPZ) for training.")
    p.add_argument("--in", dest="inp", required=True, help="all-atom reference NPZ from 'openmm-cgnn reference'")
    _add_output(p, "output CG data set NPZ")
    p.add_argument("--mapping", default=None,
                   help="JSON file: residue name -> list of {name, atoms}; default one bead per molecule")
    p.add_argument("--skip", type=int, default=0, help="drop this many leading frames")
    p.set_defaults(func=_cmd_map)


def _cmd_map(args) -> None:
    from .mapping import load_mapping_spec, map_reference

    spec = load_mapping_spec(args.mapping) if args.mapping else None
    ds = map_reference(args.inp, args.out, spec, overwrite=args.overwrite, skip=args.skip)
    print(f"[map] {ds.n_frames} frames x {ds.n_beads} beads ({', '.join(ds.type_names)}) -> {args.out}")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="force-match a HIP-NN-TS model (plus repulsive prior) to CG data sets",
                       description="Train HIP-NN-TS by force matching on one or several CG data sets and write a "
                                   "model directory (weights, config.toml, prior.json, metrics.json, metadata.json).")
    p.add_argument("--data", nargs="+", required=True, help="CG data sets (NPZ) from 'openmm-cgnn map'")
    _add_hyperparameter_options(p, "tiny", "hyperparameters: tiny (CPU demos, tests), fast (small student network, "
                                "see distill) or paper (Shinkle et al. 2024; use a GPU)", "hyperparameters")
    p.add_argument("--tensor-order", type=int, choices=[0, 1, 2], default=None,
                   help="HIP-NN tensor order: 0 (HIP-NN), 1, 2 (HIP-NN-TS, default of the presets)")
    p.add_argument("--no-volume-term", action="store_true",
                   help="do not fit the volume term U_V by pressure matching (fitted by default when the data "
                        "carry all-atom pressures)")
    p.add_argument("--volume-from", choices=["cg-nvt", "mapped"], default=None,
                   help="CG pressure for pressure matching: a short CG NVT run (cg-nvt, default of the paper "
                        "preset) or the mapped frames (mapped, default of the tiny preset)")
    p.add_argument("--temperature-aware", action="store_true",
                   help="train U(R, T) = E(R) - T S(R) on data sets at two or more temperatures; the exported "
                        "model takes the run temperature as the TorchForce global parameter 'temperature'")
    p.add_argument("--temperature-form", choices=["split", "input"], default=None,
                   help="with --temperature-aware: split U into E(R) - T S(R) (split, default) or give T to the "
                        "network as an input feature of every bead (input)")
    _add_device_options(p)
    _add_output(p, "model directory to create")
    p.set_defaults(func=_cmd_train)


def _add_hyperparameter_options(p, preset: str, preset_help: str, what: str) -> None:
    """--preset (default ``preset``), --config (a TOML file of ``what``) and --epochs (train and distill)."""
    p.add_argument("--preset", default=preset, choices=["tiny", "fast", "paper"], help=preset_help)
    p.add_argument("--config", default=None, help=f"TOML file of {what} (overrides --preset)")
    p.add_argument("--epochs", type=int, default=None, help="maximum number of epochs")
    p.add_argument("--force-mode", choices=["explicit", "autograd"], default=None,
                   help="forces in training: written out by hand for one-block networks (explicit, default; "
                        "one backward pass) or by autograd (a double backward)")


def _train_config(args):
    """The TrainConfig of --config or --preset, with --epochs and the device options applied."""
    from .training import TrainConfig

    cfg = TrainConfig.from_toml(Path(args.config)) if args.config else TrainConfig.from_preset(args.preset)
    if args.epochs is not None:
        cfg.max_epochs = args.epochs
    if args.force_mode is not None:
        cfg.force_mode = args.force_mode
    _apply_device_options(cfg, args)
    return cfg


def _print_test_fit(model_dir, head: str, rmse_label: str) -> None:
    """One line: ``head``, then the test-split force RMSE (kJ/mol/nm) and R2 of a trained model directory."""
    metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    test = metrics.get("test", {}).get("all", {})
    print(f"{head}; {rmse_label} {test.get('rmse', float('nan')):.1f} kJ/mol/nm, R2 {test.get('r2', float('nan')):.3f}")


def _add_device_options(p) -> None:
    p.add_argument("--device", default=None,
                   help="training device: auto (a GPU when there is one; default), cpu, cuda, cuda:N")
    p.add_argument("--devices", type=int, default=None,
                   help="GPUs (or CPU processes) per node for data-parallel training via PyTorch Lightning "
                        "(DDP; default 1: one process)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes for data-parallel training (default 1)")


def _apply_device_options(cfg, args) -> None:
    for name in ("device", "devices", "num_nodes"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))


def _cmd_train(args) -> None:
    from .training import train

    cfg = _train_config(args)
    if args.tensor_order is not None:
        cfg.tensor_order = args.tensor_order
    if args.no_volume_term:
        cfg.fit_volume = False
    if args.volume_from is not None:
        cfg.volume_source = args.volume_from
    if args.temperature_aware:
        cfg.temperature_aware = True
    if args.temperature_form is not None:
        if not cfg.temperature_aware:
            raise ConfigError("--temperature-form needs --temperature-aware", "temperature_form")
        cfg.temperature_form = args.temperature_form
    cfg.validate()
    out = train(args.data, cfg, args.out, overwrite=args.overwrite)
    if out is None:  # another process of a distributed run: rank 0 reports
        return
    _print_test_fit(out, f"[train] model in {out}", "test force RMSE")


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train a small student network on a trained teacher's forces",
                       description="Relabel CG frames with a trained teacher's forces (network + prior) and train a "
                                   "smaller HIP-NN-TS student on them; the student is a normal model directory.")
    p.add_argument("--teacher", required=True, help="trained model directory of the teacher")
    p.add_argument("--data", nargs="+", required=True, help="CG data sets (NPZ) whose frames are relabelled")
    p.add_argument("--cg-runs", nargs="*", default=[],
                   help="'openmm-cgnn simulate' folders of the teacher's system: their frames are added")
    _add_hyperparameter_options(p, "fast", "student hyperparameters", "student hyperparameters")
    _add_device_options(p)
    _add_output(p, "student model directory to create")
    p.set_defaults(func=_cmd_distill)


def _cmd_distill(args) -> None:
    from .distill import distill

    cfg = _train_config(args)
    cfg.validate()
    out = distill(args.teacher, args.data, cfg, args.out, cg_runs=args.cg_runs, overwrite=args.overwrite)
    if out is None:
        return
    _print_test_fit(out, f"[distill] student in {out}", "test force RMSE against the teacher")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model as TorchScript for openmm-torch",
                       description="Write a TorchScript module forward(positions nm, boxvectors nm) -> energy kJ/mol "
                                   "that openmm-torch's TorchForce runs without Python.")
    p.add_argument("model_dir", help="model directory from 'openmm-cgnn train'")
    _add_output(p, "output .pt file")
    p.add_argument("--precision", default="float32", choices=["float32", "float64"])
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> None:
    from .export import export_model

    out = export_model(args.model_dir, args.out, dtype=args.precision, overwrite=args.overwrite)
    print(f"[export] {args.precision} TorchScript model -> {out}")


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="run CG molecular dynamics with an exported model in OpenMM",
                       description="Langevin NVT (or NPT with --pressure) CG MD through openmm-torch. Starts from a "
                                   "frame of a CG data set (--start) or a fresh lattice (--beads, --density). "
                                   "Rerunning an interrupted command resumes it.")
    p.add_argument("--model", required=True, help="exported model (.pt)")
    p.add_argument("--start", default=None, help="CG data set whose last frame (or --start-frame) starts the run")
    p.add_argument("--start-frame", type=int, default=-1)
    p.add_argument("--beads", type=int, default=None, help="fresh lattice of this many beads (one-type models)")
    p.add_argument("--density", type=float, default=None, help="density of the fresh lattice, g/cm^3")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--pressure", type=float, default=None, help="bar: NPT with a Monte Carlo barostat")
    p.add_argument("--timestep", type=float, default=2.0, help="fs (default 2); with --mts K the inner step")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (default 1)")
    p.add_argument("--equilibration", type=float, default=10.0, help="ps (default 10)")
    p.add_argument("--ns", type=float, default=0.1, help="production length, ns (default 0.1)")
    p.add_argument("--frame-interval", type=float, default=0.5, help="ps between saved frames (default 0.5)")
    p.add_argument("--platform", default=None, help="OpenMM platform (default CUDA if available, else CPU)")
    _add_speed_options(p)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's choice)")
    p.add_argument("--neighbour-capacity", type=int, default=0, metavar="K",
                   help="neighbours per bead in the model's fixed neighbour table (default: the capacity "
                        "recorded at export from the training data); raise it when a run stops with an overflow")
    _add_output(p, "output folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)


def _add_speed_options(p, harness: bool = False) -> None:
    """--cuda-graphs/--no-cuda-graphs, --mts, --mts-fast (simulate and compare) and --cuda-graph-warmup
    (simulate). For compare they override the harness settings only when given."""
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the model in CUDA graphs (openmm-torch's useCUDAGraphs; default: on for the CUDA "
                        "platform, off elsewhere; if the capture fails by default, the run goes on without)")
    if not harness:
        p.add_argument("--cuda-graph-warmup", type=int, default=None, metavar="CALLS",
                       help="model calls before the CUDA graph capture (CUDAGraphWarmupSteps; default openmm-torch's)")
    p.add_argument("--mts", type=int, default=None if harness else 1, metavar="K",
                   help="multiple time stepping: the network every K inner steps of the time step, the fast pair "
                        "force every inner step (MTSLangevinIntegrator; default 1: one time step)")
    p.add_argument("--mts-fast", default=None if harness else "prior", metavar="prior|PAIR.json",
                   help="the fast force of the inner steps: the model's repulsive prior (default) or a pair force "
                        "field from the pair baseline (.json); the network gets the rest, so the sum is the model")


def _cmd_simulate(args) -> None:
    from .simulate import CGSimulationConfig, run_cg_simulation

    if args.start is None and (args.beads is None or args.density is None):
        raise CLIError("give --start DATASET, or both --beads and --density for a fresh lattice")
    cfg = CGSimulationConfig(model=args.model, temperature=args.temperature, pressure=args.pressure,
                             timestep=args.timestep * 1e-3, friction=args.friction, equilibration=args.equilibration,
                             production=args.ns * 1000.0, frame_interval=args.frame_interval, seed=args.seed,
                             platform=args.platform, start_dataset=args.start, start_frame=args.start_frame,
                             n_beads=args.beads, density=args.density, use_cuda_graphs=args.cuda_graphs,
                             torch_threads=args.threads, cuda_graph_warmup_steps=args.cuda_graph_warmup,
                             mts=args.mts, mts_fast=args.mts_fast, neighbour_capacity=args.neighbour_capacity)
    run_cg_simulation(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)


def _add_cluster_options(p) -> None:
    """--workers and --scheduler: where the runs of a sweep go (compare, study; openmm_cgnn.cluster)."""
    g = p.add_argument_group("where the runs go (Dask)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="workers of a local Dask cluster (default: one per GPU, else one per CPU core, never more "
                        "than can run at once); 1 runs everything in this process, one run after the other")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster (tcp://host:8786 or a scheduler JSON file); its workers "
                        "must see --out under the same path and have openmm-cgnn installed")


def _cluster_config(args):
    from .cluster import ClusterConfig

    return ClusterConfig(scheduler=args.scheduler, workers=args.workers)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare a CG model with all-atom references at several state points",
                       description="For each state point: run (or reuse) the all-atom reference, run the CG model "
                                   "there on the same platform, and compare RDF, ADF and (NPT) density. Writes "
                                   "report.json, report.md, rdf.png, adf.png, density.png, curves.npz and config.json. "
                                   "Rerunning an interrupted command reuses the finished runs.")
    p.add_argument("--model", required=True, help="exported model (.pt) from 'openmm-cgnn export'")
    p.add_argument("--state-points", required=True,
                   help="comma-separated TEMPERATURE:DENSITY (NVT, e.g. 300K:0.787g/cm3) or TEMPERATURE:PRESSURE "
                        "(NPT, e.g. 300K:1bar), or a TOML file of state points")
    _add_output(p, "output folder of the report", "replace an existing report")
    p.add_argument("--preset", default="default", choices=["tiny", "default", "full"],
                   help="run lengths: tiny (seconds, tests), default (a few CPU minutes per state point, 64 "
                        "molecules) or full (512 molecules, 0.5 ns runs: use a GPU)")
    p.add_argument("--config", default=None, help="harness settings as JSON (e.g. an earlier config.json); "
                                                  "overrides --preset")
    p.add_argument("--reference-data", nargs="+", default=None, metavar="DATASET",
                   help="CG data sets (from 'openmm-cgnn map') to use as the reference of the state points "
                        "they match")
    p.add_argument("--molecules", type=int, default=None, help="molecules of the all-atom runs (overrides the preset)")
    p.add_argument("--species", default=None,
                   help="built-in liquid of the all-atom runs instead of the one the model was trained on")
    _add_aa_input_args(p, override=True)
    p.add_argument("--mapping", default=None, help="JSON map (as for 'map') instead of the model's training map")
    p.add_argument("--platform", default=None,
                   help="OpenMM platform for every run (default CUDA if available, else CPU)")
    _add_speed_options(p, harness=True)
    _add_cluster_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> None:
    from dataclasses import replace

    from .harness import HarnessConfig, compare

    cfg = HarnessConfig.from_json(args.config) if args.config else HarnessConfig.from_preset(args.preset)
    if args.molecules is not None:
        cfg = replace(cfg, n_molecules=args.molecules)
    if args.platform is not None:
        cfg = replace(cfg, platform=args.platform)
    for option, name in (("cuda_graphs", "cg_cuda_graphs"), ("mts", "cg_mts"), ("mts_fast", "cg_mts_fast")):
        if getattr(args, option) is not None:
            cfg = replace(cfg, **{name: getattr(args, option)})
    inp = {k: v for k, v in _aa_input_fields(args).items() if v}
    if args.species is not None or inp:
        cfg = replace(cfg, species=args.species, system=inp or None)
    if args.mapping is not None:
        from .mapping import load_mapping_spec

        cfg = replace(cfg, mapping=load_mapping_spec(args.mapping))
    report = compare(args.model, args.state_points, args.out, cfg, reference_datasets=args.reference_data,
                     overwrite=args.overwrite, progress=not args.quiet, cluster=_cluster_config(args))
    print("\n".join(report["summary"]["lines"]))
    print(f"[compare] report: {Path(args.out) / 'report.md'}")
    failed = [s["label"] for s in report["state_points"] if s["status"] == "failed"]
    if failed:
        raise CLIError(f"{len(failed)} state point(s) could not be run ({', '.join(failed)}); see "
                       f"{Path(args.out) / 'report.md'} and state_points/*/error.txt")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the built-in methanol default (what 'make demo' runs)",
                       description="Reference -> map -> train -> export -> compare at the training state point, a "
                                   "hotter one and one at constant pressure; ends with the path of report.md. "
                                   "Stages whose output exists are reused.")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "full"],
                   help="cpu: about 15 minutes on 2 cores (tiny network); full: paper network and sizes, for a GPU")
    p.add_argument("--platform", default=None, help="OpenMM platform (default CUDA if available, else CPU)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> None:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.from_preset(args.preset)
    cfg.platform = args.platform
    run_demo(args.out, cfg)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="studies across state points (see 'openmm-cgnn study transfer --help')")
    studies = p.add_subparsers(dest="study", required=True)
    t = studies.add_parser("transfer", help="HIP-NN(-TS) variants against a pairwise force-matched baseline",
                           description="Train HIP-NN (l=0), HIP-NN-TS (l=1, 2; 1 and 2 interaction layers), an l=2 "
                                       "model on two state points, a temperature-aware model U(R, T) on the same two, "
                                       "a fast student distilled from the l=2 model (full preset) and a pair "
                                       "force-matching baseline, then compare all of them with the "
                                       "harness across temperatures and at constant pressure.")
    t.add_argument("--preset", default="small", choices=["toy", "small", "medium", "full"],
                   help="toy: under a minute (tests); small: a CPU hour; medium: a few hours on a CPU (216 "
                        "molecules); full: paper network and sizes, for a GPU")
    t.add_argument("--out", required=True, help="output folder (reused on rerun)")
    t.add_argument("--platform", default=None)
    _add_cluster_options(t)
    t.set_defaults(func=_cmd_study)


def _cmd_study(args) -> None:
    from .study import StudyConfig, run_transfer_study

    cfg = StudyConfig.from_preset(args.preset)
    cfg.platform = args.platform
    run_transfer_study(args.out, cfg, cluster=_cluster_config(args))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="openmm-cgnn", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"openmm-cgnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [_add_reference, _add_import, _add_map, _add_train, _add_distill, _add_export, _add_simulate,
                _add_compare, _add_demo, _add_study]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    shown = warnings.showwarning

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        if "openmm_cgnn" in str(filename):   # ours: one line in the same form as the errors
            print(f"openmm-cgnn {args.command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line_warning
    try:
        args.func(args)
    except CGNNError as exc:   # the user's input or an unphysical run; anything else is a bug: traceback
        print(f"openmm-cgnn {args.command}: error: {_one_line(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openmm-cgnn {args.command}: interrupted; rerun the same command to resume where possible",
              file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
