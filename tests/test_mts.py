"""Multiple time stepping and the CUDA graph option: the force split sums to the model, the MTS
integrators conserve energy, and the options reach the System, the run and its record."""

import json

import numpy as np
import openmm
import openmm.unit as u
import pytest

from openmm_cgnn import mts
from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.errors import CGNNError
from openmm_cgnn.prior import PriorParams, prior_energy_forces
from openmm_cgnn.simulate import CGSimulationConfig, load_cg_frames, run_cg_simulation
from openmm_cgnn.system import CGModel, cg_topology_from_dataset, create_system, make_torch_force, resolve_cuda_graphs

KJ = u.kilojoule_per_mole
KJ_NM = u.kilojoule_per_mole / u.nanometer


@pytest.fixture(scope="module")
def frame(methanol_dataset):
    ds = CGDataset.load(methanol_dataset)
    return ds, cg_topology_from_dataset(ds, 5), ds.positions[5]


@pytest.fixture(scope="module")
def pair_json(methanol_dataset, tmp_path_factory):
    from openmm_cgnn.baselines import fit_pair_force_matching

    ff = fit_pair_force_matching([CGDataset.load(methanol_dataset)], cutoff=0.8, bin_width=0.02)
    return ff.save(tmp_path_factory.mktemp("pair") / "pair.json")


def _context(system, positions, integrator=None):
    ctx = openmm.Context(system, integrator or openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions * u.nanometer)
    return ctx


def _energy_forces(ctx, groups=None):
    kw = {} if groups is None else {"groups": groups}
    s = ctx.getState(getEnergy=True, getForces=True, **kw)
    return s.getPotentialEnergy().value_in_unit(KJ), s.getForces(asNumpy=True).value_in_unit(KJ_NM)


@pytest.mark.parametrize("fast", ["prior", "pair"])
def test_fast_and_slow_groups_sum_to_the_model(frame, tiny_model_pt, pair_json, fast):
    from openmm_cgnn.export import load_exported

    ds, top, pos = frame
    _, meta = load_exported(tiny_model_pt)
    # one pair pushed inside the prior's taper, so that the fast force is large where it matters
    pos = pos.copy()
    pos[1] = pos[0] + np.array([meta["prior"]["taper"] - 0.01, 0.0, 0.0])
    spec = "prior" if fast == "prior" else str(pair_json)
    e_model, f_model = _energy_forces(_context(create_system(top, tiny_model_pt), pos))
    ctx = _context(create_system(top, tiny_model_pt, mts_fast=spec), pos)
    e_all, f_all = _energy_forces(ctx)
    e_fast, f_fast = _energy_forces(ctx, {mts.FAST_GROUP})
    e_slow, f_slow = _energy_forces(ctx, {mts.SLOW_GROUP})
    assert np.abs(f_fast).max() > 1.0  # the split is not empty: the fast group carries real force
    # the fast copy is cancelled in the slow group to OpenMM's CPU precision for custom forces (single)
    scale = np.abs(f_fast).max()
    np.testing.assert_allclose(f_all, f_model, rtol=0, atol=1e-5 * scale + 1e-9)
    np.testing.assert_allclose(f_fast + f_slow, f_model, rtol=0, atol=1e-5 * scale + 1e-9)
    assert e_all == pytest.approx(e_model, rel=1e-6, abs=1e-4)
    assert e_fast + e_slow == pytest.approx(e_model, rel=1e-6, abs=1e-4)
    if fast == "prior":
        # the fast group is the model's prior, computed independently in numpy (float64); OpenMM's CPU
        # platform evaluates custom nonbonded forces in single precision, and exp(-a r) with a ~ 200/nm
        # amplifies the rounding of r to a few 1e-6 relative
        e_ref, f_ref = prior_energy_forces(PriorParams(**meta["prior"]), pos, ds.boxes[5])
        assert e_fast == pytest.approx(e_ref, rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(f_fast, f_ref, rtol=1e-4, atol=1e-4 * np.abs(f_ref).max())
    else:
        from openmm_cgnn.baselines import PairForceField

        e_ref, f_ref = PairForceField.load(pair_json).energy_forces(pos, ds.boxes[5])
        assert e_fast == pytest.approx(e_ref, rel=1e-4, abs=1e-3)
        np.testing.assert_allclose(f_fast, f_ref, rtol=1e-3, atol=1e-2 * np.abs(f_ref).max())


def test_mts_nve_conserves_energy(frame, tiny_model_pt):
    """MTSIntegrator (velocity-Verlet RESPA): inner step 1 fs (prior), outer step 4 fs (network), 240 fs."""
    ds, top, pos = frame
    inner, k = 0.001, 4
    integ = mts.verlet_integrator(inner, k)
    assert integ.getStepSize().value_in_unit(u.picosecond) == pytest.approx(inner * k)
    ctx = _context(create_system(top, tiny_model_pt, mts_fast="prior"), pos, integ)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 3)
    totals = []
    for _ in range(20):
        integ.step(3)  # 3 outer steps = 12 inner steps = 12 fs between samples
        s = ctx.getState(getEnergy=True)
        totals.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(KJ))
    kinetic = 1.5 * len(pos) * 0.0083145 * 300
    # the single-time-step test's bound: fluctuation and drift under 1 % of the kinetic energy (~2.4 kJ/mol)
    assert np.ptp(totals) < 0.01 * kinetic, (np.ptp(totals), totals)


