"""Temperature-aware models U(R, T) = E(R) - T S(R): training, export, the TorchForce global parameter.

The data are synthetic: beads on a jittered lattice whose "mapped" forces come from a pair potential
of mean force u(r, T) = e(r) - T s(r) with known Gaussian e and s, plus noise. A model that knows T can
fit every temperature; a single-temperature model can only fit their average.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from openmm_cgnn.errors import ConfigError
from openmm_cgnn.export import export_model, load_exported, potential_from_hippynn
from openmm_cgnn.system import cg_topology_from_dataset, create_system
from openmm_cgnn.testing import make_synthetic_dataset
from openmm_cgnn.thermal import energy_entropy_hippynn
from openmm_cgnn.training import TrainConfig, load_trained, predict_hippynn, train

# the pair PMF of the synthetic data: u(r, T) = e(r) - T s(r), Gaussians (kJ/mol, kJ/mol/K, nm)
E_HEIGHT, E_CENTRE, E_WIDTH = 6.0, 0.30, 0.07
S_HEIGHT, S_CENTRE, S_WIDTH = 0.01, 0.45, 0.06
PAIR_CUTOFF = 0.69  # nm; both Gaussians are below 1e-6 of their height there
TRAIN_TEMPERATURES = (250.0, 350.0)
N_FRAMES = 10


def _pair_forces(positions: np.ndarray, box: np.ndarray, temperature: float) -> np.ndarray:
    """Forces (N, 3) kJ/mol/nm of the pair PMF u(r, T) for one frame."""
    from vesin import NeighborList

    i, j, d = NeighborList(cutoff=PAIR_CUTOFF, full_list=False).compute(
        points=positions, box=box, periodic=True, quantities="ijD")
    r = np.linalg.norm(d, axis=1)
    de = -E_HEIGHT * np.exp(-0.5 * ((r - E_CENTRE) / E_WIDTH) ** 2) * (r - E_CENTRE) / E_WIDTH ** 2
    ds = -S_HEIGHT * np.exp(-0.5 * ((r - S_CENTRE) / S_WIDTH) ** 2) * (r - S_CENTRE) / S_WIDTH ** 2
    fmag = -(de - temperature * ds)         # -du/dr, positive = repulsive
    fvec = (fmag / r)[:, None] * d          # force on j along r_j - r_i
    forces = np.zeros_like(positions)
    np.add.at(forces, j, fvec)
    np.add.at(forces, i, -fvec)
    return forces


def _true_forces(ds, temperature: float) -> np.ndarray:
    return np.stack([_pair_forces(p, b, temperature) for p, b in zip(ds.positions, ds.boxes)])


def thermal_dataset(path, temperature: float, n_frames: int, seed: int, noise: float = 3.0):
    """A synthetic CG data set at ``temperature`` (K) labelled with the forces of u(r, T) plus noise."""
    ds = make_synthetic_dataset(None, n_frames=n_frames, temperature_K=temperature, seed=seed, noise=0.0)
    rng = np.random.default_rng(seed + 1000)
    ds.forces = _true_forces(ds, temperature) + rng.normal(scale=noise, size=ds.positions.shape)
    ds.save(path)
    return ds


def _config(temperature_aware: bool, epochs: int = 12, form: str = "split") -> TrainConfig:
    cfg = TrainConfig.from_preset("tiny")
    cfg.temperature_aware = temperature_aware
    cfg.temperature_form = form
    cfg.max_epochs = epochs
    cfg.termination_patience = epochs
    cfg.learning_rate = 1e-2
    cfg.fit_volume = False
    return cfg


@pytest.fixture(scope="module")
def dataset_paths(tmp_path_factory):
    work = tmp_path_factory.mktemp("thermal-data")
    paths = [work / f"cg-{t:g}K.npz" for t in TRAIN_TEMPERATURES]
    for k, (path, t) in enumerate(zip(paths, TRAIN_TEMPERATURES)):
        thermal_dataset(path, t, N_FRAMES, seed=k + 1)
    return paths


@pytest.fixture(scope="module")
def datasets(dataset_paths):
    from openmm_cgnn.dataset import CGDataset

    return [CGDataset.load(p) for p in dataset_paths]


@pytest.fixture(scope="module")
def thermal_model(dataset_paths, tmp_path_factory):
    return train(dataset_paths, _config(True), tmp_path_factory.mktemp("thermal") / "model", verbose=False)


@pytest.fixture(scope="module")
def plain_model(dataset_paths, tmp_path_factory):
    return train(dataset_paths, _config(False), tmp_path_factory.mktemp("plain") / "model", verbose=False)


@pytest.fixture(scope="module")
def input_model(dataset_paths, tmp_path_factory):
    """The other form, T as a network input: two epochs (only equivalence is tested with it)."""
    return train(dataset_paths, _config(True, epochs=2, form="input"), tmp_path_factory.mktemp("input") / "model",
                 verbose=False)


def _export_both(model_dir, out):
    return {dt: export_model(model_dir, out / f"thermal-{dt}.pt", dtype=dt) for dt in ("float32", "float64")}


@pytest.fixture(scope="module")
def exported(thermal_model, tmp_path_factory):
    return _export_both(thermal_model, tmp_path_factory.mktemp("thermal-export"))


@pytest.fixture(scope="module")
def exported_input(input_model, tmp_path_factory):
    return _export_both(input_model, tmp_path_factory.mktemp("input-export"))


def _module_energy_forces(module, positions, box, temperature):
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    energy = module(x, torch.tensor(box, dtype=torch.float64), torch.tensor(temperature, dtype=torch.float64))
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def test_training_records_temperatures(thermal_model):
    meta = json.loads((thermal_model / "metadata.json").read_text())
    assert meta["temperature_aware"]["training_temperatures_K"] == list(TRAIN_TEMPERATURES)
    loaded = load_trained(thermal_model)
    assert loaded.thermal.t_ref == 300.0 and loaded.thermal.t_scale == 50.0
    assert "temperature = true" not in (thermal_model / "config.toml").read_text()
    assert "temperature_aware = true" in (thermal_model / "config.toml").read_text()


@pytest.mark.parametrize("form", ["split", "input"])
def test_exported_equals_hippynn_at_two_temperatures(form, request, datasets):
    model_dir = request.getfixturevalue("thermal_model" if form == "split" else "input_model")
    exported = request.getfixturevalue("exported" if form == "split" else "exported_input")
    loaded = load_trained(model_dir)
    assert loaded.thermal.form == form
    ds = datasets[0]
    frames = [0, N_FRAMES - 1]
    for temperature in (280.0, 420.0):
        e_ref, f_ref = predict_hippynn(loaded, ds.positions[frames], ds.boxes[frames], ds.bead_types,
                                       temperature=temperature)
        for dtype, tol in (("float64", 1e-6), ("float32", 1e-4)):
            module, meta = load_exported(exported[dtype])
            assert meta["temperature_aware"]["training_temperatures_K"] == list(TRAIN_TEMPERATURES)
            for k, f in enumerate(frames):
                e, forces = _module_energy_forces(module, ds.positions[f], ds.boxes[f], temperature)
                assert abs(e - e_ref[k]) <= tol * max(abs(e_ref[k]), 1.0), (dtype, temperature, e, e_ref[k])
                assert np.max(np.abs(forces - f_ref[k])) <= tol * np.max(np.abs(f_ref[k])), (dtype, temperature)
    if form == "input":
        return
    # U is linear in T: E and S from the module equal those from hippynn's predictions
    module, _ = load_exported(exported["float64"])
    e_h, s_h = energy_entropy_hippynn(loaded, ds.positions[:1], ds.boxes[:1], ds.bead_types)
    e_m, s_m = module.energy_entropy(torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0]))
    assert float(e_m) == pytest.approx(e_h[0], rel=1e-6, abs=1e-6)
    assert float(s_m) == pytest.approx(s_h[0], rel=1e-6, abs=1e-9)
    assert abs(s_h[0]) > 0  # the entropy read-out was trained: the test above is not 0 == 0


@pytest.mark.parametrize("form", ["split", "input"])
def test_forces_are_minus_gradient_by_finite_differences(form, request, datasets):
    exported = request.getfixturevalue("exported" if form == "split" else "exported_input")
    module, _ = load_exported(exported["float64"])
    ds = datasets[1]
    pos, box, temperature = ds.positions[2], ds.boxes[2], 400.0
    _, forces = _module_energy_forces(module, pos, box, temperature)
    h = 1e-5
    rng = np.random.default_rng(0)
    for bead in rng.choice(len(pos), 4, replace=False):
        for axis in range(3):
            plus, minus = pos.copy(), pos.copy()
            plus[bead, axis] += h
            minus[bead, axis] -= h
            t = torch.tensor(temperature, dtype=torch.float64)
            with torch.no_grad():
                e_plus = float(module(torch.tensor(plus), torch.tensor(box), t))
                e_minus = float(module(torch.tensor(minus), torch.tensor(box), t))
            fd = -(e_plus - e_minus) / (2 * h)
            assert fd == pytest.approx(forces[bead, axis], rel=1e-5, abs=1e-5)
    # the forces are written out by hand (one interaction block); autograd through the network agrees
    assert module.analytic_gradient
    module.analytic_gradient = False
    e_auto, f_auto = _module_energy_forces(module, pos, box, temperature)
    module.analytic_gradient = True
    e_hand, f_hand = _module_energy_forces(module, pos, box, temperature)
    assert e_hand == pytest.approx(e_auto, rel=1e-12)
    assert np.max(np.abs(f_hand - f_auto)) <= 1e-10 * np.max(np.abs(f_auto))


def test_zero_entropy_reduces_to_plain_model(thermal_model, datasets):
    loaded = load_trained(thermal_model)
    with torch.no_grad():
        for p in loaded.entropy.parameters():
            p.zero_()
    ds = datasets[0]
    e_lo, f_lo = predict_hippynn(loaded, ds.positions[:2], ds.boxes[:2], ds.bead_types, temperature=200.0)
    e_hi, f_hi = predict_hippynn(loaded, ds.positions[:2], ds.boxes[:2], ds.bead_types, temperature=500.0)
    np.testing.assert_allclose(e_lo, e_hi, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(f_lo, f_hi, rtol=1e-12, atol=1e-9)
    from openmm_cgnn.thermal import thermal_potential_from_trained

    thermal = torch.jit.script(thermal_potential_from_trained(loaded, torch.float64))
    plain = torch.jit.script(potential_from_hippynn(loaded.network, loaded.energy, loaded.prior, torch.float64))
    pos, box = torch.tensor(ds.positions[1]), torch.tensor(ds.boxes[1])
    with torch.no_grad():
        u_plain = float(plain(pos, box))
        for temperature in (200.0, 500.0):
            u_t = float(thermal(pos, box, torch.tensor(temperature, dtype=torch.float64)))
            assert u_t == pytest.approx(u_plain, rel=1e-12, abs=1e-9)
    # and the plain model's energy is hippynn's prediction of the thermal one with S = 0
    assert u_plain == pytest.approx(
        predict_hippynn(loaded, ds.positions[1:2], ds.boxes[1:2], ds.bead_types, temperature=300.0)[0][0], rel=1e-6)


def test_context_parameter_changes_energy_by_minus_dT_S(exported, datasets):
    ds = datasets[0]
    topology = cg_topology_from_dataset(ds)
    system = create_system(topology, str(exported["float64"]), temperature=300.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ds.positions[0] * u.nanometer)
    module, _ = load_exported(exported["float64"])
    e_r, s_r = (float(x) for x in module.energy_entropy(torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0])))

    def energy() -> float:
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    assert context.getParameter("temperature") == 300.0  # the default is create_system's temperature
    u300 = energy()
    assert u300 == pytest.approx(e_r - 300.0 * s_r, rel=1e-9, abs=1e-7)
    context.setParameter("temperature", 410.0)
    u410 = energy()
    assert u410 - u300 == pytest.approx(-110.0 * s_r, rel=1e-7, abs=1e-7)
    assert abs(u410 - u300) > 1e-3  # S(R) is not zero: the parameter reaches the model


def test_far_temperature_logs_a_warning(exported, datasets, caplog):
    topology = cg_topology_from_dataset(datasets[0])
    with caplog.at_level(logging.WARNING, logger="openmm_cgnn.thermal"):
        create_system(topology, str(exported["float32"]), temperature=320.0)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="openmm_cgnn.thermal"):
        create_system(topology, str(exported["float32"]), temperature=900.0)
    assert any("far outside" in r.getMessage() for r in caplog.records)


def test_simulate_uses_the_run_temperature(exported, dataset_paths, tmp_path):
    from openmm_cgnn.simulate import CGSimulationConfig, load_cg_frames, run_cg_simulation

    cfg = CGSimulationConfig(model=str(exported["float64"]), start_dataset=str(dataset_paths[0]), temperature=380.0,
                             equilibration=0.0, production=0.02, frame_interval=0.01, timestep=0.002,
                             platform="CPU", seed=3)
    out = run_cg_simulation(cfg, tmp_path / "run", progress=False)
    arrays, _ = load_cg_frames(out)
    module, _ = load_exported(exported["float64"])
    pos, box = torch.tensor(arrays["positions"][-1]), torch.tensor(arrays["boxes"][-1])
    expected = float(module(pos, box, torch.tensor(380.0, dtype=torch.float64)))
    assert arrays["potential_energy"][-1] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_needs_two_temperatures(dataset_paths, tmp_path):
    with pytest.raises(ConfigError, match="two or more temperatures"):
        train([dataset_paths[0]], _config(True, epochs=1), tmp_path / "m", verbose=False)


def test_plain_model_has_no_temperature_input(plain_model, datasets):
    ds = datasets[0]
    with pytest.raises(ConfigError, match="not temperature-aware"):
        predict_hippynn(plain_model, ds.positions[:1], ds.boxes[:1], ds.bead_types, temperature=300.0)


def test_temperature_aware_fits_a_temperature_dependent_pmf_better(thermal_model, plain_model):
    """At a held-out temperature (450 K, beyond the 250 and 350 K training data) the T-aware model's
    forces are closer to the true PMF's than those of a model trained on the same data without T,
    which can only learn the average of the two training PMFs (the 300 K one)."""
    held_out = make_synthetic_dataset(None, n_frames=4, seed=99, noise=0.0)
    truth = _true_forces(held_out, 450.0)
    _, f_t = predict_hippynn(thermal_model, held_out.positions, held_out.boxes, held_out.bead_types,
                             temperature=450.0)
    _, f_p = predict_hippynn(plain_model, held_out.positions, held_out.boxes, held_out.bead_types)
    rmse_t = float(np.sqrt(np.mean((f_t - truth) ** 2)))
    rmse_p = float(np.sqrt(np.mean((f_p - truth) ** 2)))
    # the single-T model's error is at least the T-dependence it cannot represent
    floor = float(np.sqrt(np.mean((_true_forces(held_out, 300.0) - truth) ** 2)))
    assert rmse_p > 0.6 * floor
    assert rmse_t < 0.7 * rmse_p, (rmse_t, rmse_p, floor)


def test_cli_train_temperature_aware(dataset_paths, tmp_path, capsys):
    from openmm_cgnn.cli import main

    out = tmp_path / "cli-model"
    main(["train", "--data", *map(str, dataset_paths), "--temperature-aware", "--temperature-form", "input",
          "--epochs", "1", "--out", str(out)])
    assert json.loads((out / "metadata.json").read_text())["temperature_aware"]["t_ref_K"] == 300.0
    assert load_trained(out).thermal.form == "input"
    capsys.readouterr()
    assert main(["train", "--data", str(dataset_paths[0]), "--temperature-form", "input",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--temperature-form needs --temperature-aware" in capsys.readouterr().err


def test_volume_term_matches_the_pressure_at_each_training_temperature(thermal_model, datasets, tmp_path):
    """Pressure matching of a temperature-aware model at each data set's own temperature: with the
    fitted U_V(V, N, T) (offset a and trend c from two temperatures at one volume: an exact fit), the
    exported model's virial pressure on the mapped frames at each training temperature equals that data
    set's all-atom pressure, U_V follows the temperature parameter, and E(R) - T S(R) still gives U."""
    import shutil

    from openmm_cgnn.pressure import virial_pressure
    from openmm_cgnn.thermal import fit_thermal_volume_term
    from openmm_cgnn.volume import VolumeTermParams

    model = tmp_path / "model"
    shutil.copytree(thermal_model, model)
    targets = {250.0: 150.0, 350.0: 420.0}                # bar: a temperature trend the model must take up
    paths = []
    for k, ds in enumerate(datasets):
        ds.pressure = targets[ds.temperature] + np.random.default_rng(k).normal(scale=20.0, size=ds.n_frames)
        paths.append(ds.save(tmp_path / f"with-pressure-{k}.npz"))
        ds.pressure = None                                 # the module-scoped data sets stay as they were
    config = _config(True)
    config.volume_source = "mapped"
    params = fit_thermal_volume_term(model, paths, config)
    assert params.fit["terms"] == ["a", "c"] and params.c != 0.0
    assert VolumeTermParams.load(model / "volume.json").a == params.a
    with_volume = export_model(model, tmp_path / "with-volume.pt", dtype="float64")
    module, meta = load_exported(with_volume)
    assert meta["volume_term"]["c"] == params.c
    without, _ = load_exported(export_model(thermal_model, tmp_path / "without.pt", dtype="float64"))
    from openmm_cgnn.dataset import CGDataset

    for path in paths:
        ds = CGDataset.load(path)
        t = torch.tensor(ds.temperature, dtype=torch.float64)

        def energy(pos, box, m=module, t=t):
            with torch.no_grad():
                return float(m(torch.tensor(pos), torch.tensor(box), t))

        p_model = virial_pressure(energy, ds.positions, ds.boxes, ds.temperature)
        assert float(np.mean(p_model)) == pytest.approx(float(np.mean(ds.pressure)), abs=0.5)
        # U_V is taken at the temperature given to the model (not create_system's buffer) ...
        pos, box = torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0])
        volume = float(abs(np.linalg.det(ds.boxes[0])))
        for temp in (ds.temperature, 450.0):
            tt = torch.tensor(temp, dtype=torch.float64)
            with torch.no_grad():
                difference = float(module(pos, box, tt)) - float(without(pos, box, tt))
            assert difference == pytest.approx(params.energy(volume, ds.n_beads, temp), rel=1e-9, abs=1e-9)
        # ... and the split U = E(R) - T S(R) includes it
        e_r, s_r = (float(x) for x in module.energy_entropy(pos, box))
        with torch.no_grad():
            assert float(module(pos, box, t)) == pytest.approx(e_r - ds.temperature * s_r, rel=1e-9, abs=1e-7)


