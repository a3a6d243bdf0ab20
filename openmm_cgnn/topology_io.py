"""Store an OpenMM Topology as plain arrays inside an NPZ file, and rebuild it.

PDB text would be the obvious choice but its fixed-width fields overflow beyond 99,999 atoms and
9,999 residues, which our large benchmark boxes exceed.
"""

from __future__ import annotations

import numpy as np
import openmm.app as app


def topology_to_arrays(topology: app.Topology) -> dict[str, np.ndarray]:
    """Arrays (prefixed ``top_``) that describe atoms, residues and bonds of ``topology``."""
    atoms = list(topology.atoms())
    residues = list(topology.residues())
    return {
        "top_atom_names": np.array([a.name for a in atoms], dtype=str),
        "top_atom_elements": np.array([a.element.symbol if a.element is not None else "" for a in atoms], dtype=str),
        "top_atom_residues": np.array([a.residue.index for a in atoms], dtype=np.int64),
        "top_residue_names": np.array([r.name for r in residues], dtype=str),
        "top_bonds": np.array([(b[0].index, b[1].index) for b in topology.bonds()], dtype=np.int64).reshape(-1, 2),
    }


def topology_from_arrays(arrays) -> app.Topology:
    """Rebuild the Topology written by :func:`topology_to_arrays` (one chain)."""
    top = app.Topology()
    chain = top.addChain()
    residues = [top.addResidue(str(name), chain, id=str(i + 1)) for i, name in enumerate(arrays["top_residue_names"])]
    atoms = []
    for name, symbol, res in zip(arrays["top_atom_names"], arrays["top_atom_elements"], arrays["top_atom_residues"]):
        element = app.Element.getBySymbol(str(symbol)) if str(symbol) else None
        atoms.append(top.addAtom(str(name), element, residues[int(res)]))
    for i, j in np.asarray(arrays["top_bonds"]).reshape(-1, 2):
        top.addBond(atoms[int(i)], atoms[int(j)])
    return top
