"""Pressure estimators against known answers, and the volume term U_V: its derivative, no bead forces,
its fit by pressure matching, and NPT runs that reach the target density once it is fitted."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from openmm_cgnn.pressure import BAR_PER_KJ_MOL_NM3, attach_pressure_probe, current_pressure, virial_pressure
from openmm_cgnn.units import BOLTZMANN_KJ_PER_MOL_K
from openmm_cgnn.volume import (PressurePoint, VolumeOnlyPotential, VolumeTerm, VolumeTermParams, fit_volume_term,
                                volume_torch_force)

KT300 = BOLTZMANN_KJ_PER_MOL_K * 300.0


def _pair_system(n: int, box: float, expression: str, cutoff: float, mass: float = 32.0) -> openmm.System:
    """n particles in a cubic box (nm) with one CustomNonbondedForce pair energy (kJ/mol, r in nm)."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(mass)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.eye(3) * box])
    force = openmm.CustomNonbondedForce(expression)
    for _ in range(n):
        force.addParticle([])
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(cutoff)
    force.setUseLongRangeCorrection(False)
    system.addForce(force)
    return system


def _context(system: openmm.System, integrator=None) -> openmm.Context:
    integrator = integrator or openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))


def _lattice(n_side: int, box: float, rng: np.random.Generator, jitter: float = 0.03) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return ((grid + 0.5) * box / n_side + rng.normal(scale=jitter, size=grid.shape)) % box


# -- the estimators --------------------------------------------------------------------------------
def test_ideal_gas_pressure_is_the_kinetic_term():
    """No interactions: OpenMM's estimator gives 2 K / (3 V) of the current velocities, and the frame
    estimator N k_B T / V, both exactly."""
    n, box = 100, 3.0
    system = _pair_system(n, box, "0", 1.0)
    probe = attach_pressure_probe(system, 300.0)
    assert probe.getFrequency() == 0                       # a probe, not a barostat that moves the box
    assert attach_pressure_probe(system, 300.0) is not None and system.getNumForces() == 2  # not added twice
    ctx = _context(system)
    rng = np.random.default_rng(1)
    ctx.setPositions(rng.uniform(0, box, (n, 3)))
    ctx.setVelocitiesToTemperature(300.0, 5)
    kinetic = ctx.getState(getEnergy=True).getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
    expected = 2 * kinetic / (3 * box ** 3) * BAR_PER_KJ_MOL_NM3
    assert current_pressure(ctx, probe) == pytest.approx(expected, rel=1e-6)
    p = virial_pressure(lambda pos, b: 0.0, rng.uniform(0, box, (2, n, 3)), np.eye(3) * box, 300.0)
    assert p == pytest.approx(n * KT300 / box ** 3 * BAR_PER_KJ_MOL_NM3, rel=1e-12)
    assert BAR_PER_KJ_MOL_NM3 == pytest.approx(16.6054, rel=1e-5)


def _lj_virial_pressure(pos: np.ndarray, box: float, kinetic_term: float, sigma: float, eps: float,
                        cutoff: float) -> float:
    """(kinetic_term + sum_pairs r f(r) / 3) / V in bar, pairs by brute-force minimum image."""
    d = pos[:, None, :] - pos[None, :, :]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=-1)[np.triu_indices(len(pos), 1)]
    r = r[r < cutoff]
    sr6 = (sigma / r) ** 6
    r_f = 24 * eps * (2 * sr6 ** 2 - sr6)          # r * (-dU/dr)
    return (kinetic_term + r_f.sum() / 3.0) / box ** 3 * BAR_PER_KJ_MOL_NM3


def test_lennard_jones_pressure_equals_the_independent_virial():
    """A dense shifted-LJ fluid: both finite-difference estimators equal the pair virial computed here."""
    sigma, eps, cutoff, box, n_side = 0.34, 1.0, 0.9, 2.2, 5
    expr = f"4*{eps}*((({sigma}/r)^12 - ({sigma}/r)^6) - (({sigma}/{cutoff})^12 - ({sigma}/{cutoff})^6))"
    system = _pair_system(n_side ** 3, box, expr, cutoff)
    probe = attach_pressure_probe(system, 300.0)
    ctx = _context(system)
    pos = _lattice(n_side, box, np.random.default_rng(2))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(300.0, 3)
    kinetic = ctx.getState(getEnergy=True).getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
    expected = _lj_virial_pressure(pos, box, 2 * kinetic / 3, sigma, eps, cutoff)
    assert abs(expected) > 100                              # the virial matters here
    assert current_pressure(ctx, probe) == pytest.approx(expected, rel=2e-3)

    def energy(p: np.ndarray, b: np.ndarray) -> float:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b])
        ctx.setPositions(p)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    frame = virial_pressure(energy, pos[None], np.eye(3) * box, 300.0)[0]
    assert frame == pytest.approx(_lj_virial_pressure(pos, box, n_side ** 3 * KT300, sigma, eps, cutoff), rel=1e-4)


