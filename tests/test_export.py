"""Export: the TorchScript CGPotential reproduces hippynn's prediction and runs inside OpenMM."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.errors import OutputExistsError
from openmm_cgnn.export import export_model, load_exported, potential_from_model_dir
from openmm_cgnn.training import load_trained, predict_hippynn
from openmm_cgnn.volume import VolumeTermParams

from .tiny_models import dataset_path_for_tests, tiny_model

N_FRAMES = 3  # frames of the data set compared in the equivalence test
SCRIPT_ERROR = (RuntimeError, torch.jit.Error)  # what a TorchScript `raise RuntimeError` surfaces as in Python


@pytest.fixture(scope="module")
def dataset_path(request, tmp_path_factory):
    return dataset_path_for_tests(request, tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(dataset_path):
    return CGDataset.load(dataset_path)


@pytest.fixture(scope="module")
def model_dir(dataset_path, tmp_path_factory):
    return tiny_model(dataset_path, tmp_path_factory)


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    """{dtype: path} of the tiny model exported in float32 and float64."""
    out = tmp_path_factory.mktemp("exported")
    return {dt: export_model(model_dir, out / f"cg-{dt}.pt", dtype=dt) for dt in ("float32", "float64")}


def _energy_forces(module, positions: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and autograd forces (kJ/mol/nm) of a CGPotential for one frame, float64 inputs."""
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    energy = module(x, torch.tensor(box, dtype=torch.float64))
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest deviation relative to the largest reference magnitude."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.mark.parametrize("tensor_order", [0, 1, 2])
def test_exported_module_equals_hippynn(tensor_order, dataset_path, dataset, tmp_path_factory, exported):
    """Energies and forces of the scripted module = predict_hippynn (network via hippynn + prior)."""
    if tensor_order == 2:
        model_dir = tiny_model(dataset_path, tmp_path_factory)
    else:  # one short epoch on a few frames: the weights are what they are, equivalence is the question
        model_dir = tiny_model(dataset_path, tmp_path_factory, n_frames=6, tensor_order=tensor_order, max_epochs=1)
    loaded = load_trained(model_dir)
    frames = np.linspace(0, dataset.n_frames - 1, N_FRAMES).astype(int)
    e_ref, f_ref = predict_hippynn(loaded, dataset.positions[frames], dataset.boxes[frames], dataset.bead_types)
    for dtype, tol in (("float64", 1e-6), ("float32", 1e-4)):
        pot, _ = potential_from_model_dir(model_dir, dtype)
        module = torch.jit.script(pot)
        for k, f in enumerate(frames):
            e, forces = _energy_forces(module, dataset.positions[f], dataset.boxes[f])
            assert abs(e - e_ref[k]) <= tol * abs(e_ref[k]), (dtype, f, e, e_ref[k])
            assert _rel(forces, f_ref[k]) <= tol, (dtype, f, _rel(forces, f_ref[k]))
    if tensor_order == 2:  # the saved files give the same numbers, plus the fitted volume term U_V (no forces)
        for dtype, tol in (("float64", 1e-6), ("float32", 1e-4)):
            module, meta = load_exported(exported[dtype])
            e, forces = _energy_forces(module, dataset.positions[frames[0]], dataset.boxes[frames[0]])
            if meta.get("volume_term"):
                volume = VolumeTermParams.from_dict(meta["volume_term"])
                e -= volume.energy(abs(np.linalg.det(dataset.boxes[frames[0]])), dataset.n_beads)
            assert abs(e - e_ref[0]) <= tol * abs(e_ref[0])
            assert _rel(forces, f_ref[0]) <= tol


@pytest.mark.parametrize("overrides", [{"resnet": False}, {"n_interaction_layers": 2}], ids=["plain", "two-blocks"])
def test_other_architectures_equal_hippynn(overrides, dataset_path, dataset, tmp_path_factory):
    """Plain (non-ResNet) layers take the hand-written force path, two interaction blocks take autograd:
    both equal hippynn in float64."""
    model_dir = tiny_model(dataset_path, tmp_path_factory, n_frames=6, max_epochs=1, **overrides)
    e_ref, f_ref = predict_hippynn(load_trained(model_dir), dataset.positions[:1], dataset.boxes[:1],
                                   dataset.bead_types)
    pot, _ = potential_from_model_dir(model_dir, "float64")
    module = torch.jit.script(pot)
    assert module.analytic_gradient == (overrides.get("n_interaction_layers", 1) == 1)
    e, forces = _energy_forces(module, dataset.positions[0], dataset.boxes[0])
    assert abs(e - e_ref[0]) <= 1e-6 * abs(e_ref[0])
    assert _rel(forces, f_ref[0]) <= 1e-6