def test_volume_term_from_cg_nvt_runs_at_each_temperature(thermal_model, datasets, tmp_path):
    """The "cg-nvt" pressure matching of a temperature-aware model: a short CG NVT run at each data set's
    volume and temperature (the model's TorchForce parameter). U_V puts no force on beads, so the same run
    (same seed) with the fitted term added samples the same frames, and its mean pressure must then be the
    all-atom one at both temperatures (two points, a and c: an exact fit)."""
    import shutil

    from openmm_cgnn.thermal import fit_thermal_volume_term, thermal_potential_from_trained
    from openmm_cgnn.volume import VolumeTerm, cg_nvt_pressures

    model = tmp_path / "model"
    shutil.copytree(thermal_model, model)
    targets = {250.0: -200.0, 350.0: 300.0}
    paths = []
    for k, ds in enumerate(datasets):
        ds.pressure = np.full(ds.n_frames, targets[ds.temperature])
        paths.append(ds.save(tmp_path / f"with-pressure-{k}.npz"))
        ds.pressure = None
    config = _config(True)
    config.volume_source, config.volume_nvt_ps, config.volume_nvt_equilibration_ps = "cg-nvt", 0.2, 0.05
    config.seed = 7           # the runs' seeds are seed + k + 1 (OpenMM takes a seed of 0 as "pick one at random")
    params = fit_thermal_volume_term(model, paths, config)
    points = params.fit["points"]
    assert [p["temperature"] for p in points] == [250.0, 350.0] and params.fit["terms"] == ["a", "c"]
    loaded = load_trained(model)
    pot = thermal_potential_from_trained(loaded, torch.float32)
    pot.volume_term = VolumeTerm(params, torch.float32)
    module = torch.jit.script(pot)
    for k, ds in enumerate(datasets):
        rerun = cg_nvt_pressures(module, ds, ds.temperature, 0.2, 0.05, seed=config.seed + k + 1,
                                 temperature_aware=loaded.thermal.to_dict())
        assert float(np.mean(rerun)) == pytest.approx(targets[ds.temperature], abs=1.0)
        assert float(np.mean(rerun)) != pytest.approx(points[k]["p_cg"], abs=50.0)   # the term changed it


