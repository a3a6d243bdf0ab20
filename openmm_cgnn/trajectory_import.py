"""Import all-atom data made elsewhere: a GROMACS TRR trajectory with forces -> an all-atom reference file.

The TRR holds positions (nm), forces (kJ/mol/nm) and box vectors (nm) per frame; mdtraj reads them
(forces through ``TRRTrajectoryFile._read(..., get_forces=True)``, which mdtraj documents as the way to
forces). The topology comes from any file ``mdtraj.load_topology`` reads (PDB, GRO, PSF, prmtop, ...).
The output is the same NPZ as :func:`openmm_cgnn.reference.run_reference` writes, so ``openmm-cgnn map``
and the rest of the pipeline take it as it is. A TRR has no potential energies: ``potential_energy`` is NaN.
The state point (temperature, and pressure for NPT data) is not in a TRR and must be given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .files import check_output_path, save_npz_atomic, versions
from .errors import CGNNError
from .reference import REFERENCE_FORMAT, REFERENCE_UNITS
from .topology_io import topology_to_arrays


class TrajectoryImportError(CGNNError, ValueError):
    """A trajectory cannot be imported (missing file, no forces, atom counts that disagree...)."""


def read_trr(path: str | Path, stride: int = 1) -> dict[str, np.ndarray]:
    """Positions (F, n, 3) nm, forces (F, n, 3) kJ/mol/nm, boxes (F, 3, 3) nm and time (F,) ps of a TRR."""
    from mdtraj.formats import TRRTrajectoryFile

    path = Path(path)
    if not path.exists():
        raise TrajectoryImportError(f"trajectory '{path}' does not exist")
    try:
        with TRRTrajectoryFile(str(path)) as f:
            n = len(f)
            xyz, t, _, box, _, _, forces = f._read(n, None, get_velocities=False, get_forces=True)
    except RuntimeError as exc:
        if "forces" in str(exc).lower():
            raise TrajectoryImportError(
                f"trajectory '{path}' has no forces; force matching needs them: rerun the simulation writing "
                "forces (GROMACS: nstfout > 0 in the .mdp) or use 'openmm-cgnn reference'") from None
        raise TrajectoryImportError(f"cannot read '{path}' as a TRR trajectory: {exc}") from None
    except (OSError, IOError) as exc:
        raise TrajectoryImportError(f"cannot read '{path}' as a TRR trajectory: {exc}") from None
    if forces is None:
        raise TrajectoryImportError(f"trajectory '{path}' has no forces; force matching needs them")
    if len(xyz) == 0:
        raise TrajectoryImportError(f"trajectory '{path}' holds no frames")
    sel = slice(None, None, max(1, int(stride)))
    return {"positions": np.asarray(xyz[sel], np.float32), "forces": np.asarray(forces[sel], np.float32),
            "boxes": np.asarray(box[sel], np.float64), "time": np.asarray(t[sel], np.float64)}


def import_trr(trajectory: str | Path, topology: str | Path, out: str | Path, temperature: float,
               pressure: float | None = None, stride: int = 1, overwrite: bool = False) -> Path:
    """Write the all-atom reference file ``out`` from a TRR with forces and a topology file.

    :param temperature: K, the temperature the trajectory was run at (recorded as its state point).
    :param pressure: bar for NPT data; None for NVT (the density is then taken from the boxes).
    :param stride: keep every ``stride``-th frame.
    """
    import mdtraj

    out = check_output_path(out, overwrite)
    top_path = Path(topology)
    if not top_path.exists():
        raise TrajectoryImportError(f"topology file '{top_path}' does not exist")
    if not temperature > 0:
        raise TrajectoryImportError(f"temperature must be positive (K), got {temperature}")
    try:
        top = mdtraj.load_topology(str(top_path)).to_openmm()
    except Exception as exc:
        raise TrajectoryImportError(f"cannot read topology '{top_path}': {str(exc).strip().splitlines()[0]}") from None
    data = read_trr(trajectory, stride)
    n_atoms = top.getNumAtoms()
    if data["positions"].shape[1] != n_atoms:
        raise TrajectoryImportError(f"the trajectory has {data['positions'].shape[1]} atoms but the topology "
                                    f"'{top_path.name}' has {n_atoms}; give the topology of the same system")
    if any(a.element is None for a in top.atoms()):
        raise TrajectoryImportError(f"topology '{top_path.name}' has atoms without elements (so without masses)")
    if not np.all(np.abs(np.linalg.det(data["boxes"])) > 0):
        raise TrajectoryImportError(f"trajectory '{trajectory}' has frames without a periodic box")
    masses = sum(a.element.mass._value for a in top.atoms())
    from .units import density_g_cm3

    rho = density_g_cm3(masses, float(np.mean(np.abs(np.linalg.det(data["boxes"])))))
    residues: dict[str, int] = {}
    for res in top.residues():
        residues[res.name] = residues.get(res.name, 0) + 1
    ensemble = "NPT" if pressure is not None else "NVT"
    desc = {"route": "imported", "species": "+".join(residues), "components": [[k, v] for k, v in residues.items()],
            "forcefield": None, "forcefield_files": [], "trajectory": Path(trajectory).name,
            "topology": top_path.name}
    meta = {
        "format": REFERENCE_FORMAT, "version": 1, "units": REFERENCE_UNITS,
        "config": {"imported": "trr", "trajectory": Path(trajectory).name, "topology": top_path.name,
                   "temperature": temperature, "pressure": pressure, "stride": stride},
        "state": {"temperature_K": float(temperature), "pressure_bar": pressure,
                  "density_g_cm3": float(rho) if pressure is None else None, "ensemble": ensemble},
        "species": desc["species"], "forcefield": None, "forcefield_files": [], "system": desc,
        "platform": None, "ns_per_day": None, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    n = len(data["time"])
    save_npz_atomic(out, metadata_json=np.array(json.dumps(meta)), positions=data["positions"],
                    forces=data["forces"], boxes=data["boxes"], potential_energy=np.full(n, np.nan),
                    time=data["time"], **topology_to_arrays(top))
    return out