# -- the volume term ---------------------------------------------------------------------------------
PARAMS = VolumeTermParams(a=30.0, b=-4000.0, c=0.05, v0=0.065, t0=300.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_volume_term_derivative_equals_finite_difference_of_box_scaling(dtype):
    module = torch.jit.script(VolumeTerm(PARAMS, dtype))
    module.set_temperature(320.0)
    n = 125
    box = np.array([[2.0, 0.0, 0.0], [0.3, 2.1, 0.0], [-0.2, 0.4, 1.95]])
    volume = abs(np.linalg.det(box))
    energy = float(module(torch.tensor(box), n))
    assert energy == pytest.approx(PARAMS.energy(volume, n, 320.0), rel=1e-5 if dtype == torch.float32 else 1e-12)
    h = 1e-3 if dtype == torch.float32 else 1e-5
    up, down = (1 + h) ** (1 / 3), (1 - h) ** (1 / 3)
    fd = (float(module(torch.tensor(box * up), n)) - float(module(torch.tensor(box * down), n))) / (2 * h * volume)
    assert fd == pytest.approx(PARAMS.du_dv(volume / n, 320.0), rel=1e-3 if dtype == torch.float32 else 1e-7)
    # extensive: twice the beads in twice the volume, twice the energy
    assert float(module(torch.tensor(box * 2 ** (1 / 3)), 2 * n)) == pytest.approx(2 * energy, rel=1e-5)


def test_volume_term_puts_no_force_on_beads_and_changes_the_energy_openmm_sees():
    n, box = 27, 2.0
    system = _pair_system(n, box, "0", 0.9)
    system.addForce(volume_torch_force(PARAMS, temperature=300.0))
    ctx = _context(system)
    ctx.setPositions(_lattice(3, box, np.random.default_rng(4)))
    state = ctx.getState(getEnergy=True, getForces=True)
    assert np.all(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) == 0.0)
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(
        PARAMS.energy(box ** 3, n), rel=1e-9)


def test_exported_model_carries_the_volume_term(tiny_model_dir, tiny_model_pt, methanol_dataset):
    """The exported module = network + prior + U_V: same bead forces as without it, energy shifted by
    exactly U_V, and its volume derivative adds dU_V/dV."""
    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.export import load_exported, potential_from_model_dir

    module, meta = load_exported(tiny_model_pt)
    volume = VolumeTermParams.load(tiny_model_dir / "volume.json")
    assert meta["volume_term"]["a"] == volume.a and volume.a != 0.0
    plain, _ = potential_from_model_dir(tiny_model_dir, "float64")    # volume term left at zero
    ds = CGDataset.load(methanol_dataset)
    pos, box = ds.positions[3], ds.boxes[3]

    def energy_forces(m, p, b):
        x = torch.tensor(p, requires_grad=True)
        e = m(x, torch.tensor(b))
        (g,) = torch.autograd.grad(e, x)
        return float(e.detach()), -g.numpy()

    e_with, f_with = energy_forces(module, pos, box)
    e_plain, f_plain = energy_forces(plain, pos, box)
    np.testing.assert_allclose(f_with, f_plain, rtol=1e-12, atol=1e-10)
    v = abs(np.linalg.det(box))
    assert e_with - e_plain == pytest.approx(volume.energy(v, ds.n_beads), rel=1e-9, abs=1e-9)
    shift = virial_pressure(lambda p, b: energy_forces(plain, p, b)[0], pos[None], box, 300.0) - \
        virial_pressure(lambda p, b: energy_forces(module, p, b)[0], pos[None], box, 300.0)
    assert shift[0] == pytest.approx(volume.a * BAR_PER_KJ_MOL_NM3, rel=1e-4)


# -- fitting --------------------------------------------------------------------------------------
def _points(params: VolumeTermParams, states: list[tuple[float, float]]) -> list[PressurePoint]:
    return [PressurePoint(t, v, p_ref=100.0, p_ref_se=10.0, p_cg=100.0 + params.du_dv(v, t) * BAR_PER_KJ_MOL_NM3,
                          p_cg_se=5.0) for t, v in states]