def test_cli_train_temperature_aware_fits_the_volume_term(datasets, tmp_path):
    """`train --temperature-aware` on data with all-atom pressures writes the volume term pressure-matched at
    each data set's own temperature: the exported model's virial pressure equals the all-atom one at both
    training temperatures, and a refit with fit_thermal_volume_term gives the same coefficients."""
    from openmm_cgnn.cli import main
    from openmm_cgnn.pressure import virial_pressure
    from openmm_cgnn.thermal import fit_thermal_volume_term
    from openmm_cgnn.volume import VolumeTermParams

    targets = {250.0: -100.0, 350.0: 250.0}                # bar
    paths = []
    for k, ds in enumerate(datasets):
        ds.pressure = np.full(ds.n_frames, targets[ds.temperature])
        paths.append(ds.save(tmp_path / f"with-pressure-{k}.npz"))
        ds.pressure = None
    out = tmp_path / "model"
    assert main(["train", "--data", *map(str, paths), "--temperature-aware", "--preset", "tiny", "--epochs", "1",
                 "--volume-from", "mapped", "--out", str(out)]) == 0
    fitted = VolumeTermParams.load(out / "volume.json")
    assert fitted.fit["terms"] == ["a", "c"] and "each data set's temperature" in fitted.fit["cg_pressure_from"]
    refit = fit_thermal_volume_term(out, paths)
    assert (refit.a, refit.c) == pytest.approx((fitted.a, fitted.c), rel=1e-9)
    module, meta = load_exported(export_model(out, tmp_path / "model.pt", dtype="float64"))
    assert meta["volume_term"]["c"] == pytest.approx(fitted.c, rel=1e-12)
    for ds in datasets:
        t = torch.tensor(ds.temperature, dtype=torch.float64)

        def energy(pos, box, t=t):
            with torch.no_grad():
                return float(module(torch.tensor(pos), torch.tensor(box), t))

        pressure = float(np.mean(virial_pressure(energy, ds.positions, ds.boxes, ds.temperature)))
        assert pressure == pytest.approx(targets[ds.temperature], abs=0.5)
