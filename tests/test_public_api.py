"""A plain OpenMM script needs only ``import openmm_cgnn``, its public names and OpenMM-ML's
``MLPotential`` to run both model kinds; the registry says which potential reads a file; the geometry
layer gives known answers; a wrong model file gets a message that names the right one."""

import inspect
import shutil

import numpy as np
import openmm
import openmm.unit as u
import pytest
from openmmml import MLPotential

import openmm_cgnn
from openmm_cgnn.baselines import PairForceField, fit_pair_force_matching
from openmm_cgnn.geometry import aa_cutoff_for_edge, box_edge, box_widths, cutoff_fits
from openmm_cgnn.species import get_species
from openmm_cgnn.system import potential_for
from openmm_cgnn.testing import make_synthetic_dataset

KJ = u.kilojoule_per_mole
KJ_NM = u.kilojoule_per_mole / u.nanometer


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """A two-bead-type synthetic data set (64 beads, 1.6 nm box) and a pair force field fitted to it."""
    d = tmp_path_factory.mktemp("cgpair")
    ds_path = d / "cg.npz"
    ds = make_synthetic_dataset(ds_path, n_frames=6, type_names=("A", "B"), seed=3)
    pair = fit_pair_force_matching([ds], cutoff=0.7, bin_width=0.02, fit_volume=False)
    return ds_path, pair.save(d / "pair.json")


def _context(system: openmm.System, positions: np.ndarray) -> openmm.Context:
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * u.nanometer)
    return ctx


def _energy_forces(ctx: openmm.Context, positions: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    if positions is not None:
        ctx.setPositions(positions * u.nanometer)
    state = ctx.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(KJ_NM)


def _check_minus_gradient(ctx: openmm.Context, positions: np.ndarray, beads: list[int], h: float = 1e-5,
                          atol: float = 1e-3) -> None:
    """Central finite differences of the energy (kJ/mol) equal the Context's forces (kJ/mol/nm)."""
    _, forces = _energy_forces(ctx, positions)
    for i in beads:
        for k in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            numeric = -(_energy_forces(ctx, plus)[0] - _energy_forces(ctx, minus)[0]) / (2 * h)
            assert numeric == pytest.approx(forces[i, k], abs=atol, rel=1e-5), (i, k)


def test_public_names_have_their_real_signatures():
    assert set(openmm_cgnn.__all__) >= {"create_system", "CGDataset", "cg_topology_from_dataset", "load_exported",
                                        "CGNNError"}
    for name in ("create_system", "cg_topology_from_dataset", "load_exported"):
        params = inspect.signature(getattr(openmm_cgnn, name)).parameters.values()
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params), name
    assert "masses" in inspect.signature(openmm_cgnn.create_system).parameters


