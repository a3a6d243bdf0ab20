"""The all-atom system of a reference run, from whatever the user has.

Four routes lead to the same (Topology, positions, System) that :mod:`openmm_cgnn.reference` runs:

* **built-in species** (``species="methanol"``, ``n_molecules``): the lattice box of ``reference.build_box``;
* **components**: one molecule per component, either a built-in name or a molecule file (PDB or PDBx/mmCIF)
  with a count, packed on a cubic lattice with random orientations at the target density
  (``components=[["methanol", 100], ["water", 200]]`` or ``[["ethanol.pdb", 64]]``);
* **box**: a whole periodic box as PDB or PDBx/mmCIF (its box vectors are required) plus the force-field XML
  files that ``openmm.app.ForceField`` takes (``forcefield_files``);
* **box + system_xml**: a serialised OpenMM ``System`` (``XmlSerializer``) with the PDB/PDBx of its
  particles.

Force fields: built-in species bring their own files; molecule files and boxes need ``forcefield_files``.
Every way in fails with a one-line :class:`AAInputError` (a :class:`~openmm_cgnn.errors.CGNNError`) before
anything is written. Units: nm, g/cm^3, K, bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from .errors import CGNNError
from .species import SPECIES, Species, get_species
from .units import volume_for_density_nm3

MOLECULE_SUFFIXES = (".pdb", ".cif", ".pdbx")
_BAROSTATS = ("MonteCarloBarostat", "MonteCarloAnisotropicBarostat", "MonteCarloFlexibleBarostat",
              "MonteCarloMembraneBarostat")


class AAInputError(CGNNError, ValueError):
    """The all-atom input cannot be built as given (missing file, no template, no box, too dense...)."""


# -- what the user gave ----------------------------------------------------------------------------

def parse_components(text: str | Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``"methanol:100,water:200"`` (or a list of pairs) -> ``[["methanol", 100], ["water", 200]]``.

    A name is a built-in species or the path of a molecule file (PDB, PDBx/mmCIF); a count is a positive
    integer."""
    items: list[Sequence[Any]]
    if isinstance(text, str):
        items = []
        for part in text.split(","):
            part = part.strip()
            name, sep, count = part.rpartition(":")
            if not sep or not name:
                raise AAInputError(f"component '{part}' must be NAME:COUNT (a built-in species or a molecule "
                                   "file, and a number of molecules), e.g. methanol:100,water:200")
            items.append((name, count))
    else:
        items = list(text)
    out = []
    for item in items:
        if len(item) != 2:
            raise AAInputError(f"component {item!r} must be a pair (name or file, count)")
        name, count = str(item[0]), item[1]
        text_count = str(count).strip()
        if isinstance(count, bool) or not (isinstance(count, int) or text_count.isdigit()) or int(text_count) < 1:
            raise AAInputError(f"component '{name}': the count must be a positive whole number, got {count!r}")
        n = int(text_count)
        out.append([name, n])
    if not out:
        raise AAInputError("no components given")
    return out


def is_builtin(name: str) -> bool:
    return name.lower() in SPECIES


# -- molecules ---------------------------------------------------------------------------------------

@dataclass
class Molecule:
    """One molecule type: its topology (one or more residues), template positions (n, 3) nm and masses (amu)."""

    name: str
    topology: app.Topology
    positions: np.ndarray
    masses: np.ndarray
    species: Species | None = None   # set for built-in species

    @property
    def mass(self) -> float:
        return float(self.masses.sum())

    def centred(self) -> np.ndarray:
        return self.positions - (self.masses[:, None] * self.positions).sum(0) / self.mass

    @property
    def radius(self) -> float:
        """Largest distance of an atom from the centre of mass, nm."""
        return float(np.max(np.linalg.norm(self.centred(), axis=1))) if len(self.masses) > 1 else 0.0


def _masses(topology: app.Topology, where: str) -> np.ndarray:
    out = []
    for atom in topology.atoms():
        if atom.element is None:
            raise AAInputError(f"{where}: atom '{atom.name}' of residue {atom.residue.name} has no element; give "
                               "element symbols (PDB columns 77-78)")
        out.append(atom.element.mass.value_in_unit(u.dalton))
    return np.array(out, dtype=np.float64)