def test_mts_langevin_runs_through_simulate(methanol_dataset, tiny_model_pt, tmp_path):
    cfg = CGSimulationConfig(model=str(tiny_model_pt), start_dataset=str(methanol_dataset), equilibration=0.06,
                             production=0.36, frame_interval=0.06, platform="CPU", mts=3)
    assert cfg.outer_timestep == pytest.approx(0.006) and cfg.steps_per_frame == 10
    out = run_cg_simulation(cfg, tmp_path / "mts", progress=False)
    arrays, meta = load_cg_frames(out)
    assert meta["status"] == "complete" and arrays["positions"].shape == (6, 64, 3)
    np.testing.assert_allclose(arrays["time"], 0.06 * np.arange(1, 7))
    assert np.all((arrays["temperature"] > 100) & (arrays["temperature"] < 600))
    info = json.loads((out / "simulation.json").read_text())
    assert info["integrator"]["mts"] == 3 and info["integrator"]["outer_timestep_ps"] == pytest.approx(0.006)
    assert info["integrator"]["fast"] == "prior" and info["integrator"]["kind"].startswith("MTSLangevin")
    assert info["cuda_graphs"] == {"requested": None, "used": False}  # the default on the CPU platform


def test_mts_settings_are_checked(methanol_dataset, tiny_model_pt, pair_json, tmp_path, frame):
    ds, top, pos = frame
    base = dict(model=str(tiny_model_pt), start_dataset=str(methanol_dataset), platform="CPU", production=0.12,
                frame_interval=0.06)
    with pytest.raises(mts.MTSConfigError, match="whole number of inner steps"):
        run_cg_simulation(CGSimulationConfig(**base, mts=0), tmp_path / "a", progress=False)
    with pytest.raises(mts.MTSConfigError, match="--frame-interval 0.102"):
        run_cg_simulation(CGSimulationConfig(**{**base, "frame_interval": 0.1}, mts=3), tmp_path / "b", progress=False)
    with pytest.raises(mts.MTSConfigError, match="does not exist"):
        create_system(top, tiny_model_pt, mts_fast=str(tmp_path / "missing.json"))
    with pytest.raises(mts.MTSConfigError, match="pair force field is cheap"):
        CGModel(pair_json).create_system(top, masses=ds.bead_masses, mts_fast="prior")
    assert issubclass(mts.MTSConfigError, CGNNError)


def test_cuda_graph_default_is_chosen_in_one_place_and_harmless_on_cpu(frame, tiny_model_pt):
    assert resolve_cuda_graphs(None, "CUDA") is True
    assert resolve_cuda_graphs(None, "CPU") is False and resolve_cuda_graphs(None, "Reference") is False
    assert resolve_cuda_graphs(True, "CPU") is True and resolve_cuda_graphs(False, "CUDA") is False
    ds, top, pos = frame
    from openmm_cgnn.export import load_exported

    module, meta = load_exported(tiny_model_pt)
    props = dict(make_torch_force(module, meta, top, use_cuda_graphs=True, cuda_graph_warmup_steps=4).getProperties())
    assert props == {"useCUDAGraphs": "true", "CUDAGraphWarmupSteps": "4"}
    assert dict(make_torch_force(module, meta, top, use_cuda_graphs=False).getProperties())["useCUDAGraphs"] == "false"
    # create_system's default (no platform known yet) asks for graphs; the CPU platform ignores the request
    e_on, f_on = _energy_forces(_context(create_system(top, tiny_model_pt), pos))
    e_off, f_off = _energy_forces(_context(create_system(top, tiny_model_pt, use_cuda_graphs=False), pos))
    assert e_on == e_off and np.array_equal(f_on, f_off)


def test_command_line_options_reach_the_configs():
    from openmm_cgnn.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["simulate", "--model", "m.pt", "--out", "o", "--no-cuda-graphs", "--mts", "3",
                              "--mts-fast", "pair.json", "--cuda-graph-warmup", "5"])
    assert (args.cuda_graphs, args.mts, args.mts_fast, args.cuda_graph_warmup) == (False, 3, "pair.json", 5)
    args = parser.parse_args(["simulate", "--model", "m.pt", "--out", "o"])
    assert (args.cuda_graphs, args.mts, args.mts_fast) == (None, 1, "prior")
    args = parser.parse_args(["compare", "--model", "m.pt", "--state-points", "300K:1bar", "--out", "o",
                              "--cuda-graphs", "--mts", "2"])
    assert (args.cuda_graphs, args.mts, args.mts_fast) == (True, 2, None)

    from openmm_cgnn.harness import HarnessConfig

    assert HarnessConfig.from_preset("tiny").cg_cuda_graphs is None and HarnessConfig.from_preset("tiny").cg_mts == 1
    with pytest.raises(ValueError, match="whole number of MTS outer steps"):
        HarnessConfig.from_preset("tiny", cg_mts=3)  # 25 fs frames are not a multiple of 6 fs
    assert HarnessConfig.from_preset("tiny", cg_mts=2, cg_frame_interval=0.02).cg_mts == 2