def test_cgpair_through_mlpotential_is_the_pair_force_field(pair_files):
    ds_path, pair_json = pair_files
    # -- the script: public names only --------------------------------------------------------------
    ds = openmm_cgnn.CGDataset.load(ds_path)
    topology = openmm_cgnn.cg_topology_from_dataset(ds, frame=2)
    system = MLPotential("cgpair", model=str(pair_json)).createSystem(topology, masses=ds.bead_masses,
                                                                       removeCMMotion=False)
    # -----------------------------------------------------------------------------------------------
    pos = ds.positions[2]
    ctx = _context(system, pos)
    energy, forces = _energy_forces(ctx)
    masses = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    np.testing.assert_allclose(masses, ds.bead_masses)

    ff = PairForceField.load(pair_json)
    e_old, f_old = _energy_forces(_context(ff.create_system(topology, bead_masses=ds.bead_masses), pos))
    assert energy == pytest.approx(e_old, abs=1e-9) and np.abs(forces - f_old).max() < 1e-9
    e_direct, f_direct = _energy_forces(_context(openmm_cgnn.create_system(topology, pair_json,
                                                                          masses=ds.bead_masses), pos))
    assert energy == pytest.approx(e_direct, abs=1e-9) and np.abs(forces - f_direct).max() < 1e-9
    # the NumPy evaluator (SciPy's spline of the same table) is an independent implementation
    e_np, f_np = ff.energy_forces(pos, ds.boxes[2], ds.bead_types)
    assert energy == pytest.approx(e_np, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(forces, f_np, atol=1e-4 * max(1.0, np.abs(f_np).max()))
    assert np.abs(forces).max() > 1.0      # beads close enough to feel the pair force
    _check_minus_gradient(ctx, pos, beads=[0, 1, 33])


def test_cgpair_needs_masses_for_element_less_beads(pair_files):
    ds_path, pair_json = pair_files
    ds = openmm_cgnn.CGDataset.load(ds_path)
    topology = openmm_cgnn.cg_topology_from_dataset(ds)
    with pytest.raises(openmm_cgnn.CGNNError, match="pass masses"):
        MLPotential("cgpair", model=str(pair_json)).createSystem(topology)
    with pytest.raises(openmm_cgnn.CGNNError, match="pass masses"):
        openmm_cgnn.create_system(topology, pair_json)


def test_cgnn_through_mlpotential_with_public_names(methanol_dataset, tiny_model_pt):
    ds = openmm_cgnn.CGDataset.load(methanol_dataset)
    topology = openmm_cgnn.cg_topology_from_dataset(ds, frame=5)
    via_ml = MLPotential("cgnn", model=str(tiny_model_pt)).createSystem(topology, removeCMMotion=False)
    direct = openmm_cgnn.create_system(topology, tiny_model_pt)
    pos = ds.positions[5]
    ctx = _context(via_ml, pos)
    energy, forces = _energy_forces(ctx)
    e_direct, f_direct = _energy_forces(_context(direct, pos))
    assert energy == pytest.approx(e_direct, rel=1e-12, abs=1e-9) and np.abs(forces - f_direct).max() < 1e-9
    _, metadata = openmm_cgnn.load_exported(tiny_model_pt)
    by_type = metadata["type_masses"]
    assert [via_ml.getParticleMass(i).value_in_unit(u.dalton) for i in range(3)] == \
        [pytest.approx(by_type[a.name]) for a in list(topology.atoms())[:3]]
    _check_minus_gradient(ctx, pos, beads=[0, 17], atol=2e-3)


def test_the_registry_names_the_potential_that_reads_a_model(pair_files, tiny_model_pt, tmp_path):
    _, pair_json = pair_files
    assert potential_for(pair_json) == "cgpair"
    assert potential_for(PairForceField.load(pair_json)) == "cgpair"
    assert potential_for(tiny_model_pt) == "cgnn"
    assert potential_for(openmm_cgnn.load_exported(tiny_model_pt)) == "cgnn"
    # a model handed to the other potential: the message names the one to use
    with pytest.raises(openmm_cgnn.CGNNError, match=r"use MLPotential\('cgnn', model=\.\.\.\)"):
        MLPotential("cgpair", model=str(tiny_model_pt))
    with pytest.raises(openmm_cgnn.CGNNError, match=r"use MLPotential\('cgpair', model=\.\.\.\)"):
        MLPotential("cgnn", model=str(pair_json))
    with pytest.raises(openmm_cgnn.CGNNError, match="is a folder"):
        potential_for(tmp_path)
    with pytest.raises(openmm_cgnn.CGNNError, match="does not exist"):
        potential_for(tmp_path / "absent.pt")
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(openmm_cgnn.CGNNError, match="is not an exported openmm-cgnn model"):
        potential_for(tmp_path / "notes.txt")


def test_the_hippynn_weights_are_not_taken_for_the_exported_model(tiny_model_dir, tmp_path):
    from openmm_cgnn.training import load_trained

    weights = tiny_model_dir / "hippynn_weights.pt"
    assert weights.is_file() and not (tiny_model_dir / "model.pt").exists()
    fix = f"run 'openmm-cgnn export {tiny_model_dir} --out model.pt' and give that file"
    with pytest.raises(openmm_cgnn.CGNNError, match="is the hippynn weights file") as info:
        openmm_cgnn.load_exported(weights)
    assert fix in str(info.value)
    with pytest.raises(openmm_cgnn.CGNNError, match="is a folder; give the .pt file written by 'openmm-cgnn export"):
        openmm_cgnn.load_exported(tiny_model_dir)
    topology = openmm.app.Topology()
    with pytest.raises(openmm_cgnn.CGNNError, match="is the hippynn weights file") as info:
        openmm_cgnn.create_system(topology, weights)
    assert fix in str(info.value)
    with pytest.raises(openmm_cgnn.CGNNError, match=f"give its folder '{tiny_model_dir}'"):
        load_trained(weights)
    # a model directory written before the weights had their own name is still read
    old = tmp_path / "old-model"
    shutil.copytree(tiny_model_dir, old)
    (old / "hippynn_weights.pt").rename(old / "model.pt")
    assert load_trained(old).type_names == load_trained(tiny_model_dir).type_names


def test_geometry_known_answers():
    # a triclinic box: widths are the distances between opposite faces, not the edge lengths
    box = np.array([[2.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(box_widths(box), [4.0 / np.sqrt(5.0), 2.0, 3.0])
    np.testing.assert_allclose(box_widths(np.stack([box, 2 * box])), [box_widths(box), 2 * box_widths(box)])
    # minimum image: a cutoff of exactly half the smallest width fits (pairs are counted at r < cutoff)
    assert cutoff_fits(np.eye(3) * 1.6, 0.8) and not cutoff_fits(np.eye(3) * 1.6, 0.8 + 1e-9)
    assert not cutoff_fits(box, 0.9) and cutoff_fits(box, 0.89)
    methanol = get_species("methanol")
    assert methanol.molecular_mass == pytest.approx(32.042, abs=2e-3)   # CH3OH: 12.011 + 4 x 1.008 + 15.999
    edge = box_edge(64, methanol.molecular_mass, 0.787)                  # 64 molecules at 0.787 g/cm^3
    assert edge ** 3 * 1e-21 * 0.787 * 6.02214076e23 == pytest.approx(64 * methanol.molecular_mass)
    assert edge == pytest.approx(1.6295, abs=1e-4)
    assert aa_cutoff_for_edge(edge) == 0.74 and aa_cutoff_for_edge(5.0) == 1.0   # 0.46 x 1.6295 = 0.7496


def test_a_potential_module_imports_first_in_a_fresh_interpreter():
    """openmmml loads every registered potential while it is imported; importing one of ours first
    must not leave it half-initialised (it did for openmm_cgnn.mlpotential before the package
    imported openmmml itself)."""
    import subprocess
    import sys

    code = "import openmm_cgnn.cgpair, openmm_cgnn.mlpotential, openmm_cgnn.baselines; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
