"""The OpenMM reporters on plain ``app.Simulation`` objects: recorded frames equal the simulation's state,
and a run that blows up is stopped with a message that says why."""

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from openmm_cgnn.pressure import attach_pressure_probe, current_pressure
from openmm_cgnn.reporters import CGBlowUpReporter, CGFrameReporter, CGSimulationBlowUpError
from openmm_cgnn.units import BOLTZMANN_KJ_PER_MOL_K

EDGE = 1.8   # nm: 27 argon-like atoms at about 1.4 g/cm^3
KJ_NM = u.kilojoule_per_mole / u.nanometer


def _lj_simulation(positions=None, timestep=0.002, probe=True, seed=1):
    """27 Lennard-Jones atoms (sigma 0.34 nm, epsilon 1 kJ/mol, 40 amu) in a cubic box, Langevin at 120 K."""
    n_side = 3
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid + 0.5) * EDGE / n_side if positions is None else positions
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in np.eye(3) * EDGE))
    lj = openmm.NonbondedForce()
    lj.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    lj.setCutoffDistance(0.8)
    top = app.Topology()
    chain = top.addChain()
    for _ in range(len(pos)):
        system.addParticle(40.0)
        lj.addParticle(0.0, 0.34, 1.0)
        top.addAtom("AR", None, top.addResidue("AR", chain))
    system.addForce(lj)
    top.setPeriodicBoxVectors(np.eye(3) * EDGE * u.nanometer)
    if probe:
        attach_pressure_probe(system, 120.0)
    integrator = openmm.LangevinMiddleIntegrator(120 * u.kelvin, 1 / u.picosecond, timestep * u.picoseconds)
    integrator.setRandomNumberSeed(seed)
    sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pos * u.nanometer)
    sim.context.setVelocitiesToTemperature(120 * u.kelvin, seed)
    return sim, pos


def test_recorded_frames_equal_the_simulation_state(tmp_path):
    sim, _ = _lj_simulation()
    frames = CGFrameReporter(5, forces=True)
    sim.reporters.append(frames)
    sim.step(7)
    assert len(frames) == 1                      # step 5 only
    sim.step(13)                                  # steps 10, 15, 20
    assert len(frames) == 4
    state = sim.context.getState(getPositions=True, getForces=True, getEnergy=True)
    last = {k: v[-1] for k, v in frames.arrays().items()}
    np.testing.assert_allclose(last["positions"], state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                               rtol=1e-6)
    np.testing.assert_allclose(last["forces"], state.getForces(asNumpy=True).value_in_unit(KJ_NM), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(last["boxes"], np.eye(3) * EDGE)
    assert last["potential_energy"] == pytest.approx(
        state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), rel=1e-12)
    kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
    assert last["temperature"] == pytest.approx(2 * kinetic / (3 * 27 * BOLTZMANN_KJ_PER_MOL_K), rel=1e-12)
    assert last["density"] == pytest.approx(27 * 40.0 / 6.02214076e23 / (EDGE ** 3 * 1e-21), rel=1e-12)
    assert last["pressure"] == pytest.approx(current_pressure(sim.context, frames.barostat), rel=1e-9)
    np.testing.assert_allclose(frames.arrays()["time"], [0.01, 0.02, 0.03, 0.04], rtol=1e-12)

    # saved in the layout of simulate's frames.npz
    frames.save(tmp_path / "frames.npz", {"note": "lj"})
    with np.load(tmp_path / "frames.npz") as z:
        assert set(z.files) == {"positions", "boxes", "potential_energy", "temperature", "density", "time",
                                "pressure", "forces", "metadata_json"}
        assert z["positions"].shape == (4, 27, 3) and z["positions"].dtype == np.float32
        assert '"note": "lj"' in str(z["metadata_json"])


def test_frames_count_from_the_start_step_and_no_barostat_means_nan_pressure():
    sim, _ = _lj_simulation(probe=False)
    frames = CGFrameReporter(4, start_step=3)
    sim.reporters.append(frames)
    sim.step(12)                                  # steps 3 (t = 0), 7 and 11
    arrays = frames.arrays()
    np.testing.assert_allclose(arrays["time"], [0.0, 0.008, 0.016], rtol=1e-12)
    assert np.isnan(arrays["pressure"]).all() and "forces" not in arrays


def test_overlapping_start_blows_up_before_a_bad_frame_is_recorded():
    sim, pos = _lj_simulation()
    pos = pos.copy()
    pos[1] = pos[0] + [0.08, 0.0, 0.0]           # far inside sigma: a huge repulsion
    sim.context.setPositions(pos * u.nanometer)
    frames = CGFrameReporter(1)
    sim.reporters += [CGBlowUpReporter(1), frames]   # target: the integrator's 120 K
    with pytest.raises(CGSimulationBlowUpError, match=r"temperature ran away to \d+ K \(target 120.0 K\) at t = 0.002"):
        sim.step(10)
    assert len(frames) == 0