def test_fit_uses_only_what_the_data_determine():
    truth = VolumeTermParams(a=50.0, b=-3000.0, c=0.08, v0=0.066, t0=300.0)
    one = fit_volume_term(_points(truth, [(300.0, 0.066)]))
    assert one.fit["terms"] == ["a"] and one.a == pytest.approx(50.0) and one.b == one.c == 0.0
    two_t = fit_volume_term(_points(VolumeTermParams(a=50.0, c=0.08, v0=0.066), [(300.0, 0.066), (350.0, 0.066)]))
    assert two_t.fit["terms"] == ["a", "c"] and two_t.c == pytest.approx(0.08)
    states = [(300.0, 0.066), (350.0, 0.066), (300.0, 0.070), (250.0, 0.063)]
    full = fit_volume_term(_points(truth, states))
    assert full.fit["terms"] == ["a", "c", "b"]
    for t, v in states:
        assert full.du_dv(v, t) == pytest.approx(truth.du_dv(v, t), rel=1e-8)


# -- NPT after fitting: a fluid whose target equation of state is known --------------------------
def _npt_density(system: openmm.System, positions: np.ndarray, pressure: float, steps: int, seed: int) -> np.ndarray:
    """Number densities (1/nm^3) sampled every 50 steps of a Langevin NPT run at 300 K after 2000 steps."""
    barostat = openmm.MonteCarloBarostat(pressure, 300.0, 10)
    barostat.setRandomNumberSeed(seed)
    system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.004)
    integrator.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions)
    ctx.setVelocitiesToTemperature(300.0, seed)
    integrator.step(2000)
    out = []
    for _ in range(steps // 50):
        integrator.step(50)
        b = ctx.getState().getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        out.append(system.getNumParticles() / abs(np.linalg.det(b)))
    return np.array(out)


def test_npt_reaches_the_target_density_after_pressure_matching():
    """A soft-sphere fluid stands in for a CG model whose pressure is wrong; the target is an equation
    of state known exactly, P(n) = n k_B T (an ideal gas) at n0 = 20 / nm^3 (828 bar). Pressure
    matching on NVT frames at n0 fits U_V; then NPT at the target pressure returns to n0 within its
    error bar, while the uncorrected model, at the same pressure, is far from it."""
    from openmm_cgnn.analysis import block_average

    n_side, n0 = 5, 20.0
    n = n_side ** 3
    box = (n / n0) ** (1 / 3)
    expr = "1.0*((0.3/r)^12 - (0.3/0.75)^12)"
    p_target = n0 * KT300 * BAR_PER_KJ_MOL_NM3
    rng = np.random.default_rng(11)
    # NVT frames of the "CG model" at n0
    system = _pair_system(n, box, expr, 0.75)
    integrator = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.004)
    integrator.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(_lattice(n_side, box, rng))
    ctx.setVelocitiesToTemperature(300.0, 1)
    integrator.step(1000)
    frames = []
    for _ in range(40):
        integrator.step(50)
        frames.append(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer))
    energy_ctx = _context(_pair_system(n, box, expr, 0.75))

    def energy(p: np.ndarray, b: np.ndarray) -> float:
        energy_ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b])
        energy_ctx.setPositions(p)
        return energy_ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    p_cg = virial_pressure(energy, np.array(frames), np.eye(3) * box, 300.0)
    m, se = block_average(p_cg, 4)
    assert m - p_target > 20 * se                       # the model's own pressure is far too high
    params = fit_volume_term([PressurePoint(300.0, box ** 3 / n, p_target, 0.0, m, se)])
    assert params.fit["terms"] == ["a"]

    start = frames[-1]
    corrected = _pair_system(n, box, expr, 0.75)
    corrected.addForce(volume_torch_force(params))
    rho = _npt_density(corrected, start, p_target, 10000, seed=3)
    mean, err = block_average(rho, 5)
    assert abs(mean - n0) < 3 * err, (mean, err)
    assert err < 0.02 * n0
    plain = _npt_density(_pair_system(n, box, expr, 0.75), start, p_target, 2000, seed=3)
    assert np.mean(plain[-10:]) < 0.85 * n0           # without U_V the fluid expands far below n0


