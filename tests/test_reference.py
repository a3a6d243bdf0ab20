"""All-atom reference runs: data set contents, resume after interruption, and the error cases."""

import json
import subprocess
import sys

import numpy as np
import pytest

from openmm_cgnn.dataset import CGDataset
from openmm_cgnn.reference import ReferenceRunError, load_reference, run_reference

from .conftest import tiny_reference_config


def test_reference_file_has_documented_shapes_units_and_finite_forces(methanol_reference):
    ref = load_reference(methanol_reference)
    n_atoms = 64 * 6
    assert ref.positions.shape == (40, n_atoms, 3) and ref.forces.shape == (40, n_atoms, 3)
    assert ref.boxes.shape == (40, 3, 3) and ref.potential_energy.shape == (40,)
    assert np.isfinite(ref.forces).all() and np.isfinite(ref.potential_energy).all()
    assert ref.metadata["units"]["forces"] == "kJ/mol/nm"
    assert ref.metadata["platform"] == "CPU" and ref.metadata["forcefield"] == "oplsaa"
    np.testing.assert_allclose(np.diff(ref.time), 0.05, rtol=1e-9)
    # a liquid, not an explosion: typical atomic forces are hundreds of kJ/mol/nm
    assert 50 < np.sqrt(np.mean(ref.forces.astype(float) ** 2)) < 5000
    assert ref.topology.getNumAtoms() == n_atoms and ref.topology.getNumBonds() == 64 * 5
    # the pressure of every frame (bar): a liquid's instantaneous pressure fluctuates by ~1000 bar
    assert ref.pressure.shape == (40,) and np.isfinite(ref.pressure).all()
    assert 100 < np.std(ref.pressure) < 20000 and abs(np.mean(ref.pressure)) < 5000


def test_files_without_pressures_still_load(methanol_dataset, tmp_path):
    ds = CGDataset.load(methanol_dataset)
    assert ds.pressure is not None and ds.pressure.shape == (ds.n_frames,)
    assert ds.subset(slice(0, 5)).pressure.shape == (5,)
    ds.pressure = None
    old = ds.save(tmp_path / "old.npz")
    with np.load(old) as z:
        assert "pressure" not in z.files
    assert CGDataset.load(old).pressure is None


def test_mapped_dataset_reloads_with_documented_contents(methanol_reference, methanol_dataset):
    ds = CGDataset.load(methanol_dataset)
    ref = load_reference(methanol_reference)
    assert ds.positions.shape == (40, 64, 3) and ds.forces.shape == (40, 64, 3)
    assert ds.type_names == ["MEOH"] and np.all(ds.bead_types == 0)
    np.testing.assert_allclose(ds.bead_masses, 32.042, atol=2e-3)
    assert ds.metadata["units"]["positions"] == "nm" and ds.metadata["state"]["temperature_K"] == 300.0
    # every frame: total bead force equals total atomic force (constraint forces are not in getForces)
    np.testing.assert_allclose(ds.forces.sum(1), ref.forces.astype(float).sum(1), atol=1e-6)
    assert np.all((ds.positions >= 0) & (ds.positions < np.diagonal(ds.boxes, axis1=1, axis2=2)[:, None, :]))
    np.testing.assert_allclose(ds.densities(), 0.787, rtol=1e-6)  # NVT keeps the requested density
    arrays = ds.to_hippynn_arrays()
    np.testing.assert_allclose(arrays["coordinates"], ds.positions * 10.0)
    np.testing.assert_allclose(arrays["forces"], ds.forces / 41.84)
    assert arrays["species"].min() == 1


def test_interrupted_run_resumes_without_lost_or_duplicate_frames(tmp_path):
    cfg = tiny_reference_config(production=1.0, checkpoint_every=5, n_molecules=27, cutoff=0.55,
                                equilibration=0.5)
    out = tmp_path / "run.npz"

    def interrupt(n):
        if n == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reference(cfg, out, progress=False, on_frame=interrupt)
    assert not out.exists()
    partial = tmp_path / "run.npz.partial"
    with np.load(partial / "frames.npz") as z:
        saved = z["positions"].copy()
        assert int(z["n_frames"]) == 10
    run_reference(cfg, out, progress=False)
    ref = load_reference(out)
    assert len(ref.time) == 20 and not partial.exists()
    np.testing.assert_allclose(ref.time, np.arange(1, 21) * 0.05, rtol=1e-9)
    np.testing.assert_array_equal(ref.positions[:10], saved)
    assert np.all(np.abs(np.diff(ref.positions, axis=0)).max(axis=(1, 2)) > 0)  # no repeated frame


def test_npt_run_records_pressure_and_changes_volume(tmp_path):
    cfg = tiny_reference_config(n_molecules=27, cutoff=0.55, pressure=1.0, production=0.5, equilibration=0.2,
                                barostat_interval=5)
    ref = load_reference(run_reference(cfg, tmp_path / "npt.npz", progress=False))
    assert ref.metadata["state"]["pressure_bar"] == 1.0 and ref.metadata["state"]["ensemble"] == "NPT"
    assert np.ptp(np.linalg.det(ref.boxes)) > 0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "openmm_cgnn.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--species", "argon"], "unknown species 'argon'"),
    (["--density", "7.5"], "not a liquid density"),
    (["--density", "2.5"], "closer than their size"),
    (["--molecules", "8"], "smaller than twice the cutoff"),
    (["--forcefield", "tip3p.xml"], "cannot parameterise methanol"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "x.npz"
    res = _cli("reference", "--molecules", "27", "--cutoff", "0.5", "--ns", "0.0001", "--frame-interval", "0.05",
               "--equilibration", "0",
               "--platform", "CPU", "--quiet", "--out", str(out), *args)
    assert res.returncode != 0
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists() and not (tmp_path / "x.npz.partial").exists()


def test_existing_output_needs_overwrite(tmp_path, methanol_reference):
    out = tmp_path / "exists.npz"
    out.write_bytes(b"keep me")
    res = _cli("map", "--in", str(methanol_reference), "--out", str(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert out.read_bytes() == b"keep me"
    res = _cli("map", "--in", str(methanol_reference), "--out", str(out), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert CGDataset.load(out).n_beads == 64


def test_map_rejects_a_file_that_is_not_a_reference(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    res = _cli("map", "--in", str(bad), "--out", str(tmp_path / "o.npz"))
    assert res.returncode == 2 and "not an openmm-cgnn all-atom reference" in res.stderr


def test_cg_dataset_metadata_is_json_with_provenance(methanol_dataset):
    with np.load(methanol_dataset) as z:
        meta = json.loads(str(z["metadata_json"]))
    assert meta["format"] == "openmm-cgnn/cg-dataset"
    assert meta["source"]["forcefield"] == "oplsaa" and "versions" in meta and meta["mapping"]["n_beads"] == 64
