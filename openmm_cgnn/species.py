"""Built-in liquids: molecule templates and the force fields that run them.

A species knows its residue name, atoms, bonds, a template geometry (nm) and which OpenMM
force-field files parameterise it. Adding a liquid means adding one ``Species`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Species:
    """One molecule type of a liquid.

    ``template`` holds atom positions in nm, shape (n_atoms, 3), centred nowhere in particular.
    ``forcefields`` maps a short name to the list of XML files ``openmm.app.ForceField`` loads.
    """

    name: str
    residue: str
    atom_names: tuple[str, ...]
    elements: tuple[str, ...]
    bonds: tuple[tuple[int, int], ...]
    template: np.ndarray
    forcefields: dict[str, tuple[str, ...]]
    default_forcefield: str
    default_density: float  # g/cm^3 near 300 K, 1 bar
    rigid_water: bool = False
    mixture_forcefield: str | None = None  # the force field to use in mixtures (compatible 1-4 scales)
    cg_map: dict | None = None             # a suggested multi-bead map (``openmm-cgnn map --mapping``)

    @property
    def atom_masses(self) -> np.ndarray:
        """Masses (n_atoms,) of the molecule's atoms, amu (OpenMM's element masses)."""
        import openmm.app as app
        import openmm.unit as u

        return np.array([app.Element.getBySymbol(e).mass.value_in_unit(u.dalton) for e in self.elements])

    @property
    def molecular_mass(self) -> float:
        """Mass of one molecule, amu."""
        return float(self.atom_masses.sum())

    def forcefield_files(self, name: str | None = None) -> list[str]:
        """Paths of the force-field XML files for ``name`` (default: the species' default)."""
        name = name or self.default_forcefield
        if name.endswith(".xml"):
            return [name]  # a user's own force-field file (or one shipped with OpenMM)
        if name not in self.forcefields:
            raise ConfigError(
                f"force field '{name}' is not available for {self.name}; choose one of "
                f"{', '.join(sorted(self.forcefields))}, or give the path of a force-field XML file")
        files = []
        for f in self.forcefields[name]:
            if f.startswith("pkg:"):
                files.append(str(resources.files("openmm_cgnn") / "data" / f[4:]))
            else:
                files.append(f)
        return files


def _place(zmatrix: list[tuple[int, float, int, float, int, float]]) -> np.ndarray:
    """Cartesian coordinates (nm) from a Z-matrix of (bond_to, length nm, angle_to, angle deg,
    dihedral_to, dihedral deg); the first three rows may leave later references as -1."""
    xyz: list[np.ndarray] = []
    for i, (a, r, b, theta, c, phi) in enumerate(zmatrix):
        if i == 0:
            xyz.append(np.zeros(3))
        elif i == 1:
            xyz.append(xyz[a] + np.array([r, 0.0, 0.0]))
        else:
            theta_r, phi_r = np.radians(theta), np.radians(phi)
            pa, pb = xyz[a], xyz[b]
            pc = xyz[c] if c >= 0 else pb + np.array([0.0, 1.0, 0.0])
            bc = pb - pc
            ab = pa - pb
            n = np.cross(bc, ab)
            if np.linalg.norm(n) < 1e-12:
                n = np.cross(ab, np.array([0.0, 0.0, 1.0]))
            n /= np.linalg.norm(n)
            u = ab / np.linalg.norm(ab)
            m = np.cross(n, u)
            d = np.array([-r * np.cos(theta_r), r * np.sin(theta_r) * np.cos(phi_r),
                          r * np.sin(theta_r) * np.sin(phi_r)])
            xyz.append(pa + d[0] * u + d[1] * m + d[2] * n)
    return np.array(xyz)


# The carbinol group C-O-H of both alcohols (OPLS-AA geometry: C-O 0.1410 nm, O-H 0.0945 nm, C-O-H 108.5 deg) ...
_CARBINOL = [
    (-1, 0.0, -1, 0.0, -1, 0.0),              # C
    (0, 0.1410, -1, 0.0, -1, 0.0),            # O
    (1, 0.0945, 0, 108.5, -1, 0.0),           # H of O
]


def _on_carbinol_carbon(length: float, dihedral: float) -> tuple[int, float, int, float, int, float]:
    """... and an atom bound to its carbon at ``length`` nm, tetrahedral to the O, at ``dihedral`` deg
    about C-O from the hydroxyl H (60, 180, 300: staggered)."""
    return (0, length, 1, 109.5, 2, dihedral)


METHANOL = Species(
    name="methanol",
    residue="MEOH",
    atom_names=("CB", "OG", "HG1", "HB1", "HB2", "HB3"),
    elements=("C", "O", "H", "H", "H", "H"),
    bonds=((0, 1), (1, 2), (0, 3), (0, 4), (0, 5)),
    template=_place(_CARBINOL + [             # CB, OG, HG1
        _on_carbinol_carbon(0.1090, 60.0),    # HB1
        _on_carbinol_carbon(0.1090, 180.0),   # HB2
        _on_carbinol_carbon(0.1090, 300.0),   # HB3
    ]),
    forcefields={"oplsaa": ("pkg:methanol-oplsaa.xml",), "charmm36": ("charmm36.xml",)},
    default_forcefield="oplsaa",
    default_density=0.787,
    mixture_forcefield="oplsaa",
)

WATER = Species(
    name="water",
    residue="HOH",
    atom_names=("O", "H1", "H2"),
    elements=("O", "H", "H"),
    bonds=((0, 1), (0, 2)),
    template=_place([
        (-1, 0.0, -1, 0.0, -1, 0.0),
        (0, 0.09572, -1, 0.0, -1, 0.0),
        (0, 0.09572, 1, 104.52, -1, 0.0),
    ]),
    forcefields={"tip3p": ("tip3p.xml",), "spce": ("spce.xml",), "opc3": ("opc3.xml",),
                 "spce-opls": ("pkg:water-spce-opls.xml",)},
    default_forcefield="spce",
    default_density=0.997,
    rigid_water=True,
    mixture_forcefield="spce-opls",
)

ETHANOL = Species(
    name="ethanol",
    residue="ETOH",
    atom_names=("C1", "O1", "HO1", "C2", "H11", "H12", "H21", "H22", "H23"),
    elements=("C", "O", "H", "C", "H", "H", "H", "H", "H"),
    bonds=((0, 1), (1, 2), (0, 3), (0, 4), (0, 5), (3, 6), (3, 7), (3, 8)),
    template=_place(_CARBINOL + [             # C1 (CH2), O1, HO1
        _on_carbinol_carbon(0.1529, 180.0),   # C2 (CH3)
        _on_carbinol_carbon(0.1090, 60.0),    # H11
        _on_carbinol_carbon(0.1090, 300.0),   # H12
        (3, 0.1090, 0, 110.7, 1, 60.0),       # H21
        (3, 0.1090, 0, 110.7, 1, 180.0),      # H22
        (3, 0.1090, 0, 110.7, 1, 300.0),      # H23
    ]),
    forcefields={"oplsaa": ("pkg:ethanol-oplsaa.xml",), "charmm36": ("charmm36.xml",)},
    default_forcefield="oplsaa",
    default_density=0.789,
    mixture_forcefield="oplsaa",
    cg_map={"ETOH": [{"name": "CH3", "atoms": ["C2", "H21", "H22", "H23"]},
                     {"name": "CH2OH", "atoms": ["C1", "O1", "HO1", "H11", "H12"]}]},
)

SPECIES: dict[str, Species] = {s.name: s for s in (METHANOL, WATER, ETHANOL)}


def get_species(name: str) -> Species:
    """The built-in species called ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in SPECIES:
        raise ConfigError(f"unknown species '{name}'; built in: {', '.join(sorted(SPECIES))}, or give "
                          "--components FILE.pdb:COUNT, --box FILE.pdb or --system-xml FILE.xml")
    return SPECIES[key]