def read_structure(path: str | Path, what: str = "structure file") -> tuple[app.Topology, np.ndarray]:
    """Topology and positions (nm) of a PDB or PDBx/mmCIF file."""
    path = Path(path)
    if not path.exists():
        raise AAInputError(f"{what} '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdb":
            f = app.PDBFile(str(path))
        elif suffix in (".cif", ".pdbx"):
            f = app.PDBxFile(str(path))
        else:
            raise AAInputError(f"{what} '{path}': give a PDB (.pdb) or PDBx/mmCIF (.cif, .pdbx) file; for SDF or "
                               "MOL2 convert it to PDB first (e.g. with Open Babel or RDKit)")
    except AAInputError:
        raise
    except Exception as exc:
        raise AAInputError(f"cannot read {what} '{path}': {str(exc).strip().splitlines()[0]}") from None
    pos = np.array(f.getPositions(asNumpy=True).value_in_unit(u.nanometer), dtype=np.float64)
    if f.topology.getNumAtoms() == 0:
        raise AAInputError(f"{what} '{path}' holds no atoms")
    return f.topology, pos


def load_molecule(name: str) -> Molecule:
    """A built-in species (by name) or the single molecule of a PDB/PDBx file."""
    if is_builtin(name):
        from .reference import build_topology

        sp = get_species(name)
        top = build_topology(sp, 1)
        return Molecule(sp.name, top, np.array(sp.template, dtype=np.float64), _masses(top, sp.name), sp)
    path = Path(name)
    if path.suffix.lower() not in MOLECULE_SUFFIXES:
        raise AAInputError(f"component '{name}' is neither a built-in species ({', '.join(sorted(SPECIES))}) nor "
                           "a molecule file (.pdb, .cif, .pdbx)")
    top, pos = read_structure(path, "molecule file")
    return Molecule(path.stem, top, pos, _masses(top, f"molecule file '{path}'"))


def components_forcefield_files(molecules: Sequence[Molecule], forcefield: str | None,
                                forcefield_files: Sequence[str] | None) -> list[str]:
    """The force-field XML files for a set of molecules: ``forcefield_files`` if given, else the files of
    the built-in species (for a mixture, each species' mixture-compatible force field)."""
    if forcefield_files:
        return [str(f) for f in forcefield_files]
    files: list[str] = []
    for m in molecules:
        if m.species is None:
            raise AAInputError(f"molecule file component '{m.name}' needs a force field: give the force-field XML "
                               "files that cover it (--forcefield-xml FILE ...)")
        if forcefield and len(molecules) == 1:
            name = forcefield
        elif len(molecules) > 1:
            name = m.species.mixture_forcefield or m.species.default_forcefield
        else:
            name = m.species.default_forcefield
        try:
            for f in m.species.forcefield_files(name):
                if f not in files:
                    files.append(f)
        except ValueError as exc:
            raise AAInputError(str(exc)) from None
    return files


# -- packing --------------------------------------------------------------------------------------------

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    from .reference import _random_rotation as rot

    return rot(rng)


def pack_box(molecules: Sequence[Molecule], counts: Sequence[int], density: float,
             rng: np.random.Generator, min_distance: float = 0.12) -> tuple[app.Topology, np.ndarray, float]:
    """Several molecule types on one cubic lattice with random order and orientations at ``density`` g/cm^3.

    The lattice builder of ``reference.build_box`` extended to mixtures: sites are shuffled, each gets a
    molecule of the list (in the order of ``molecules``, so residues of one component are contiguous),
    and molecules whose atoms clash with a neighbour's are re-oriented. Returns (topology with box,
    positions (n_atoms, 3) nm, box edge nm). Raises AAInputError when the molecules cannot fit: the box
    volume must hold a cube of the molecule's diameter per molecule.
    """
    if not (0.0 < density < 3.0):
        raise AAInputError(f"density {density} g/cm^3 is impossible for a molecular liquid; give a value in (0, 3)")
    n_total = int(sum(counts))
    if n_total < 1:
        raise AAInputError("need at least one molecule")
    total_mass = sum(m.mass * c for m, c in zip(molecules, counts))
    volume = volume_for_density_nm3(total_mass, density)
    edge = volume ** (1.0 / 3.0)
    need = sum(c * (2.0 * max(m.radius, 0.05)) ** 3 for m, c in zip(molecules, counts))
    if need > volume:
        what = " + ".join(f"{c} {m.name}" for m, c in zip(molecules, counts))
        raise AAInputError(
            f"{what} do not fit at {density} g/cm^3: a {edge:.3f} nm box ({volume:.2f} nm^3) has less room than "
            f"the molecules' size needs ({need:.2f} nm^3); lower the density or the counts")
    per_side = math.ceil(n_total ** (1.0 / 3.0) - 1e-9)
    spacing = edge / per_side
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side) for k in range(per_side)], float)
    sites = sites[rng.permutation(len(sites))[:n_total]]
    kinds = [k for k, c in enumerate(counts) for _ in range(c)]
    centred = [m.centred() for m in molecules]
    rotated = [centred[k] @ _random_rotation(rng).T for k in kinds]
    owner = np.concatenate([np.full(len(molecules[k].masses), i) for i, k in enumerate(kinds)])
    box = np.eye(3) * edge
    for _ in range(50):
        positions = np.concatenate([r + (s + 0.5) * spacing for r, s in zip(rotated, sites)])
        clashing = clashing_molecules(positions, box, owner, min_distance)
        if not clashing.size:
            break
        for i in clashing:
            rotated[i] = centred[kinds[i]] @ _random_rotation(rng).T
    top = app.Topology()
    for k in kinds:
        _append(top, molecules[k].topology)
    top.setPeriodicBoxVectors(box * u.nanometer)
    return top, positions, edge


