"""Mapping: centres of mass across boundaries, force sums, invariances, and bad maps."""

import numpy as np
import pytest

from openmm_cgnn.mapping import MappingError, create_mapping, minimum_image
from openmm_cgnn.reference import build_topology
from openmm_cgnn.species import get_species

METHANOL = get_species("methanol")


def _methanol_system(n=8, edge=1.2, seed=0):
    rng = np.random.default_rng(seed)
    top = build_topology(METHANOL, n)
    pos = np.concatenate([METHANOL.template + rng.uniform(0, edge, 3) for _ in range(n)])
    return top, pos, np.eye(3) * edge


def _unwrapped_com(mapping, pos):
    return np.array([(mapping.atom_masses[b.atoms, None] * pos[b.atoms]).sum(0) / b.mass for b in mapping.beads])


def test_com_of_molecule_split_across_boundary_equals_unwrapped():
    top, pos, box = _methanol_system(n=1, edge=1.5)
    mapping = create_mapping(top)
    whole = METHANOL.template + np.array([1.45, 0.7, 0.02])  # sticks out through +x and near -z
    expected = _unwrapped_com(mapping, whole)
    wrapped = whole - np.floor(whole / 1.5) * 1.5               # atoms folded back into the box
    assert np.ptp(wrapped[:, 0]) > 1.0                          # the molecule really is split
    got = mapping.map_positions(wrapped, box)
    np.testing.assert_allclose(got, expected - np.floor(expected / 1.5) * 1.5, atol=1e-12)


def test_com_in_triclinic_box():
    top, _, _ = _methanol_system(n=1)
    mapping = create_mapping(top)
    box = np.array([[1.5, 0, 0], [0.5, 1.4, 0], [0.3, 0.2, 1.3]])
    whole = METHANOL.template + np.array([0.05, 0.05, 0.05])
    shifted = whole.copy()
    shifted[1] -= box[0] - box[1] + box[2]                       # one atom moved by a lattice vector
    a = mapping.map_positions(whole, box)
    b = mapping.map_positions(shifted, box)
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_total_mapped_force_equals_total_atomic_force():
    top, _, _ = _methanol_system(n=10)
    mapping = create_mapping(top, {"MEOH": [{"name": "CM", "atoms": ["CB", "HB1", "HB2", "HB3"]},
                                            {"name": "OH", "atoms": ["OG", "HG1"]}]})
    forces = np.random.default_rng(1).normal(size=(5, top.getNumAtoms(), 3)) * 100
    mapped = mapping.map_forces(forces)
    np.testing.assert_allclose(mapped.sum(axis=1), forces.sum(axis=1), rtol=1e-12, atol=1e-9)


def test_uniform_force_gives_n_times_f_per_bead():
    top, _, _ = _methanol_system(n=3)
    mapping = create_mapping(top, {"MEOH": [{"name": "CM", "atoms": ["CB", "HB1", "HB2", "HB3"]},
                                            {"name": "OH", "atoms": ["OG", "HG1"]}]})
    f = np.array([1.0, -2.0, 0.5])
    mapped = mapping.map_forces(np.tile(f, (top.getNumAtoms(), 1)))
    sizes = np.array([len(b.atoms) for b in mapping.beads])
    np.testing.assert_allclose(mapped, sizes[:, None] * f[None, :])
    assert list(sizes[:2]) == [4, 2]


def test_mapped_positions_follow_translation_and_rotation():
    top, pos, box = _methanol_system(n=6, edge=3.0)
    pos = pos + 0.5  # keep molecules well inside a large box so rotation needs no wrapping
    mapping = create_mapping(top)
    base = mapping.map_positions(pos, None)
    shift = np.array([0.3, -0.2, 0.7])
    np.testing.assert_allclose(mapping.map_positions(pos + shift, None), base + shift, atol=1e-12)
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    np.testing.assert_allclose(mapping.map_positions(pos @ rot.T, None), base @ rot.T, atol=1e-12)
    # in a periodic box a translation moves the wrapped centres by the same vector modulo the box
    moved = mapping.map_positions(pos + shift, box)
    diff = minimum_image((moved - mapping.map_positions(pos, box) - shift)[None], box[None])[0]
    np.testing.assert_allclose(diff, 0.0, atol=1e-12)


def test_bead_masses_and_cg_topology():
    top, _, _ = _methanol_system(n=4)
    mapping = create_mapping(top, {"MEOH": [{"name": "CM", "atoms": ["CB", "HB1", "HB2", "HB3"]},
                                            {"name": "OH", "atoms": ["OG", "HG1"]}]})
    assert mapping.type_names == ["CM", "OH"]
    np.testing.assert_allclose(mapping.bead_masses[:2], [12.011 + 3 * 1.008, 15.999 + 1.008], atol=2e-3)
    cg = mapping.cg_topology()
    assert cg.getNumAtoms() == 8 and cg.getNumResidues() == 4 and cg.getNumBonds() == 4
    default = create_mapping(top)
    assert default.type_names == ["MEOH"] and default.n_beads == 4
    np.testing.assert_allclose(default.bead_masses, 32.042, atol=2e-3)


@pytest.mark.parametrize("spec, message", [
    ({"MEOH": [{"name": "A", "atoms": ["CB", "HB1", "HB2", "HB3"]}]}, "in no bead"),
    ({"MEOH": [{"name": "A", "atoms": ["CB", "HB1", "HB2", "HB3", "OG"]},
               {"name": "B", "atoms": ["OG", "HG1"]}]}, "assigned twice"),
    ({"MEOH": [{"name": "A", "atoms": ["CB", "HB1", "HB2", "HB3", "XX"]},
               {"name": "B", "atoms": ["OG", "HG1"]}]}, "'XX'"),
])
def test_bad_maps_are_rejected_with_the_atom_named(spec, message):
    top, _, _ = _methanol_system(n=2)
    with pytest.raises(MappingError, match=message):
        create_mapping(top, spec)
