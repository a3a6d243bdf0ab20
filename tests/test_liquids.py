"""Multi-bead molecules and mixtures end to end: ethanol (two beads, bonded CG terms) and methanol-water.

Each liquid goes through reference -> map -> train -> export -> simulate -> compare at a tiny size;
the bonded terms are checked as physics (forces = -grad E, OpenMM agrees, a CG run reproduces the
reference bond-length distribution).
"""

import json

import numpy as np
import openmm
import openmm.unit as u
import pytest

from openmm_cgnn.bonded import (BondedParams, add_bonded_forces, bond_vectors, bonded_energy_forces, bonded_pairs,
                                fit_bonded)
from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.mapping import build_cg_topology, map_reference
from openmm_cgnn.reference import ReferenceConfig, load_reference, run_reference
from openmm_cgnn.species import get_species

RUN = dict(temperature=300.0, equilibration=0.5, production=0.6, frame_interval=0.02, platform="CPU",
           checkpoint_every=100, seed=11)


def _tiny_train_config():
    from openmm_cgnn.training import TrainConfig

    cfg = TrainConfig.from_preset("tiny")
    cfg.dist_soft_max, cfg.dist_hard_max, cfg.max_epochs = 5.0, 5.5, 1   # angstrom: fits a 1.2 nm box
    return cfg


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    """27 ethanol molecules (OPLS-AA), mapped onto CH3 + CH2OH beads: (reference path, data set path)."""
    folder = tmp_path_factory.mktemp("ethanol")
    ref = run_reference(ReferenceConfig(species="ethanol", n_molecules=27, cutoff=0.6, **RUN),
                        folder / "aa.npz", progress=False)
    ds = folder / "cg.npz"
    map_reference(ref, ds, get_species("ethanol").cg_map)
    return ref, ds


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """16 methanol + 32 water, one bead per molecule: (reference path, data set path)."""
    folder = tmp_path_factory.mktemp("mixture")
    ref = run_reference(ReferenceConfig(components=[["methanol", 16], ["water", 32]], cutoff=0.58, **RUN),
                        folder / "aa.npz", progress=False)
    ds = folder / "cg.npz"
    map_reference(ref, ds)
    return ref, ds


# -- bonded terms: physics --------------------------------------------------------------------------------

def _chains(rng, n_mol=4, beads=3, edge=1.3):
    """Random 3-bead chains with bonds ~0.3 nm, wrapped into a cubic box (so some cross the boundary)."""
    pos = []
    for _ in range(n_mol):
        p = [rng.uniform(0, edge, 3)]
        for _ in range(beads - 1):
            step = rng.normal(size=3)
            p.append(p[-1] + 0.3 * step / np.linalg.norm(step))
        pos.extend(p)
    box = np.eye(3) * edge
    return np.mod(np.array(pos), edge), box, np.repeat(np.arange(n_mol), beads), np.tile([0, 1, 0], n_mol)


def test_bonded_forces_are_minus_the_energy_gradient_and_match_openmm():
    rng = np.random.default_rng(5)
    pos, box, residues, types = _chains(rng)
    names = ["A", "B"]
    params = BondedParams({"A-B": {"r0": 0.28, "k": 5000.0}}, {"A-B-A": {"theta0": 2.0, "k": 80.0}})
    e, f = bonded_energy_forces(params, pos, box, types, names, residues)
    h = 1e-6
    for i, d in [(0, 0), (1, 2), (2, 1), (7, 0)]:
        plus, minus = pos.copy(), pos.copy()
        plus[i, d] += h
        minus[i, d] -= h
        grad = (bonded_energy_forces(params, plus, box, types, names, residues)[0]
                - bonded_energy_forces(params, minus, box, types, names, residues)[0]) / (2 * h)
        assert f[i, d] == pytest.approx(-grad, rel=1e-5, abs=1e-4)
    top = build_cg_topology([names[t] for t in types], residues, box_vectors=box * u.nanometer)
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * u.nanometer for row in box])
    for _ in range(len(pos)):
        system.addParticle(10.0)
    assert len(add_bonded_forces(system, top, params)) == 2
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * u.nanometer)
    state = ctx.getState(getEnergy=True, getForces=True)
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(e, rel=1e-9)
    np.testing.assert_allclose(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer), f,
                               rtol=1e-7, atol=1e-6)


