"""From an all-atom topology to beads: the CG mapping, the CG topology, mapped positions and forces.

The default map puts one bead per residue (molecule) at its centre of mass. A user map names, per
residue name, groups of atom names; each group becomes one bead with a bead-type name:

    {"MEOH": [{"name": "CM", "atoms": ["CB", "HB1", "HB2", "HB3"]},
              {"name": "OH", "atoms": ["OG", "HG1"]}]}

Positions map to mass-weighted centres (made whole across periodic boundaries first); forces map
to the sum of the atomic forces on each bead's atoms, the consistent force map for a centre-of-mass
mapping with non-overlapping beads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import openmm.app as app

from .errors import CGNNError


class MappingError(CGNNError, ValueError):
    """The mapping does not fit the topology: an atom left out, used twice or not present."""


@dataclass
class Bead:
    """One bead: the atoms it stands for (indices into the all-atom topology)."""

    type_name: str
    atoms: np.ndarray  # (k,) int
    residue: int       # index of the molecule (all-atom residue) it belongs to
    mass: float        # amu


@dataclass
class CGMapping:
    """A linear map from n_atoms atoms onto n_beads beads."""

    beads: list[Bead]
    n_atoms: int
    atom_masses: np.ndarray   # (n_atoms,) amu
    spec: dict[str, Any]      # the per-residue definition it was built from (for provenance)

    # -- derived views ---------------------------------------------------------------------------
    @property
    def n_beads(self) -> int:
        return len(self.beads)

    @property
    def type_names(self) -> list[str]:
        """Bead type names in order of first appearance."""
        seen: dict[str, None] = {}
        for b in self.beads:
            seen.setdefault(b.type_name, None)
        return list(seen)

    @property
    def bead_types(self) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.type_names)}
        return np.array([index[b.type_name] for b in self.beads], dtype=np.int64)

    @property
    def bead_masses(self) -> np.ndarray:
        return np.array([b.mass for b in self.beads])

    @property
    def bead_residues(self) -> np.ndarray:
        return np.array([b.residue for b in self.beads], dtype=np.int64)

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(atom index, bead index, mass weight) for every mapped atom."""
        atoms = np.concatenate([b.atoms for b in self.beads])
        owner = np.concatenate([np.full(len(b.atoms), i) for i, b in enumerate(self.beads)])
        weights = self.atom_masses[atoms] / self.bead_masses[owner]
        return atoms, owner, weights

    # -- the maps --------------------------------------------------------------------------------
    def map_positions(self, positions: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """Bead centres of mass, nm.

        positions: (F, n_atoms, 3) or (n_atoms, 3), nm. boxes: (F, 3, 3) or (3, 3) box vectors as
        rows (OpenMM's reduced form or any triclinic box), or None for no periodicity.
        Each bead's atoms are first made whole by the minimum image relative to the bead's first
        atom, so molecules split across the boundary map correctly. Returns (F, n_beads, 3) (or
        (n_beads, 3)), wrapped into the primary box.
        """
        single = positions.ndim == 2
        pos = np.atleast_3d(positions) if not single else positions[None]
        pos = np.asarray(pos, dtype=np.float64)
        atoms, owner, weights = self._flat()
        ref_atom = np.array([b.atoms[0] for b in self.beads])
        ref = pos[:, ref_atom[owner], :]
        delta = pos[:, atoms, :] - ref
        if boxes is not None:
            box = np.asarray(boxes, dtype=np.float64)
            box = np.broadcast_to(box, (pos.shape[0], 3, 3)) if box.ndim == 2 else box
            delta = minimum_image(delta, box)
        com = np.zeros((pos.shape[0], self.n_beads, 3))
        np.add.at(com, (slice(None), owner), delta * weights[None, :, None])
        com += pos[:, ref_atom, :]
        if boxes is not None:
            com = wrap_into_box(com, box)
        return com[0] if single else com

    def map_forces(self, forces: np.ndarray) -> np.ndarray:
        """Bead forces: the sum of the atomic forces on each bead's atoms, same units as input.

        forces: (F, n_atoms, 3) or (n_atoms, 3). Returns (F, n_beads, 3) or (n_beads, 3).
        """
        single = forces.ndim == 2
        f = np.asarray(forces, dtype=np.float64)
        f = f[None] if single else f
        atoms, owner, _ = self._flat()
        out = np.zeros((f.shape[0], self.n_beads, 3))
        np.add.at(out, (slice(None), owner), f[:, atoms, :])
        return out[0] if single else out

    # -- the CG topology -------------------------------------------------------------------------
    def cg_topology(self, box_vectors: Any = None) -> app.Topology:
        """An OpenMM Topology of beads: one residue per molecule, one 'atom' per bead (no element),
        bonds between consecutive beads of the same molecule."""
        names = self.spec.get("_residue_names", {})
        return build_cg_topology([b.type_name for b in self.beads], [b.residue for b in self.beads],
                                 lambda r: names.get(str(r), "CG"), box_vectors)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (enough to rebuild the map from the same topology)."""
        return {"spec": {k: v for k, v in self.spec.items() if not k.startswith("_")},
                "n_atoms": self.n_atoms, "n_beads": self.n_beads, "type_names": self.type_names,
                "bead_atoms": [b.atoms.tolist() for b in self.beads]}


def build_cg_topology(bead_names: Sequence[str], bead_residues: Sequence[int],
                      residue_name=lambda r: "CG", box_vectors: Any = None) -> app.Topology:
    """A CG Topology: beads as element-less atoms named by bead type, one residue per molecule
    (``residue_name(index)`` names it), bonds between consecutive beads of a molecule, and the box."""
    top = app.Topology()
    chain = top.addChain()
    residues: dict[int, app.Residue] = {}
    last: dict[int, app.Atom] = {}
    for name, r in zip(bead_names, bead_residues):
        r = int(r)
        if r not in residues:
            residues[r] = top.addResidue(residue_name(r), chain, id=str(len(residues) + 1))
        atom = top.addAtom(str(name), None, residues[r])
        if r in last:
            top.addBond(last[r], atom)
        last[r] = atom
    if box_vectors is not None:
        top.setPeriodicBoxVectors(box_vectors)
    return top


def minimum_image(delta: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Shortest periodic images of displacement vectors.

    delta: (F, M, 3) nm; boxes: (F, 3, 3) box vectors as rows. Works for any triclinic box by going
    through fractional coordinates (exact for the displacements within a molecule that we need).
    """
    inv = np.linalg.inv(boxes)
    frac = np.einsum("fmi,fij->fmj", delta, inv)
    frac -= np.round(frac)
    return np.einsum("fmj,fji->fmi", frac, boxes)


def wrap_into_box(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Points (F, M, 3) moved into the primary cell spanned by the box rows (F, 3, 3)."""
    inv = np.linalg.inv(boxes)
    frac = np.einsum("fmi,fij->fmj", points, inv)
    frac -= np.floor(frac)
    return np.einsum("fmj,fji->fmi", frac, boxes)


def _atom_mass(atom: app.Atom) -> float:
    if atom.element is None:
        raise MappingError(f"atom '{atom.name}' of residue {atom.residue.name} has no element, so no mass")
    return atom.element.mass.value_in_unit(atom.element.mass.unit)


def create_mapping(topology: app.Topology,
                   beads_per_residue: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> CGMapping:
    """Build a CGMapping for an OpenMM ``topology``.

    With ``beads_per_residue`` None every residue becomes one bead named after the residue. Otherwise
    it maps residue names to lists of ``{"name": bead_type, "atoms": [atom names]}``; residues not
    named there become one bead each. Raises MappingError when an atom is left out, assigned twice
    or named but missing.
    """
    spec = {k: [dict(g) for g in v] for k, v in (beads_per_residue or {}).items()}
    masses = np.array([_atom_mass(a) for a in topology.atoms()])
    beads: list[Bead] = []
    residue_names: dict[str, str] = {}
    for r_index, residue in enumerate(topology.residues()):
        residue_names[str(r_index)] = residue.name
        atoms = list(residue.atoms())
        groups = spec.get(residue.name)
        if groups is None:
            idx = np.array([a.index for a in atoms])
            beads.append(Bead(residue.name, idx, r_index, float(masses[idx].sum())))
            continue
        by_name = {a.name: a.index for a in atoms}
        used: dict[str, str] = {}
        for g in groups:
            if "name" not in g or "atoms" not in g:
                raise MappingError(f"bead definition {g!r} for residue {residue.name} needs 'name' and 'atoms'")
            idx = []
            for atom_name in g["atoms"]:
                if atom_name not in by_name:
                    raise MappingError(
                        f"bead '{g['name']}' of residue {residue.name} names atom '{atom_name}', which residue "
                        f"{residue.name} {residue.id} lacks (it has {', '.join(by_name)})")
                if atom_name in used:
                    raise MappingError(
                        f"atom '{atom_name}' of residue {residue.name} is assigned twice "
                        f"(to beads '{used[atom_name]}' and '{g['name']}')")
                used[atom_name] = g["name"]
                idx.append(by_name[atom_name])
            idx = np.array(idx, dtype=np.int64)
            beads.append(Bead(str(g["name"]), idx, r_index, float(masses[idx].sum())))
        missing = [n for n in by_name if n not in used]
        if missing:
            raise MappingError(
                f"atoms {', '.join(missing)} of residue {residue.name} {residue.id} are in no bead; "
                "add them to a bead of the map")
    present = set(residue_names.values())
    absent = sorted(set(spec) - present)
    if absent and len(absent) == len(spec):
        raise MappingError(
            f"the mapping names residue{'s' if len(absent) > 1 else ''} {', '.join(absent)}, which the system "
            f"lacks (it has {', '.join(sorted(present))}); name the residues of the all-atom topology")
    if absent:
        import warnings

        warnings.warn(f"the mapping's residues {', '.join(absent)} are not in the system; their beads are unused",
                      stacklevel=2)
    spec["_residue_names"] = residue_names
    return CGMapping(beads, topology.getNumAtoms(), masses, spec)


def load_mapping_spec(path: str | Path) -> dict[str, Any]:
    """Read a user map from a JSON file (the format in the module docstring)."""
    from .files import read_config_file

    path = Path(path)
    spec = read_config_file(path, "mapping file", MappingError)
    if not isinstance(spec, dict) or not all(isinstance(v, list) for v in spec.values()):
        raise MappingError(f"mapping file '{path}' must hold an object of residue name -> list of beads")
    if not spec:
        raise MappingError(f"mapping file '{path}' names no residue")
    return spec


def map_reference(reference: str | Path, out: str | Path, beads_per_residue: Mapping[str, Any] | None = None,
                  overwrite: bool = False, skip: int = 0):
    """Map an all-atom reference file (from ``openmm_cgnn.reference``) onto beads and write a CG data set.

    ``skip`` drops that many leading frames. Returns the written :class:`~openmm_cgnn.dataset.CGDataset`.
    """
    from .files import check_output_path, versions
    from .dataset import CGDataset, DatasetFormatError
    from .reference import load_reference

    from . import validation as V

    skip = V.integer(skip, "skip", 0)
    out = check_output_path(out, overwrite)
    ref = load_reference(reference)
    if skip >= len(ref.time):
        raise V.ConfigError(f"skip = {skip} leaves no frame of the {len(ref.time)} in '{reference}'; "
                            f"skip at most {len(ref.time) - 1}", "skip")
    mapping = create_mapping(ref.topology, beads_per_residue)
    frames = slice(skip, None)
    cg_pos = mapping.map_positions(ref.positions[frames].astype(np.float64), ref.boxes[frames])
    cg_forces = mapping.map_forces(ref.forces[frames].astype(np.float64))
    meta = {
        "state": ref.metadata.get("state", {}),
        "mapping": mapping.to_dict(),
        "source": {"reference_file": Path(reference).name, "species": ref.metadata.get("species"),
                   "forcefield": ref.metadata.get("forcefield"), "platform": ref.metadata.get("platform"),
                   "config": ref.metadata.get("config"), "skipped_frames": skip},
        "time_ps": ref.time[frames].tolist(),
        "versions": versions(),
    }
    try:
        ds = CGDataset(cg_pos, cg_forces, ref.boxes[frames], ref.potential_energy[frames], mapping.bead_types,
                       mapping.type_names, mapping.bead_masses, mapping.bead_residues, meta,
                       pressure=None if ref.pressure is None else ref.pressure[frames])
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"reference file '{reference}' cannot be mapped: {exc}") from None
    ds.save(out)
    return ds