def test_volume_term_fitted_from_a_cg_nvt_run_matches_the_all_atom_pressure(tiny_model_dir, methanol_dataset,
                                                                            tmp_path):
    """Pressure matching on a short CG NVT run ("cg-nvt"), then an independent CG NVT run of the exported
    model (another seed, through openmm-cgnn simulate) has the all-atom pressure within the error bars."""
    import shutil

    from openmm_cgnn.dataset import CGDataset
    from openmm_cgnn.export import export_model
    from openmm_cgnn.pressure import mean_and_standard_error
    from openmm_cgnn.simulate import CGSimulationConfig, load_cg_frames, run_cg_simulation
    from openmm_cgnn.training import TrainConfig, fit_model_volume_term

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = TrainConfig.from_toml(model_dir / "config.toml")
    config.volume_source, config.volume_nvt_ps, config.volume_nvt_equilibration_ps = "cg-nvt", 2.0, 0.4
    volume = fit_model_volume_term(model_dir, [methanol_dataset], config, verbose=False)
    assert volume.fit["terms"] == ["a"] and volume.fit["cg_pressure_from"].startswith("CG NVT")
    point = volume.fit["points"][0]
    ds = CGDataset.load(methanol_dataset)
    assert point["p_ref"] == pytest.approx(np.mean(ds.pressure[len(ds.pressure) % 5:]), rel=1e-9)
    model_pt = export_model(model_dir, tmp_path / "model.pt")
    run = CGSimulationConfig(model=str(model_pt), start_dataset=str(methanol_dataset), temperature=300.0,
                             equilibration=0.4, production=2.0, frame_interval=0.02, seed=99, platform="CPU")
    run_cg_simulation(run, tmp_path / "run", progress=False)
    frames, _ = load_cg_frames(tmp_path / "run")
    m, se = mean_and_standard_error(frames["pressure"], 5)
    assert abs(m - point["p_ref"]) < 3 * np.hypot(se, np.hypot(point["p_ref_se"], point["p_cg_se"])), (m, se, point)
    # without the term the same model is off by the fitted offset, which is far larger than the errors
    # (4 sigma: with 5, the 2 ps run fell just short in about one run of several)
    assert abs(volume.a * BAR_PER_KJ_MOL_NM3) > 4 * np.hypot(se, point["p_ref_se"])


def test_pair_baseline_gets_the_same_volume_term(tmp_path):
    """The pair model is pressure-matched too; its JSON carries the term and its System adds it as a
    box-only force: same bead forces, energy shifted by U_V, pressure shifted by -dU_V/dV."""
    from openmm_cgnn.baselines import PairForceField, fit_pair_force_matching
    from openmm_cgnn.mapping import build_cg_topology

    from openmm_cgnn.testing import make_synthetic_dataset

    ds = make_synthetic_dataset(n_frames=6, seed=5)
    ds.pressure = np.full(ds.n_frames, 50.0)                 # pretend all-atom pressures, bar
    ff = fit_pair_force_matching([ds], cutoff=0.7, bin_width=0.02)
    assert ff.volume is not None and ff.volume.fit["terms"] == ["a"]
    assert ff.volume.fit["points"][0]["p_ref"] == pytest.approx(50.0)
    loaded = PairForceField.load(ff.save(tmp_path / "pair.json"))
    assert loaded.volume.a == ff.volume.a
    assert fit_pair_force_matching([ds], cutoff=0.7, bin_width=0.02, fit_volume=False).volume is None
    top = build_cg_topology([ds.type_names[t] for t in ds.bead_types], ds.bead_residues,
                            box_vectors=[openmm.Vec3(*row) for row in ds.boxes[0]] * u.nanometer)
    results = []
    for model in (loaded, fit_pair_force_matching([ds], cutoff=0.7, bin_width=0.02, fit_volume=False)):
        system = model.create_system(top, bead_masses=ds.bead_masses)
        probe = attach_pressure_probe(system, 300.0)
        # a LangevinMiddle integrator: its kinetic energy needs no forces, so computeCurrentPressure only
        # asks the TorchForce for energies (see openmm_cgnn.pressure)
        ctx = _context(system, openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.001))
        ctx.setPositions(ds.positions[0])
        ctx.setVelocitiesToTemperature(300.0, 1)
        state = ctx.getState(getEnergy=True, getForces=True)
        results.append((state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                        state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer),
                        current_pressure(ctx, probe)))
    (e1, f1, p1), (e0, f0, p0) = results
    assert np.allclose(f1, f0, rtol=0, atol=1e-9)
    assert e1 - e0 == pytest.approx(loaded.volume.energy(abs(np.linalg.det(ds.boxes[0])), ds.n_beads), abs=1e-6)
    assert p0 - p1 == pytest.approx(loaded.volume.a * BAR_PER_KJ_MOL_NM3, rel=1e-3)
