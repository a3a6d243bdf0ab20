"""The ``openmm-cgnn`` command line: a thin layer over the pipeline modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HIPPYNN_USE_CUSTOM_KERNELS", "False")


class CLIError(Exception):
    """An error to show the user as one line."""


def _add_reference(sub) -> None:
    p = sub.add_parser("reference", help="run an all-atom reference simulation and save positions, forces, boxes",
                       description="Run an all-atom OpenMM reference (NVT at --density, or NPT with --pressure) and "
                                   "save frames of positions (nm), forces (kJ/mol/nm), boxes and energies to an NPZ file. "
                                   "Rerunning an interrupted command resumes it.")
    p.add_argument("--species", default="methanol", help="built-in liquid: methanol or water (default methanol)")
    p.add_argument("--molecules", type=int, default=512, help="number of molecules (default 512)")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature, K (default 300)")
    p.add_argument("--density", type=float, default=None,
                   help="density, g/cm^3: fixed for NVT, initial for NPT (default: the species' liquid density)")
    p.add_argument("--pressure", type=float, default=None, help="pressure, bar: run NPT with a Monte Carlo barostat")
    p.add_argument("--forcefield", default=None,
                   help="force field name (methanol: oplsaa (default), charmm36; water: spce (default), tip3p, opc3) "
                        "or the path of an OpenMM force-field XML")
    p.add_argument("--cutoff", type=float, default=1.0, help="nonbonded cutoff, nm (default 1.0)")
    p.add_argument("--timestep", type=float, default=2.0, help="time step, fs (default 2)")
    p.add_argument("--equilibration", type=float, default=100.0, help="equilibration, ps (default 100)")
    p.add_argument("--ns", type=float, default=1.0, help="production length, ns (default 1)")
    p.add_argument("--frame-interval", type=float, default=1.0, help="time between saved frames, ps (default 1)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--platform", default=None, help="OpenMM platform (default: CUDA if available, else CPU)")
    p.add_argument("--out", required=True, help="output NPZ file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_reference)


def _cmd_reference(args) -> None:
    from .reference import ReferenceConfig, run_reference

    cfg = ReferenceConfig(species=args.species, n_molecules=args.molecules, temperature=args.temperature,
                          density=args.density, pressure=args.pressure, forcefield=args.forcefield,
                          cutoff=args.cutoff, timestep=args.timestep * 1e-3, equilibration=args.equilibration,
                          production=args.ns * 1000.0, frame_interval=args.frame_interval, seed=args.seed,
                          platform=args.platform)
    from .species import get_species
    get_species(cfg.species)  # fail fast on an unknown species
    run_reference(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)


def _add_map(sub) -> None:
    p = sub.add_parser("map", help="map an all-atom reference file onto CG beads (a CG data set)",
                       description="Map atomic positions to bead centres of mass and atomic forces to summed bead "
                                   "forces; write a CG data set (NPZ) for training.")
    p.add_argument("--in", dest="inp", required=True, help="all-atom reference NPZ from 'openmm-cgnn reference'")
    p.add_argument("--out", required=True, help="output CG data set NPZ")
    p.add_argument("--mapping", default=None,
                   help="JSON file: residue name -> list of {name, atoms}; default one bead per molecule")
    p.add_argument("--skip", type=int, default=0, help="drop this many leading frames")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_map)


def _cmd_map(args) -> None:
    from .mapping import load_mapping_spec, map_reference

    spec = load_mapping_spec(args.mapping) if args.mapping else None
    ds = map_reference(args.inp, args.out, spec, overwrite=args.overwrite, skip=args.skip)
    print(f"[map] {ds.n_frames} frames x {ds.n_beads} beads ({', '.join(ds.type_names)}) -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmm-cgnn", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [_add_reference, _add_map]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._io import OutputExistsError
    from .dataset import DatasetFormatError
    from .mapping import MappingError
    from .reference import ReferenceError

    expected = (CLIError, OutputExistsError, DatasetFormatError, MappingError, ReferenceError, FileNotFoundError,
                ValueError)
    try:
        args.func(args)
    except expected as exc:
        print(f"openmm-cgnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openmm-cgnn {args.command}: interrupted; rerun the same command to resume where possible",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