def clashing_molecules(positions: np.ndarray, box: np.ndarray, owner: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of the molecules with an atom closer than ``min_distance`` (nm) to another molecule's atom.
    Positions (N, 3) and box (3, 3) in nm; ``owner`` (N,): the molecule index of each atom."""
    from vesin import NeighborList

    i, j = NeighborList(cutoff=min_distance, full_list=False).compute(points=positions, box=box, periodic=True,
                                                                      quantities="ij")
    mi, mj = owner[i], owner[j]
    other = mi != mj
    return np.unique(np.concatenate([mi[other], mj[other]]))


def _append(top: app.Topology, molecule: app.Topology) -> None:
    """Add a copy of ``molecule``'s residues, atoms and bonds to ``top`` (one new chain per molecule)."""
    chain = top.addChain()
    atoms = {}
    for res in molecule.residues():
        new = top.addResidue(res.name, chain, id=str(sum(1 for _ in top.residues()) + 1))
        for a in res.atoms():
            atoms[a.index] = top.addAtom(a.name, a.element, new)
    for b in molecule.bonds():
        top.addBond(atoms[b[0].index], atoms[b[1].index])


# -- boxes from files ---------------------------------------------------------------------------------

def box_from_file(path: str | Path) -> tuple[app.Topology, np.ndarray, np.ndarray]:
    """(topology, positions nm, box vectors (3, 3) nm) of a periodic PDB/PDBx box."""
    top, pos = read_structure(path, "box file")
    vectors = top.getPeriodicBoxVectors()
    if vectors is None:
        raise AAInputError(f"box file '{path}' has no periodic box (PDB: a CRYST1 record; PDBx: _cell); add one")
    box = np.array(vectors.value_in_unit(u.nanometer), dtype=np.float64)
    return top, pos, box


def molecule_centres(topology: app.Topology, positions: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, list]:
    """Centres of mass (n_mol, 3) nm of the molecules (connected sets of atoms) and their atom indices,
    each molecule made whole by the minimum image relative to its first atom."""
    from .mapping import minimum_image

    masses = _masses(topology, "box")
    groups = [sorted(a.index for a in mol) for mol in _molecules(topology)]
    centres = []
    for idx in groups:
        d = minimum_image((positions[idx] - positions[idx[0]])[None], box[None])[0]
        centres.append(positions[idx[0]] + (masses[idx, None] * d).sum(0) / masses[idx].sum())
    return np.array(centres), groups


def _molecules(topology: app.Topology) -> list[list[app.Atom]]:
    """Atoms grouped into molecules by bonds (residues that share no bond are separate molecules)."""
    parent = list(range(topology.getNumAtoms()))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in topology.bonds():
        ra, rb = find(a.index), find(b.index)
        if ra != rb:
            parent[ra] = rb
    for res in topology.residues():   # a residue is never split (e.g. a water without bonds in the file)
        atoms = list(res.atoms())
        for a in atoms[1:]:
            ra, rb = find(a.index), find(atoms[0].index)
            if ra != rb:
                parent[ra] = rb
    groups: dict[int, list[app.Atom]] = {}
    for atom in topology.atoms():
        groups.setdefault(find(atom.index), []).append(atom)
    return list(groups.values())


def scale_to_density(topology: app.Topology, positions: np.ndarray, box: np.ndarray,
                     density: float) -> tuple[np.ndarray, np.ndarray]:
    """Move whole molecules (their centres scaled affinely) so the box has ``density`` g/cm^3.

    Returns (positions nm, box vectors (3, 3) nm)."""
    if not (0.0 < density < 3.0):
        raise AAInputError(f"density {density} g/cm^3 is impossible for a molecular liquid; give a value in (0, 3)")
    mass = float(_masses(topology, "box").sum())
    volume = abs(float(np.linalg.det(box)))
    factor = (volume_for_density_nm3(mass, density) / volume) ** (1.0 / 3.0)
    if abs(factor - 1.0) < 1e-12:
        return positions.copy(), box.copy()
    centres, groups = molecule_centres(topology, positions, box)
    out = positions.copy()
    for c, idx in zip(centres, groups):
        out[idx] += (factor - 1.0) * c
    return out, box * factor


def box_density(topology: app.Topology, box: np.ndarray) -> float:
    from .units import density_g_cm3

    return float(density_g_cm3(float(_masses(topology, "box").sum()), abs(float(np.linalg.det(box)))))


# -- systems --------------------------------------------------------------------------------------------

def system_from_forcefield(topology: app.Topology, files: Sequence[str], cutoff: float,
                           what: str) -> openmm.System:
    """``app.ForceField(*files).createSystem`` with PME, HBonds constraints and rigid water, one-line errors."""
    for f in files:
        if not Path(f).exists() and not _openmm_data_file(f):
            raise AAInputError(f"force-field file '{f}' does not exist (neither a path nor a file shipped with "
                               "OpenMM)")
    try:
        ff = app.ForceField(*files)
    except Exception as exc:
        raise AAInputError(f"cannot load force field {', '.join(Path(f).name for f in files)}: "
                           f"{_first_line(exc)}") from None
    try:
        return ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * u.nanometer,
                               constraints=app.HBonds, rigidWater=True)
    except Exception as exc:
        msg = _first_line(exc)
        if "template" in msg.lower():
            raise AAInputError(f"{what}: the force field ({', '.join(Path(f).name for f in files)}) has no "
                               f"template for a residue ({msg}); give force-field XML files that cover every "
                               "residue, or fix the residue and atom names") from None
        raise AAInputError(f"{what}: the force field cannot parameterise it: {msg}") from None


