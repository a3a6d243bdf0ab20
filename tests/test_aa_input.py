"""Bring your own all-atom system: PDB + force-field XML, System XML + PDB, packed components, TRR import."""

import subprocess
import sys
from importlib import resources

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgnn import aa_input
from openmm_cgnn.errors import CGNNError
from openmm_cgnn.reference import ReferenceConfig, load_reference, run_reference

METHANOL_XML = str(resources.files("openmm_cgnn") / "data" / "methanol-oplsaa.xml")
SHORT = dict(temperature=300.0, cutoff=0.5, equilibration=0.02, production=0.06, frame_interval=0.02,
             platform="CPU", seed=3)


def _energy_forces(system, positions, box):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) * u.nanometer for row in box])
    ctx.setPositions(positions * u.nanometer)
    state = ctx.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))


@pytest.fixture(scope="module")
def methanol_box(tmp_path_factory):
    """The built-in 27-methanol box written as PDB and its built-in System serialised as XML."""
    folder = tmp_path_factory.mktemp("box")
    cfg = ReferenceConfig(species="methanol", n_molecules=27, **SHORT)
    setup = aa_input.prepare(cfg, np.random.default_rng(cfg.seed))
    pdb = folder / "methanol.pdb"
    with open(pdb, "w") as fh:
        app.PDBFile.writeFile(setup.topology, setup.positions * u.nanometer, fh)
    xml = folder / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(setup.system))
    return cfg, setup, pdb, xml