def test_hand_written_forces_equal_autograd(exported, dataset):
    """The hand-written gradient (the default for one interaction block) equals autograd through the same
    network, to rounding, in float64 and float32."""
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        module, _ = load_exported(exported[dtype])
        assert module.analytic_gradient
        for frame in (0, dataset.n_frames - 1):
            e_hand, f_hand = _energy_forces(module, dataset.positions[frame], dataset.boxes[frame])
            module.analytic_gradient = False
            e_auto, f_auto = _energy_forces(module, dataset.positions[frame], dataset.boxes[frame])
            module.analytic_gradient = True
            assert e_hand == pytest.approx(e_auto, rel=tol)
            assert _rel(f_hand, f_auto) <= tol


def test_metadata_of_the_exported_file(exported, model_dir, dataset):
    module, meta = load_exported(exported["float32"])
    assert meta["dtype"] == "float32"
    assert meta["type_names"] == dataset.type_names
    assert meta["cutoff_nm"] == pytest.approx(json.loads((model_dir / "metadata.json").read_text())["cutoff_nm"])
    assert meta["units"]["energy"] == "kJ/mol" and meta["units"]["positions"] == "nm"
    assert set(meta["prior"]) >= {"g", "a", "cutoff", "taper", "strength"}
    assert meta["training"]["state_points"] == [dataset.metadata["state"]]
    with pytest.raises(OutputExistsError):
        export_model(model_dir, exported["float32"])


def test_forces_are_minus_the_energy_gradient(exported, dataset):
    module, _ = load_exported(exported["float64"])
    pos, box = dataset.positions[0], dataset.boxes[0]
    _, forces = _energy_forces(module, pos, box)
    h = 1e-5  # nm
    rng = np.random.default_rng(0)
    for bead, axis in zip(rng.choice(dataset.n_beads, 4, replace=False), rng.integers(0, 3, 4)):
        plus, minus = pos.copy(), pos.copy()
        plus[bead, axis] += h
        minus[bead, axis] -= h
        e_plus, _ = _energy_forces(module, plus, box)
        e_minus, _ = _energy_forces(module, minus, box)
        numeric = -(e_plus - e_minus) / (2 * h)
        assert numeric == pytest.approx(forces[bead, axis], rel=1e-5, abs=1e-4 * np.abs(forces).max())


def test_translation_invariance_and_wrapping(exported, dataset):
    module, _ = load_exported(exported["float64"])
    pos, box = dataset.positions[1], dataset.boxes[1]
    e0, f0 = _energy_forces(module, pos, box)
    e1, f1 = _energy_forces(module, pos + np.array([0.37, -1.1, 2.9]), box)
    assert e1 == pytest.approx(e0, rel=1e-10)
    assert _rel(f1, f0) < 1e-9
    # an unwrapped copy (beads moved by whole box vectors) is the same configuration
    shifts = np.random.default_rng(1).integers(-2, 3, size=(dataset.n_beads, 3)) @ box
    e2, f2 = _energy_forces(module, pos + shifts, box)
    assert e2 == pytest.approx(e0, rel=1e-10)
    assert _rel(f2, f0) < 1e-9


def test_any_number_of_beads_with_one_bead_type(exported, dataset):
    """A 2x2x2 replica of a frame (8x the beads, no set_types) has 8x the energy and the same forces."""
    if len(dataset.type_names) != 1:
        pytest.skip("needs a one-bead-type data set")
    module, _ = load_exported(exported["float64"])
    pos, box = dataset.positions[2], dataset.boxes[2]
    e0, f0 = _energy_forces(module, pos, box)
    images = [np.array([a, b, c]) @ box for a in range(2) for b in range(2) for c in range(2)]
    big = np.concatenate([pos + s for s in images])
    e8, f8 = _energy_forces(module, big, 2 * box)
    assert e8 == pytest.approx(8 * e0, rel=1e-9)
    assert _rel(f8, np.tile(f0, (8, 1))) < 1e-9
    assert module.types.numel() == 0  # nothing was stored