def test_bonded_terms_reproduce_the_reference_bond_length_distribution(ethanol):
    _, ds_path = ethanol
    ds = CGDataset.load(ds_path)
    params = fit_bonded([ds])
    assert set(params.bonds) == {"CH2OH-CH3"} and not params.angles
    pairs = bonded_pairs(ds.bead_residues)
    r_ref = np.linalg.norm(bond_vectors(ds.positions, ds.boxes, pairs), axis=2).ravel()
    # a CG run with only the bonded terms (an ideal gas of dumbbells) must sample the fitted distribution
    top = build_cg_topology([ds.type_names[t] for t in ds.bead_types], ds.bead_residues,
                            box_vectors=ds.boxes[-1] * u.nanometer)
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * u.nanometer for row in ds.boxes[-1]])
    for m in ds.bead_masses:
        system.addParticle(float(m))
    add_bonded_forces(system, top, params.to_dict())
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 5 / u.picosecond, 0.001 * u.picoseconds)
    integrator.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ds.positions[-1] * u.nanometer)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 1)
    integrator.step(2000)
    samples = []
    for _ in range(300):
        integrator.step(50)
        p = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        samples.append(np.linalg.norm(bond_vectors(p[None], ds.boxes[-1:], pairs), axis=2).ravel())
    r_cg = np.concatenate(samples)
    assert r_cg.mean() == pytest.approx(r_ref.mean(), abs=0.15 * r_ref.std())
    assert r_cg.std() == pytest.approx(r_ref.std(), rel=0.15)


# -- mixtures ------------------------------------------------------------------------------------------------

def test_mixture_mapping_preserves_composition_masses_and_force_sums(mixture):
    ref_path, ds_path = mixture
    ref, ds = load_reference(ref_path), CGDataset.load(ds_path)
    assert ds.type_names == ["MEOH", "HOH"]
    assert int(np.sum(ds.bead_types == 0)) == 16 and int(np.sum(ds.bead_types == 1)) == 32
    np.testing.assert_allclose(ds.bead_masses[ds.bead_types == 0], 32.042, atol=2e-3)
    np.testing.assert_allclose(ds.bead_masses[ds.bead_types == 1], 18.015, atol=2e-3)
    atoms_of = {}
    for atom in ref.topology.atoms():
        atoms_of.setdefault(atom.residue.index, []).append(atom.index)
    for bead in range(ds.n_beads):   # each bead's force is the sum over its molecule's atoms
        idx = atoms_of[int(ds.bead_residues[bead])]
        np.testing.assert_allclose(ds.forces[:, bead], ref.forces[:, idx].astype(float).sum(1), atol=1e-6)


def _train_export(ds_path, folder):
    from openmm_cgnn.export import export_model
    from openmm_cgnn.training import train

    model_dir = train([ds_path], _tiny_train_config(), folder / "model", verbose=False)
    return model_dir, export_model(model_dir, folder / "model.pt")


@pytest.fixture(scope="module")
def mixture_model(mixture, tmp_path_factory):
    return _train_export(mixture[1], tmp_path_factory.mktemp("mixture-model"))[1]


def _simulate_and_compare(ds_path, pt, folder, harness_cfg, reference_datasets=None):
    from openmm_cgnn.harness import compare
    from openmm_cgnn.simulate import CGSimulationConfig, load_cg_frames, run_cg_simulation

    sim = folder / "sim"
    run_cg_simulation(CGSimulationConfig(model=str(pt), equilibration=0.05, production=0.1, frame_interval=0.02,
                                         platform="CPU", start_dataset=str(ds_path), torch_threads=1), sim,
                      progress=False)
    frames, _ = load_cg_frames(sim)
    assert np.isfinite(frames["positions"]).all() and len(frames["positions"]) == 5
    state = CGDataset.load(ds_path).state
    report = compare(pt, f"300K:{state['density_g_cm3']:.4f}g/cm3", folder / "report", harness_cfg,
                     reference_datasets=reference_datasets, progress=False)
    return report


def test_ethanol_end_to_end_with_bonded_terms_and_the_models_own_system(ethanol, tmp_path):
    from openmm_cgnn.harness import HarnessConfig
    from openmm_cgnn.system import CGModel, cg_topology_from_dataset

    _, ds_path = ethanol
    cfg = HarnessConfig.from_preset("tiny", n_molecules=27, aa_cutoff=0.6, aa_equilibration=0.2, aa_production=0.4,
                               aa_frame_interval=0.02, cg_production=0.2)
    model_dir, pt = _train_export(ds_path, tmp_path)
    report = _simulate_and_compare(ds_path, pt, tmp_path, cfg)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert set(meta["bonded"]["bonds"]) == {"CH2OH-CH3"}
    system = CGModel(pt).create_system(cg_topology_from_dataset(CGDataset.load(ds_path)))
    assert any(isinstance(f, openmm.HarmonicBondForce) and f.getNumBonds() == 27 for f in system.getForces())
    # the harness took ethanol and its two-bead map from the model, ran its own all-atom reference
    assert report["config"]["species"] == "ethanol" and report["config"]["mapping"] == get_species("ethanol").cg_map
    sp = report["state_points"][0]
    assert sp["status"] == "complete", sp["message"]
    assert sp["reference"]["source"] == "computed" and sp["by_type"]["composition"] == {"CH3": 27, "CH2OH": 27}
    assert set(sp["by_type"]["rdf"]) == {"CH3-CH3", "CH3-CH2OH", "CH2OH-CH2OH"}
    assert set(sp["by_type"]["adf"]) == {"CH3", "CH2OH"}
    # the ADF shell comes from the intermolecular RDF, beyond the CH3-CH2OH bond
    assert sp["adf"]["shell_cutoff_nm"] > 0.3 and sp["adf"]["l1"] is not None


