"""Training with explicit forces (openmm_cgnn.explicit_forces): the same loss and parameter gradients as
hippynn's autograd forces, training that learns, and a trained model that exports unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openmm_cgnn.errors import ConfigError
from openmm_cgnn.explicit_forces import ExplicitForces
from openmm_cgnn.pair_cache import find_frame_pairs, precompute_slot_arrays
from openmm_cgnn.testing import make_synthetic_dataset
from openmm_cgnn.training import TrainConfig, TrainingStep, load_trained, predict_hippynn, train


def _steps(ds, **overrides):
    """Two training steps with the same initial weights, forces by autograd and explicit (float64)."""
    steps = {}
    for mode in ("autograd", "explicit"):
        config = TrainConfig.from_preset("tiny")
        for k, v in overrides.items():
            setattr(config, k, v)
        config.force_mode = mode
        torch.manual_seed(0)
        steps[mode] = TrainingStep(config, ds, device="cpu", dtype=torch.float64)
    return steps


CASES = {
    "l=2": {}, "l=1": {"tensor_order": 1}, "l=0": {"tensor_order": 0}, "plain": {"resnet": False},
    "pair-finder": {"cache_pairs": False}, "gaussian": {"sensitivity_type": "linear"},
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_explicit_loss_and_gradients_equal_autograd(overrides):
    """One batch of two frames: the loss and every parameter gradient of the explicit forces equal those
    of hippynn's autograd forces (float64), for every tensor order, plain layers and either pair source."""
    ds = make_synthetic_dataset(None, n_frames=2, n_side=5, box_nm=2.0, seed=3)
    steps = _steps(ds, **overrides)
    assert isinstance(steps["explicit"].graph.force.torch_module, ExplicitForces)
    loss_a, grads_a = steps["autograd"].gradients()
    loss_e, grads_e = steps["explicit"].gradients()
    assert loss_e == pytest.approx(loss_a, rel=1e-10)
    assert grads_a.keys() == grads_e.keys() and len(grads_a) >= 8
    for name in grads_a:
        torch.testing.assert_close(grads_e[name], grads_a[name], rtol=1e-8, atol=1e-12 * grads_a[name].abs().max(),
                                   msg=name)
    # every parameter of the explicit forces is one of hippynn's (none of its own)
    graph = steps["explicit"].graph
    hippynn_params = {id(p) for node in (graph.network, graph.henergy) for p in node.torch_module.parameters()}
    assert all(id(p) in hippynn_params for p in graph.force.torch_module.parameters())


@pytest.mark.parametrize("row_block", [1 << 22, 2000], ids=["one-block", "row-blocks"])
def test_explicit_gradients_with_two_bead_types_and_padded_frames(row_block, monkeypatch):
    """Two bead types and two data sets of different sizes in one batch (padding beads in the second);
    the table in one block of rows and in many."""
    import openmm_cgnn.explicit_forces as explicit

    monkeypatch.setattr(explicit, "ROW_BLOCK_ELEMENTS", row_block)
    big = make_synthetic_dataset(None, n_frames=1, n_side=5, box_nm=2.0, seed=5, type_names=("A", "B"))
    small = make_synthetic_dataset(None, n_frames=1, n_side=4, box_nm=1.6, seed=6, type_names=("A", "B"))
    steps = _steps([big, small])
    loss_a, grads_a = steps["autograd"].gradients()
    loss_e, grads_e = steps["explicit"].gradients()
    assert loss_e == pytest.approx(loss_a, rel=1e-10)
    assert grads_a.keys() == grads_e.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_e[name], grads_a[name], rtol=1e-8, atol=1e-12 * grads_a[name].abs().max(),
                                   msg=name)


def test_two_interaction_blocks_fall_back_to_autograd():
    from openmm_cgnn.training import explicit_forces_available

    ds = make_synthetic_dataset(None, n_frames=1, n_side=4, box_nm=1.6, seed=3)
    steps = _steps(ds, n_interaction_layers=2)
    assert not isinstance(getattr(steps["explicit"].graph.force, "torch_module", None), ExplicitForces)
    assert steps["explicit"].gradients()[0] == pytest.approx(steps["autograd"].gradients()[0], rel=1e-12)
    assert not explicit_forces_available(steps["explicit"].graph.network.torch_module,
                                         steps["explicit"].graph.henergy.torch_module)
    one_block = _steps(ds)["explicit"].graph
    assert explicit_forces_available(one_block.network.torch_module, one_block.henergy.torch_module)