def test_pdb_plus_forcefield_and_system_xml_give_the_builtin_energies(methanol_box):
    cfg, builtin, pdb, xml = methanol_box
    from_pdb = aa_input.prepare(ReferenceConfig(box=str(pdb), forcefield_files=[METHANOL_XML], **SHORT), None)
    from_xml = aa_input.prepare(ReferenceConfig(box=str(pdb), system_xml=str(xml), **SHORT), None)
    pos = from_pdb.positions      # the PDB's (rounded) positions and box, used for all three Systems
    box = np.array(from_pdb.topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    e0, f0 = _energy_forces(builtin.system, pos, box)
    for other in (from_pdb, from_xml):
        assert other.topology.getNumAtoms() == 27 * 6 and other.description["species"] == "MEO"  # PDB: 3 letters
        e, f = _energy_forces(other.system, pos, box)
        assert e == pytest.approx(e0, rel=1e-9, abs=1e-6)
        np.testing.assert_allclose(f, f0, rtol=1e-7, atol=1e-5)
    assert from_pdb.density == pytest.approx(0.787, rel=1e-3)


def test_box_route_writes_the_builtin_reference_format(methanol_box, tmp_path):
    cfg, _, pdb, _ = methanol_box
    ref_b = load_reference(run_reference(cfg, tmp_path / "builtin.npz", progress=False))
    ref_u = load_reference(run_reference(ReferenceConfig(box=str(pdb), forcefield_files=[METHANOL_XML], **SHORT),
                                         tmp_path / "user.npz", progress=False))
    for name in ("positions", "forces", "boxes", "potential_energy", "time"):
        a, b = getattr(ref_b, name), getattr(ref_u, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
    assert ref_u.metadata["format"] == ref_b.metadata["format"]
    su, sb = dict(ref_u.metadata["state"]), dict(ref_b.metadata["state"])
    assert su.pop("density_g_cm3") == pytest.approx(sb.pop("density_g_cm3"), rel=1e-3)  # PDB rounds the box
    assert su == sb
    assert ref_u.metadata["system"]["route"] == "box"
    assert np.isfinite(ref_u.forces).all() and np.isfinite(ref_u.potential_energy).all()
    assert [a.name for a in ref_u.topology.atoms()] == [a.name for a in ref_b.topology.atoms()]


def test_density_rescales_a_box_keeping_molecules_whole(methanol_box):
    _, builtin, pdb, _ = methanol_box
    top, pos, box = aa_input.box_from_file(pdb)
    new_pos, new_box = aa_input.scale_to_density(top, pos, box, 0.70)
    assert aa_input.box_density(top, new_box) == pytest.approx(0.70, rel=1e-9)
    for bond in top.bonds():   # bond lengths unchanged: whole molecules moved
        i, j = bond[0].index, bond[1].index
        assert np.linalg.norm(new_pos[i] - new_pos[j]) == pytest.approx(np.linalg.norm(pos[i] - pos[j]), abs=1e-9)


def test_components_pack_a_mixture_at_the_target_density():
    mols = [aa_input.load_molecule("methanol"), aa_input.load_molecule("water")]
    top, pos, edge = aa_input.pack_box(mols, [10, 30], 0.9, np.random.default_rng(0))
    names = [r.name for r in top.residues()]
    assert names.count("MEOH") == 10 and names.count("HOH") == 30
    mass = sum(a.element.mass.value_in_unit(u.dalton) for a in top.atoms())
    assert mass / 6.02214076e23 / (edge ** 3 * 1e-21) == pytest.approx(0.9, rel=1e-12)
    # no two molecules closer than the clash distance after re-drawing orientations
    owner = np.concatenate([[k] * len(list(r.atoms())) for k, r in enumerate(top.residues())])
    assert aa_input.clashing_molecules(pos, np.eye(3) * edge, owner, 0.12).size == 0
    # each molecule keeps its template geometry
    for k, res in enumerate(top.residues()):
        idx = [a.index for a in res.atoms()]
        tpl = mols[0 if res.name == "MEOH" else 1].positions
        d_tpl = np.linalg.norm(tpl[:, None] - tpl[None], axis=2)
        d = np.linalg.norm(pos[idx][:, None] - pos[idx][None], axis=2)
        np.testing.assert_allclose(d, d_tpl, atol=1e-9)


def test_mixture_reference_uses_compatible_force_fields(tmp_path):
    cfg = ReferenceConfig(components=[["methanol", 8], ["water", 24]], density=0.9, **{**SHORT, "cutoff": 0.45})
    ref = load_reference(run_reference(cfg, tmp_path / "mix.npz", progress=False))
    assert ref.metadata["system"]["forcefield_files"] == ["methanol-oplsaa.xml", "water-spce-opls.xml"]
    assert np.isfinite(ref.forces).all() and ref.positions.shape[1] == 8 * 6 + 24 * 3


def _write_pdb(path, topology, positions, box=None):
    if box is not None:
        topology.setPeriodicBoxVectors(box * u.nanometer)
    with open(path, "w") as fh:
        app.PDBFile.writeFile(topology, positions * u.nanometer, fh)


@pytest.mark.parametrize("case", ["no-template", "no-forcefield", "too-dense", "bad-count", "no-box"])
def test_bad_inputs_fail_with_one_line_and_leave_nothing(case, methanol_box, tmp_path):
    _, setup, pdb, _ = methanol_box
    out = tmp_path / "x.npz"
    if case == "no-template":
        bad = tmp_path / "water.pdb"      # a water box, but only methanol's force field
        w = aa_input.prepare(ReferenceConfig(species="water", n_molecules=64, **SHORT), np.random.default_rng(0))
        _write_pdb(bad, w.topology, w.positions)
        cfg, message = ReferenceConfig(box=str(bad), forcefield_files=[METHANOL_XML], **SHORT), "no template"
    elif case == "no-forcefield":
        mol = tmp_path / "mol.pdb"
        m = aa_input.load_molecule("methanol")
        _write_pdb(mol, m.topology, m.positions)
        cfg, message = ReferenceConfig(components=[[str(mol), 27]], density=0.787, **SHORT), "needs a force field"
    elif case == "too-dense":
        cfg, message = ReferenceConfig(components=[["methanol", 27]], density=2.8, **SHORT), "do not fit"
    elif case == "bad-count":
        with pytest.raises(CGNNError, match="positive whole number"):
            aa_input.parse_components("methanol:-3")
        return
    else:
        nobox = tmp_path / "nobox.pdb"
        m = aa_input.load_molecule("methanol")
        _write_pdb(nobox, m.topology, m.positions)
        cfg, message = ReferenceConfig(box=str(nobox), forcefield_files=[METHANOL_XML], **SHORT), "no periodic box"
    with pytest.raises(CGNNError, match=message) as info:
        run_reference(cfg, out, progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert not out.exists() and not (tmp_path / "x.npz.partial").exists()


def test_cli_reference_from_components_reports_a_missing_force_field_in_one_line(tmp_path):
    mol = tmp_path / "mol.pdb"
    m = aa_input.load_molecule("ethanol")
    _write_pdb(mol, m.topology, m.positions)
    res = subprocess.run([sys.executable, "-m", "openmm_cgnn.cli", "reference", "--components", f"{mol}:27",
                          "--density", "0.79", "--ns", "0.0001", "--frame-interval", "0.05",
                          "--out", str(tmp_path / "o.npz"), "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "needs a force field" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.npz").exists()


# -- TRR import -------------------------------------------------------------------------------------------

def _write_trr(path, ref, with_forces=True):
    from mdtraj.formats import TRRTrajectoryFile

    n = len(ref.time)
    with TRRTrajectoryFile(str(path), "w") as f:
        f._write(ref.positions.astype(np.float32), ref.time.astype(np.float32), np.arange(n, dtype=np.int32),
                 ref.boxes.astype(np.float32), np.zeros(n, np.float32), None,
                 ref.forces.astype(np.float32) if with_forces else None)


def test_trr_written_and_imported_equals_the_source(methanol_reference, tmp_path):
    from openmm_cgnn.mapping import map_reference
    from openmm_cgnn.trajectory_import import import_trr

    ref = load_reference(methanol_reference)
    trr, top = tmp_path / "run.trr", tmp_path / "top.pdb"
    _write_trr(trr, ref)
    _write_pdb(top, ref.topology, ref.positions[0].astype(float), ref.boxes[0])
    out = import_trr(trr, top, tmp_path / "imported.npz", temperature=300.0)
    got = load_reference(out)
    np.testing.assert_array_equal(got.positions, ref.positions)
    np.testing.assert_array_equal(got.forces, ref.forces)
    np.testing.assert_allclose(got.boxes, ref.boxes, rtol=1e-7)
    np.testing.assert_allclose(got.time, ref.time, rtol=1e-6)
    assert np.isnan(got.potential_energy).all() and got.metadata["state"]["temperature_K"] == 300.0
    assert [a.name for a in got.topology.atoms()] == [a.name for a in ref.topology.atoms()]
    ds = map_reference(out, tmp_path / "cg.npz")   # maps like a reference of our own
    assert ds.n_beads == 64 and ds.metadata["state"]["ensemble"] == "NVT"


def test_trr_without_forces_gives_a_clear_error_and_no_output(methanol_reference, tmp_path):
    ref = load_reference(methanol_reference)
    trr, top = tmp_path / "noforces.trr", tmp_path / "top.pdb"
    _write_trr(trr, ref, with_forces=False)
    _write_pdb(top, ref.topology, ref.positions[0].astype(float), ref.boxes[0])
    res = subprocess.run([sys.executable, "-m", "openmm_cgnn.cli", "import-trr", "--trr", str(trr), "--top", str(top),
                          "--temperature", "300", "--out", str(tmp_path / "o.npz")], capture_output=True, text=True)
    assert res.returncode == 2 and "has no forces" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.npz").exists()