def test_intermolecular_rdf_of_an_ideal_gas_of_dumbbells_is_one():
    from openmm_cgnn.analysis import rdf

    rng = np.random.default_rng(3)
    box = np.eye(3) * 3.0
    first = rng.uniform(0, 3.0, (20, 300, 3))
    pos = np.concatenate([first, first + 0.15], axis=1)        # each bead bonded to a partner 0.26 nm away
    molecules = np.concatenate([np.arange(300), np.arange(300)])
    r, g_all = rdf(pos, box, r_max=1.2, bin_width=0.05)
    _, g_inter = rdf(pos, box, r_max=1.2, bin_width=0.05, molecules=molecules)
    assert g_all[5] > 1.8                                          # the bond peak in the total RDF (~1.95)
    assert np.mean(g_inter[2:]) == pytest.approx(1.0, abs=0.03) and g_inter[5] < 1.3


def test_mixture_end_to_end(mixture, mixture_model, tmp_path):
    from openmm_cgnn.harness import HarnessConfig

    _, ds_path = mixture
    report = _simulate_and_compare(ds_path, mixture_model, tmp_path,
                                   HarnessConfig.from_preset("tiny", cg_production=0.2), reference_datasets=[ds_path])
    assert report["config"]["system"] == {"components": [["methanol", 16], ["water", 32]]}
    sp = report["state_points"][0]
    assert sp["status"] == "complete", sp["message"]
    assert sp["by_type"]["composition"] == {"MEOH": 16, "HOH": 32}
    for key in ("MEOH-MEOH", "MEOH-HOH", "HOH-HOH"):
        assert np.isfinite(sp["by_type"]["rdf"][key]["mad"]), key


def test_harness_fails_fast_when_the_liquid_does_not_fit_the_model(mixture_model, tmp_path):
    """The issue's water example the other way round: a model of one liquid, the harness asked for another."""
    from openmm_cgnn.errors import CGNNError
    from openmm_cgnn.harness import HarnessConfig, compare

    with pytest.raises(CGNNError, match="maps onto bead types ETOH.*trained on MEOH, HOH"):
        compare(mixture_model, "300K:0.8g/cm3", tmp_path / "rep", HarnessConfig.from_preset("tiny", species="ethanol"),
                progress=False)
    assert not (tmp_path / "rep").exists()


def test_harness_takes_the_liquid_and_map_from_the_training_metadata():
    """The issue's water example: a water model makes the harness run water, not the methanol default."""
    from openmm_cgnn.harness import HarnessConfig, check_mapping, resolve_system

    def meta(config, spec=None):
        return {"training": {"datasets": [{"source": {"config": config, "species": config.get("species")},
                                           "mapping_spec": spec}]}}

    water = resolve_system(HarnessConfig.from_preset("tiny"), meta({"species": "water", "forcefield": "spce"}))
    assert water.species == "water" and water.aa_forcefield == "spce" and water.system is None
    assert check_mapping(water, ["HOH"]) == ["HOH"]
    mix = resolve_system(HarnessConfig.from_preset("tiny"), meta({"species": "methanol",
                                                             "components": [["methanol", 4], ["water", 8]]}))
    assert mix.system == {"components": [["methanol", 4], ["water", 8]]}
    assert check_mapping(mix, ["MEOH", "HOH"]) == ["MEOH", "HOH"]
    eth = resolve_system(HarnessConfig.from_preset("tiny"), meta({"species": "ethanol"}, get_species("ethanol").cg_map))
    assert check_mapping(eth, ["CH3", "CH2OH"]) == ["CH3", "CH2OH"]
    # an explicit choice wins over the metadata
    assert resolve_system(HarnessConfig.from_preset("tiny", species="methanol"), meta({"species": "water"})).species \
        == "methanol"
    imported = resolve_system(HarnessConfig.from_preset("tiny"), meta({"imported": "trr"}))
    assert imported.species is None and imported.system is None