@pytest.mark.parametrize("form", ["split", "input"])
def test_temperature_aware_explicit_loss_and_gradients_equal_autograd(form):
    """A batch of frames at two temperatures of a temperature-aware model: U = A + tau B ("split": the
    read-out weight of each bead depends on its frame's temperature) or tau as an input feature ("input").
    The loss and every parameter gradient (entropy read-out included) equal those of autograd forces."""
    sets = [make_synthetic_dataset(None, n_frames=1, n_side=5, box_nm=2.0, seed=3 + k, temperature_K=t)
            for k, t in enumerate((250.0, 350.0))]
    steps = _steps(sets, temperature_aware=True, temperature_form=form)
    graph = steps["explicit"].graph
    assert isinstance(graph.force.torch_module, ExplicitForces)
    assert (graph.hentropy is not None) == (form == "split")
    loss_a, grads_a = steps["autograd"].gradients()
    loss_e, grads_e = steps["explicit"].gradients()
    assert loss_e == pytest.approx(loss_a, rel=1e-10)
    assert grads_a.keys() == grads_e.keys()
    if form == "split":
        assert any(name.startswith("entropy.") and grads_a[name].abs().max() > 0 for name in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_e[name], grads_a[name], rtol=1e-8, atol=1e-12 * grads_a[name].abs().max(),
                                   msg=name)


def test_slot_tables_hold_every_pair_in_both_directions():
    rng = np.random.default_rng(1)
    box = np.diag([2.0, 2.2, 2.4])
    pos = rng.uniform(0, 1, (2, 40, 3)) @ box
    tables = precompute_slot_arrays(pos, np.stack([box, box]), n_real=[40, 30], cutoff=0.7)
    for f, n_real in enumerate((40, 30)):
        j, shift = tables["slot_j"][f], tables["slot_shift"][f].astype(float)
        row = np.broadcast_to(np.arange(j.shape[0])[:, None], j.shape)
        filled = j >= 0
        assert not filled[n_real:].any()   # padding beads have no neighbours
        vec = pos[f][j[filled]] - pos[f][row[filled]] + shift[filled] @ box
        assert np.all(np.linalg.norm(vec, axis=1) < 0.7)
        assert filled.sum() == 2 * len(find_frame_pairs(pos[f, :n_real], box, 0.7)[0])
        assert len(set(zip(row[filled], j[filled]))) == filled.sum()


def test_force_mode_is_checked_and_recorded():
    with pytest.raises(ConfigError, match="force_mode"):
        TrainConfig(force_mode="numerical")
    config = TrainConfig.from_preset("tiny")
    config.force_mode = "explicit"
    assert 'force_mode = "explicit"' in config.to_toml()
    assert TrainConfig.from_toml(config.to_toml()).force_mode == "explicit"


def test_explicit_training_learns_and_exports_unchanged(tmp_path):
    """A short training with explicit forces lowers the validation error, epoch by epoch as autograd forces
    do from the same start; hippynn reads the model it wrote, and its export equals hippynn's prediction."""
    from openmm_cgnn.export import potential_from_model_dir

    path = tmp_path / "data.npz"
    ds = make_synthetic_dataset(path, n_frames=24, n_side=4, box_nm=1.6, seed=7, noise=5.0, jitter_nm=0.02)
    curves = {}
    for mode in ("explicit", "autograd"):
        config = TrainConfig.from_preset("tiny")
        config.learning_rate = 1e-2
        config.max_epochs = config.termination_patience = 5
        config.fit_volume = False
        config.force_mode = mode
        model_dir = train([path], config, tmp_path / mode, verbose=False)
        assert json.loads((model_dir / "metadata.json").read_text())["training_forces"] == mode
        curves[mode] = json.loads((model_dir / "metrics.json").read_text())["curve"]
    valid = {mode: [row["valid_force_rmse"] for row in curve] for mode, curve in curves.items()}
    print("validation force RMSE per epoch:", valid)
    assert min(valid["explicit"]) < 0.7 * valid["explicit"][0]
    # the same start, batches and schedule: the two float32 runs follow one trajectory (measured: 4e-6 apart)
    np.testing.assert_allclose(valid["explicit"], valid["autograd"], rtol=1e-3)

    model_dir = tmp_path / "explicit"
    loaded = load_trained(model_dir)
    e_ref, f_ref = predict_hippynn(loaded, ds.positions[:2], ds.boxes[:2], ds.bead_types)
    module = torch.jit.script(potential_from_model_dir(model_dir, "float64")[0])
    for k in range(2):
        x = torch.tensor(ds.positions[k], dtype=torch.float64, requires_grad=True)
        energy = module(x, torch.tensor(ds.boxes[k], dtype=torch.float64))
        (grad,) = torch.autograd.grad(energy, x)
        assert float(energy.detach()) == pytest.approx(e_ref[k], rel=1e-6)
        assert np.max(np.abs(-grad.numpy() - f_ref[k])) <= 1e-6 * np.max(np.abs(f_ref[k]))


def test_force_mode_option_reaches_the_training_config():
    from openmm_cgnn.cli import _train_config, build_parser

    parser = build_parser()
    for argv, expected in ((["--force-mode", "autograd"], "autograd"), ([], "explicit")):
        args = parser.parse_args(["train", "--data", "d.npz", "--out", "m", *argv])
        assert _train_config(args).force_mode == expected
    args = parser.parse_args(["distill", "--teacher", "t", "--data", "d.npz", "--out", "s", "--force-mode", "autograd"])
    assert _train_config(args).force_mode == "autograd"