def test_overlap_inside_the_prior_and_absurd_moves_stop_the_run():
    sim, pos = _lj_simulation()
    pos = pos.copy()
    pos[1] = pos[0] + [0.2, 0.0, 0.0]
    sim.context.setPositions(pos * u.nanometer)
    sim.reporters.append(CGBlowUpReporter(1, temperature=1e6, prior_taper=0.3, overlap_margin=0.05))
    with pytest.raises(CGSimulationBlowUpError, match=r"beads came 0\.\d+ nm apart .* prior \(which starts at 0.300"):
        sim.step(2)

    sim, _ = _lj_simulation()
    sim.reporters.append(CGBlowUpReporter(5, max_displacement=1e-4))
    with pytest.raises(CGSimulationBlowUpError, match=r"bead \d+ moved 0\.\d+ nm in the 5 steps before t = 0.020"):
        sim.step(20)          # the first check only remembers; the second one sees thermal motion


def test_non_finite_energy_stops_the_run_and_says_so():
    sim, _ = _lj_simulation()
    system = sim.system
    bad = openmm.CustomExternalForce("sqrt(x - 100)")  # NaN everywhere in the box
    bad.addParticle(0, [])
    system.addForce(bad)
    sim.context.reinitialize(preserveState=True)
    sim.reporters.append(CGBlowUpReporter(1))
    with pytest.raises(CGSimulationBlowUpError, match="stopped being finite at t = 0.002 ps"):
        sim.step(3)


def test_reporters_on_a_plain_simulation_of_an_exported_model(methanol_dataset, tiny_model_pt):
    """The script a user writes: create_system, app.Simulation, the two reporters."""
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.system import cg_topology_from_dataset, create_system

    ds = CGDataset.load(methanol_dataset)
    top = cg_topology_from_dataset(ds, 3)
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    sim = app.Simulation(top, create_system(top, tiny_model_pt), integrator, openmm.Platform.getPlatformByName("CPU"))
    sim.context.setPositions(ds.positions[3] * u.nanometer)
    sim.context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    monitor = CGBlowUpReporter.for_model(2, tiny_model_pt)
    frames = CGFrameReporter(2)
    sim.reporters += [monitor, frames]
    sim.step(6)
    assert monitor.prior_taper is not None and monitor.module is not None
    state = sim.context.getState(getPositions=True, getEnergy=True)
    assert len(frames) == 3 and np.isnan(frames.arrays()["pressure"]).all()
    np.testing.assert_allclose(frames.arrays()["positions"][-1],
                               state.getPositions(asNumpy=True).value_in_unit(u.nanometer), rtol=1e-6)
    assert frames.arrays()["potential_energy"][-1] == pytest.approx(
        state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), rel=1e-5)


def test_simulate_resumes_an_interrupted_run_where_its_checkpoint_left_off(methanol_dataset, tmp_path, monkeypatch):
    """simulate records through the reporters; a run stopped after a checkpoint resumes from it: the frames
    saved before the stop are kept and the time axis goes on without a gap."""
    from openmm_cgnn import simulate
    from openmm_cgnn.baselines import fit_pair_force_matching
    from openmm_cgnn.dataset import CGDataset

    pair = fit_pair_force_matching([CGDataset.load(methanol_dataset)], cutoff=0.8, bin_width=0.02)
    cfg = simulate.CGSimulationConfig(model=str(pair.save(tmp_path / "pair.json")), start_dataset=str(methanol_dataset),
                                      equilibration=0.02, production=0.06, frame_interval=0.01, platform="CPU",
                                      checkpoint_every=2)
    save = simulate.PartialRun.save

    def save_then_stop(self, simulation, frames):
        save(self, simulation, frames)
        if len(frames) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(simulate.PartialRun, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        simulate.run_cg_simulation(cfg, tmp_path / "sim", progress=False)
    with np.load(tmp_path / "sim" / ".partial" / "frames.npz") as z:
        saved = z["positions"].copy()
    monkeypatch.setattr(simulate.PartialRun, "save", save)
    arrays, meta = simulate.load_cg_frames(simulate.run_cg_simulation(cfg, tmp_path / "sim", progress=False))
    assert meta["status"] == "complete" and arrays["positions"].shape == (6, 64, 3)
    np.testing.assert_array_equal(arrays["positions"][:4], saved)
    np.testing.assert_allclose(arrays["time"], 0.01 * np.arange(1, 7), rtol=1e-9)
    assert not (tmp_path / "sim" / ".partial").exists()
