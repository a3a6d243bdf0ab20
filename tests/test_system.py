"""The CG OpenMM System: forces are gradients, energy is conserved, bad inputs are refused, and the
whole train -> export -> simulate chain runs."""

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.export import load_exported
from openmm_cgnn.simulate import CGSimulationBlowUpError, CGSimulationConfig, load_cg_frames, run_cg_simulation
from openmm_cgnn.system import CGSystemError, cg_topology_from_dataset, create_system

KJ_NM = u.kilojoule_per_mole / u.nanometer


def _context(system, positions, integrator=None):
    integrator = integrator or openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions * u.nanometer)
    return ctx


def _energy(ctx, positions):
    ctx.setPositions(positions * u.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


@pytest.fixture(scope="module")
def frame(methanol_dataset):
    ds = CGDataset.load(methanol_dataset)
    return ds, cg_topology_from_dataset(ds, 5), ds.positions[5]


def test_context_forces_are_minus_the_energy_gradient(frame, tiny_model_pt):
    ds, top, pos = frame
    ctx = _context(create_system(top, tiny_model_pt), pos)
    forces = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ_NM)
    h = 1e-5
    rng = np.random.default_rng(0)
    for bead in rng.choice(len(pos), 6, replace=False):
        for dim in range(3):
            plus, minus = pos.copy(), pos.copy()
            plus[bead, dim] += h
            minus[bead, dim] -= h
            fd = -(_energy(ctx, plus) - _energy(ctx, minus)) / (2 * h)
            assert fd == pytest.approx(forces[bead, dim], rel=1e-4, abs=1e-3)


def test_energy_is_invariant_to_translation_and_periodic_images(frame, tiny_model_pt):
    ds, top, pos = frame
    ctx = _context(create_system(top, tiny_model_pt), pos)
    e0 = _energy(ctx, pos)
    box = ds.boxes[5]
    assert _energy(ctx, pos + np.array([0.31, -0.17, 0.05])) == pytest.approx(e0, rel=1e-9, abs=1e-8)
    images = pos + box[0] * np.random.default_rng(1).integers(-2, 3, size=(len(pos), 1))
    assert _energy(ctx, images) == pytest.approx(e0, rel=1e-9, abs=1e-8)


def test_openmm_ml_route_gives_the_same_system(frame, tiny_model_pt):
    from openmmml import MLPotential

    ds, top, pos = frame
    direct = _context(create_system(top, tiny_model_pt), pos)
    via_ml = MLPotential("cgnn", model=str(tiny_model_pt)).createSystem(top, removeCMMotion=False)
    assert via_ml.getParticleMass(0).value_in_unit(u.dalton) == pytest.approx(32.042, abs=2e-3)
    assert _energy(_context(via_ml, pos), pos) == pytest.approx(_energy(direct, pos), rel=1e-12)


def test_nve_energy_is_conserved(frame, tiny_model_pt):
    ds, top, pos = frame
    system = create_system(top, tiny_model_pt)
    ctx = _context(system, pos, openmm.VerletIntegrator(0.001))
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 3)
    totals = []
    for _ in range(20):
        ctx.getIntegrator().step(10)
        s = ctx.getState(getEnergy=True)
        totals.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(u.kilojoule_per_mole))
    kinetic = 1.5 * len(pos) * 0.0083145 * 300
    # Bound: total-energy fluctuation and drift over 200 fs under 1 % of the kinetic energy (~2.4 kJ/mol)
    assert np.ptp(totals) < 0.01 * kinetic, np.ptp(totals)


def test_unknown_bead_type_and_small_box_are_refused(frame, tiny_model_pt):
    ds, top, pos = frame
    bad = app.Topology()
    chain = bad.addChain()
    for name in ["MEOH", "XYZ"]:
        bad.addAtom(name, None, bad.addResidue("CG", chain))
    bad.setPeriodicBoxVectors(top.getPeriodicBoxVectors())
    with pytest.raises(CGSystemError, match="'XYZ'"):
        create_system(bad, tiny_model_pt)
    small = cg_topology_from_dataset(ds)
    small.setPeriodicBoxVectors(np.eye(3) * 1.2 * u.nanometer)
    with pytest.raises(CGSystemError, match="twice the model cutoff"):
        create_system(small, tiny_model_pt)


def test_simulate_writes_trajectory_log_and_metadata(methanol_dataset, tiny_model_dir, tmp_path):
    import mdtraj as md
    from openmm_cgnn.export import export_model

    model = export_model(tiny_model_dir, tmp_path / "model-f32.pt", dtype="float32")
    cfg = CGSimulationConfig(model=str(model), start_dataset=str(methanol_dataset), equilibration=0.1,
                             production=0.4, frame_interval=0.1, platform="CPU", pressure=1.0,
                             barostat_interval=5)
    out = run_cg_simulation(cfg, tmp_path / "sim", progress=False)
    arrays, meta = load_cg_frames(out)
    assert meta["status"] == "complete" and meta["platform"] == "CPU" and meta["units"]["density"] == "g/cm^3"
    assert arrays["positions"].shape == (4, 64, 3) and np.isfinite(arrays["potential_energy"]).all()
    traj = md.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 4 and traj.n_atoms == 64
    np.testing.assert_allclose(traj.unitcell_vectors, arrays["boxes"], rtol=1e-5)
    assert (out / "log.csv").read_text().startswith("time_ps,potential_kJ_mol")


def test_blow_up_stops_with_a_message(methanol_dataset, tiny_model_pt, tmp_path):
    # a frame every (much too long) step: the first frames are still sane, the run blows up later
    cfg = CGSimulationConfig(model=str(tiny_model_pt), start_dataset=str(methanol_dataset), equilibration=0.0,
                             production=2.0, frame_interval=0.05, timestep=0.05, platform="CPU")
    with pytest.raises(CGSimulationBlowUpError, match="blew up"):
        run_cg_simulation(cfg, tmp_path / "boom", progress=False)
    arrays, meta = load_cg_frames(tmp_path / "boom")
    assert meta["status"] == "blew_up" and np.isfinite(arrays["positions"]).all()


def test_pair_baseline_runs_through_the_same_simulation_path(methanol_dataset, tmp_path):
    from openmm_cgnn.baselines import fit_pair_force_matching

    ff = fit_pair_force_matching([CGDataset.load(methanol_dataset)], cutoff=0.8, bin_width=0.02)
    path = ff.save(tmp_path / "pair.json")
    cfg = CGSimulationConfig(model=str(path), start_dataset=str(methanol_dataset), equilibration=0.1,
                             production=0.3, frame_interval=0.1, platform="CPU")
    arrays, meta = load_cg_frames(run_cg_simulation(cfg, tmp_path / "pair-sim", progress=False))
    assert meta["status"] == "complete" and arrays["positions"].shape == (3, 64, 3)
    assert np.all((arrays["temperature"] > 100) & (arrays["temperature"] < 600))


def test_neighbour_table_overflow_stops_the_run_and_names_the_fix(methanol_dataset, tiny_model_pt, tmp_path):
    """A table too small for the liquid gives NaN in the step; simulate says so and how to fix it."""
    cfg = CGSimulationConfig(model=str(tiny_model_pt), start_dataset=str(methanol_dataset), equilibration=0.0,
                             production=0.2, frame_interval=0.1, platform="CPU", neighbour_capacity=4)
    with pytest.raises(CGSimulationBlowUpError, match="--neighbour-capacity"):
        run_cg_simulation(cfg, tmp_path / "overflow", progress=False)