def _openmm_data_file(name: str) -> bool:
    return (Path(app.__file__).parent / "data" / name).exists()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_system_xml(path: str | Path, n_atoms: int) -> openmm.System:
    """A serialised System, without any barostat of its own (the reference adds its own for NPT)."""
    path = Path(path)
    if not path.exists():
        raise AAInputError(f"System XML file '{path}' does not exist")
    try:
        system = openmm.XmlSerializer.deserialize(path.read_text())
    except Exception as exc:
        raise AAInputError(f"cannot read '{path}' as a serialised OpenMM System: {_first_line(exc)}") from None
    if not isinstance(system, openmm.System):
        raise AAInputError(f"'{path}' holds a serialised {type(system).__name__}, not a System")
    if system.getNumParticles() != n_atoms:
        raise AAInputError(f"the System in '{path}' has {system.getNumParticles()} particles but the structure "
                           f"file has {n_atoms} atoms; give the PDB of the same system")
    if not system.usesPeriodicBoundaryConditions():
        raise AAInputError(f"the System in '{path}' is not periodic; a liquid needs periodic boundary conditions")
    for i in reversed(range(system.getNumForces())):
        if type(system.getForce(i)).__name__ in _BAROSTATS:
            system.removeForce(i)
    return system


def system_cutoff(system: openmm.System) -> float | None:
    """The nonbonded cutoff (nm) of a System's NonbondedForce, None if it has none."""
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            return f.getCutoffDistance().value_in_unit(u.nanometer)
    return None


@dataclass
class AASetup:
    """What a reference run needs: topology with box, starting positions (nm), System (no barostat yet) and
    a description for the metadata."""

    topology: app.Topology
    positions: np.ndarray
    system: openmm.System
    description: dict[str, Any]
    density: float | None


def input_route(config: Any) -> str:
    """"system_xml", "box", "components" or "species"."""
    if getattr(config, "system_xml", None):
        return "system_xml"
    if getattr(config, "box", None):
        return "box"
    if getattr(config, "components", None):
        return "components"
    return "species"


def validate_input(config: Any) -> None:
    """Refuse contradictory inputs early (before any file is read)."""
    route = input_route(config)
    if route == "system_xml" and not config.box:
        raise AAInputError("a serialised System (--system-xml) needs the PDB/PDBx of its particles (--box FILE)")
    if route == "system_xml" and config.forcefield_files:
        raise AAInputError("give either a serialised System (--system-xml) or force-field XML files "
                           "(--forcefield-xml), not both")
    if route == "box" and config.components:
        raise AAInputError("give either a box file (--box) or components (--components), not both")
    if route == "box" and not config.forcefield_files:
        raise AAInputError(f"box file '{config.box}' needs a force field: give the force-field XML files "
                           "(--forcefield-xml FILE ...) or a serialised System (--system-xml)")