def test_small_box_raises_a_clear_error(exported, dataset):
    module, meta = load_exported(exported["float32"])
    cut = meta["cutoff_nm"]
    small = np.eye(3) * 1.9 * cut
    with pytest.raises(SCRIPT_ERROR, match="box is too small"):
        module(torch.tensor(dataset.positions[0] % small[0, 0]), torch.tensor(small))
    # a triclinic box whose vectors are all longer than 2 cutoffs but whose z width is not
    length = dataset.boxes[0][0, 0]
    skewed = np.array([[length, 0, 0], [0, length, 0], [0.5 * length, 0.5 * length, 1.9 * cut]])
    assert np.linalg.norm(skewed, axis=1).min() > 2 * cut
    with pytest.raises(SCRIPT_ERROR, match="perpendicular width"):
        module(torch.tensor(dataset.positions[0]), torch.tensor(skewed))


def test_set_types_checks_its_input(exported, dataset):
    module, _ = load_exported(exported["float64"])
    with pytest.raises(SCRIPT_ERROR, match="type indices"):
        module.set_types(torch.full((dataset.n_beads,), 5))
    module.set_types(torch.zeros(dataset.n_beads, dtype=torch.long))
    e, _ = _energy_forces(module, dataset.positions[0], dataset.boxes[0])
    assert np.isfinite(e)


def test_saved_file_loads_in_a_new_process(exported, dataset, tmp_path):
    frame = tmp_path / "frame.npz"
    np.savez(frame, positions=dataset.positions[0], box=dataset.boxes[0])
    expected, _ = _energy_forces(load_exported(exported["float32"])[0], dataset.positions[0], dataset.boxes[0])
    # plain torch.jit.load, with nothing of ours (or vesin's) imported: the module is self-contained
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, torch
        module = torch.jit.load({str(exported['float32'])!r})
        assert not any(name.startswith(("vesin", "openmm_cgnn")) for name in sys.modules)
        data = np.load({str(frame)!r})
        print(float(module(torch.tensor(data["positions"]), torch.tensor(data["box"]))))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-6)


def test_load_exported_explains_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.pt")


def test_module_runs_inside_openmm(exported, dataset):
    """Forces of an OpenMM Context with TorchForce(module) = the module's autograd forces (kJ/mol/nm)."""
    openmm = pytest.importorskip("openmm")
    openmmtorch = pytest.importorskip("openmmtorch")
    from openmm import unit

    for dtype, tol in (("float32", 1e-4), ("float64", 1e-6)):
        module, _ = load_exported(exported[dtype])
        pos, box = dataset.positions[3], dataset.boxes[3]
        system = openmm.System()
        for _ in range(dataset.n_beads):
            system.addParticle(32.04)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        force = openmmtorch.TorchForce(module)
        force.setUsesPeriodicBoundaryConditions(True)
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        context.setPositions(pos)
        state = context.getState(getEnergy=True, getForces=True)
        e_mm = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f_mm = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        e, f = _energy_forces(module, pos, box)
        assert e_mm == pytest.approx(e, rel=tol, abs=tol)
        assert _rel(f_mm, f) < tol
        # a box that shrank below twice the cutoff gives a NaN energy (the step never syncs to raise),
        # and the module says why
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in 0.8 * box])
        assert np.isnan(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        assert module.overflowed(torch.tensor(pos), torch.tensor(0.8 * box))
        del context


def test_two_bead_types_need_set_types(tmp_path_factory, tmp_path):
    """With several bead types the module refuses to guess; after set_types it equals hippynn."""
    from openmm_cgnn.testing import make_synthetic_dataset

    path = tmp_path_factory.mktemp("two-types") / "two-types.npz"
    ds = make_synthetic_dataset(path, n_frames=6, type_names=("A", "B"), seed=3)
    model_dir = tiny_model(path, tmp_path_factory, max_epochs=1)
    out = export_model(model_dir, tmp_path / "two.pt", dtype="float64")
    module, meta = load_exported(out)
    assert meta["type_names"] == ["A", "B"]
    with pytest.raises(SCRIPT_ERROR, match="set_types"):
        module(torch.tensor(ds.positions[0]), torch.tensor(ds.boxes[0]))
    module.set_types(torch.tensor(ds.bead_types))
    e_ref, f_ref = predict_hippynn(model_dir, ds.positions[:2], ds.boxes[:2], ds.bead_types)
    for k in range(2):
        e, f = _energy_forces(module, ds.positions[k], ds.boxes[k])
        assert abs(e - e_ref[k]) <= 1e-6 * abs(e_ref[k])
        assert _rel(f, f_ref[k]) <= 1e-6
    # types stored at export time travel with the file
    stored = export_model(model_dir, tmp_path / "two-stored.pt", dtype="float64", bead_types=ds.bead_types)
    module2, _ = load_exported(stored)
    assert _energy_forces(module2, ds.positions[0], ds.boxes[0])[0] == pytest.approx(e_ref[0], rel=1e-6)