def prepare(config: Any, rng: np.random.Generator) -> AASetup:
    """Build the all-atom system a :class:`~openmm_cgnn.reference.ReferenceConfig` describes (no barostat)."""
    validate_input(config)
    route = input_route(config)
    if route == "species":
        from .reference import build_box, create_aa_system

        species = get_species(config.species)
        density = config.density if config.density is not None else species.default_density
        topology, positions, _ = build_box(species, config.n_molecules, density, rng)
        system = create_aa_system(config, topology, barostat=False)
        desc = {"route": route, "species": species.name, "components": [[species.name, config.n_molecules]],
                "forcefield": config.forcefield or species.default_forcefield,
                "forcefield_files": [Path(f).name for f in species.forcefield_files(config.forcefield)]}
        return AASetup(topology, positions, system, desc, density)
    if route == "components":
        comps = parse_components(config.components)
        molecules = [load_molecule(name) for name, _ in comps]
        files = components_forcefield_files(molecules, config.forcefield, config.forcefield_files)
        density = config.density
        if density is None:
            if not all(m.species is not None for m in molecules):
                raise AAInputError("components from molecule files need a target density (--density g/cm^3)")
            # mass-weighted mean of the pure liquids' densities: a starting guess (exact for NVT only as given)
            mass = np.array([m.mass * c for m, (_, c) in zip(molecules, comps)])
            density = float(mass.sum() / sum(mm / m.species.default_density for mm, m in zip(mass, molecules)))
        topology, positions, _ = pack_box(molecules, [c for _, c in comps], density, rng)
        _check_cutoff(topology, config.cutoff)
        system = system_from_forcefield(topology, files, config.cutoff,
                                        " + ".join(f"{c} x {m.name}" for m, (_, c) in zip(molecules, comps)))
        desc = {"route": route, "species": "+".join(m.name for m in molecules),
                "components": [[m.name if m.species else str(name), c] for m, (name, c) in zip(molecules, comps)],
                "forcefield": config.forcefield, "forcefield_files": [Path(f).name for f in files]}
        return AASetup(topology, positions, system, desc, density)
    topology, positions, box = box_from_file(config.box)
    if config.density is not None:
        positions, box = scale_to_density(topology, positions, box, config.density)
        topology.setPeriodicBoxVectors(box * u.nanometer)
    density = box_density(topology, box)
    if route == "box":
        _check_cutoff(topology, config.cutoff)
        files = [str(f) for f in config.forcefield_files]
        system = system_from_forcefield(topology, files, config.cutoff, f"box file '{config.box}'")
        ff_names = [Path(f).name for f in files]
    else:
        system = load_system_xml(config.system_xml, topology.getNumAtoms())
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * u.nanometer for row in box])
        cutoff = system_cutoff(system)
        if cutoff is not None:
            _check_cutoff(topology, cutoff)
        ff_names = []
    residues = {}
    for res in topology.residues():
        residues[res.name] = residues.get(res.name, 0) + 1
    desc = {"route": route, "species": "+".join(residues), "components": [[k, v] for k, v in residues.items()],
            "forcefield": None, "forcefield_files": ff_names, "box_file": Path(config.box).name,
            "system_xml": Path(config.system_xml).name if config.system_xml else None}
    return AASetup(topology, positions, system, desc, density)


def _check_cutoff(topology: app.Topology, cutoff: float) -> None:
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    edge = float(min(box[i, i] for i in range(3)))
    if edge < 2.0 * cutoff:
        raise AAInputError(f"box edge {edge:.3f} nm is smaller than twice the cutoff ({cutoff} nm); use more "
                           f"molecules or a smaller --cutoff (at most {edge / 2:.3f} nm)")


def aa_topology(config: Any) -> app.Topology:
    """The all-atom topology of an input without running or packing anything (for early mapping checks)."""
    validate_input(config)
    route = input_route(config)
    if route == "species":
        from .reference import build_topology

        return build_topology(get_species(config.species), config.n_molecules)
    if route == "components":
        top = app.Topology()
        for name, count in parse_components(config.components):
            mol = load_molecule(name)
            for _ in range(count):
                _append(top, mol.topology)
        return top
    return read_structure(config.box, "box file")[0]


def total_mass_and_molecules(config: Any) -> tuple[float, int]:
    """(total mass amu, number of molecules) of an input (built-in, components or box)."""
    top = aa_topology(config)
    return float(_masses(top, "input").sum()), len(_molecules(top))
