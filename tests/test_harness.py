"""The comparison harness: state-point syntax, configuration, a tiny end-to-end comparison (outputs,
report keys, reuse of references, blow-ups and failures recorded), the CLI and the analysis notebook.

The end-to-end tests share one tiny model (HIP-NN-TS, tiny preset, one epoch on the 64-bead
methanol data set) and one tiny report (``HarnessConfig.from_preset("tiny")``, CPU): their numbers mean
nothing, only the machinery is tested.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from openmm_cgnn import harness as H
from openmm_cgnn.errors import OutputExistsError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
STATE_POINTS = "300K:0.787g/cm3,300K:1bar"


# ---------------------------------------------------------------------------------------------
# state points
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, temperature, density, pressure", [
    ("300K:0.787g/cm3", 300.0, 0.787, None),
    (" 300 K : 0.787 g/cm^3 ", 300.0, 0.787, None),
    ("2.5e2K:0.8g/cc", 250.0, 0.8, None),
    ("350k:1bar", 350.0, None, 1.0),
    ("300K:1atm", 300.0, None, 1.01325),
    ("300K:1000BAR", 300.0, None, 1000.0),
])
def test_state_point_syntax(text, temperature, density, pressure):
    sp = H.parse_state_point(text)
    assert sp.temperature == pytest.approx(temperature)
    assert (sp.density is None) == (density is None) and (sp.pressure is None) == (pressure is None)
    if density is not None:
        assert sp.density == pytest.approx(density) and sp.ensemble == "NVT"
    else:
        assert sp.pressure == pytest.approx(pressure) and sp.ensemble == "NPT"
    # the label reads back as the same state point, and the slug is a plain file name
    assert H.parse_state_point(sp.label()) == sp
    assert all(c.isalnum() or c in "._" for c in sp.slug())


def test_state_point_labels_and_matching():
    nvt, npt = H.parse_state_point("300K:0.787g/cm3"), H.parse_state_point("300K:1bar")
    assert (nvt.label(), nvt.slug(), nvt.title()) == ("300K:0.787g/cm3", "300K_0.787gcm3",
                                                      "300 K, 0.787 g/cm\u00b3 (NVT)")
    assert (npt.label(), npt.slug()) == ("300K:1bar", "300K_1bar")
    assert nvt.matches({"temperature_K": 300.0, "density_g_cm3": 0.787, "pressure_bar": None})
    assert not nvt.matches({"temperature_K": 300.0, "density_g_cm3": None, "pressure_bar": 1.0})
    assert not nvt.matches({"temperature_K": 310.0, "density_g_cm3": 0.787, "pressure_bar": None})
    assert npt.matches({"temperature_K": 300.0, "density_g_cm3": None, "pressure_bar": 1.0})
    assert not npt.matches({"temperature_K": 300.0, "density_g_cm3": 0.787, "pressure_bar": None})


def test_state_point_lists():
    points = H.parse_state_points("300K:0.787g/cm3, 400K:0.787g/cm3,300K:1bar,")
    assert [p.label() for p in points] == ["300K:0.787g/cm3", "400K:0.787g/cm3", "300K:1bar"]
    assert H.parse_state_points(["300K:1bar", H.StatePoint(350.0, pressure=1.0)])[1].temperature == 350.0
    with pytest.raises(H.StatePointError, match="given twice"):
        H.parse_state_points("300K:1bar,300K:1.0bar")
    with pytest.raises(H.StatePointError, match="no state points"):
        H.parse_state_points(" , ")


@pytest.mark.parametrize("text, message", [
    ("300", "does not read as TEMPERATURE:DENSITY"),
    ("300K:1bar:2", "does not read as"),
    ("300:0.787g/cm3", "needs its unit, e.g. 300K"),
    ("abcK:1bar", "must be a number of kelvin"),
    ("300K:0.787", "needs a unit: g/cm3"),
    ("300K:0.787kg/m3", "unknown unit 'kg/m3'"),
    ("300K:bar", "must be a density such as"),
    ("0K:1bar", "temperature must be a positive"),
    ("300K:5g/cm3", "not a liquid density"),
    ("300K:-1bar", "pressure must be positive"),
])
def test_bad_state_points_say_what_is_wrong(text, message):
    with pytest.raises(H.StatePointError, match=message.replace("(", r"\(").replace("|", r"\|")):
        H.parse_state_point(text)
    assert issubclass(H.StatePointError, ValueError)  # the CLI reports ValueErrors as one line


def test_state_points_from_toml(tmp_path):
    f = tmp_path / "points.toml"
    f.write_text('state_points = ["300K:0.787g/cm3"]\n\n[[state_point]]\ntemperature = 350\ndensity = 0.76\n\n'
                 "[[state_point]]\ntemperature = 350.0\npressure = 1.0\n")
    points = H.parse_state_points(str(f))          # the CLI passes file names through the same function
    assert [p.label() for p in points] == ["300K:0.787g/cm3", "350K:0.76g/cm3", "350K:1bar"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[[state_point]]\ntemperature = 300\ndensity = 0.787\npressure = 1.0\n")
    with pytest.raises(H.StatePointError, match="exactly one of density"):
        H.load_state_points(bad)
    bad.write_text("[[state_point]]\ntemp = 300\n")
    with pytest.raises(H.StatePointError, match="unknown keys \\['temp'\\]"):
        H.load_state_points(bad)
    bad.write_text("points = 3\n")
    with pytest.raises(H.StatePointError, match="unknown keys"):
        H.load_state_points(bad)
    bad.write_text("state_points = [\n")
    with pytest.raises(H.StatePointError, match="not valid TOML"):
        H.load_state_points(bad)
    with pytest.raises(H.StatePointError, match="does not exist"):
        H.load_state_points(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def test_config_presets_round_trip_and_refuse_bad_values(tmp_path):
    tiny, default = H.HarnessConfig.from_preset("tiny"), H.HarnessConfig.from_preset("default")
    full = H.HarnessConfig.from_preset("full")
    assert tiny.aa_production < default.aa_production < full.aa_production
    assert tiny.cg_production < default.cg_production < full.cg_production
    assert H.HarnessConfig.from_preset("tiny", n_molecules=100).n_molecules == 100
    assert (tiny.name, default.name) == ("tiny", "default") and H.HarnessConfig() == default
    json.dumps(H.HarnessConfig().to_dict())
    f = tmp_path / "config.json"
    f.write_text(json.dumps(tiny.to_dict()))
    assert H.HarnessConfig.from_json(f) == tiny
    with pytest.raises(ValueError, match="unknown harness preset"):
        H.HarnessConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown harness configuration keys"):
        H.HarnessConfig.from_dict({"n_molecule": 3})
    with pytest.raises(ValueError, match="cg_timestep must be positive"):
        H.HarnessConfig(cg_timestep=0.0)
    with pytest.raises(ValueError, match="frame interval"):
        H.HarnessConfig(cg_production=1.0, cg_frame_interval=2.0)


def test_config_composes_the_run_configs_and_reads_the_flat_form(tmp_path):
    """HarnessConfig holds a ReferenceConfig and a CGSimulationConfig; a config.json of the older flat form
    (aa_*/cg_* keys) loads to an equal configuration, and the flat names still read and set the settings."""
    from openmm_cgnn.reference import ReferenceConfig
    from openmm_cgnn.simulate import CGSimulationConfig

    cfg = H.HarnessConfig.from_preset("tiny", cg_mts=2, cg_frame_interval=0.02, aa_cutoff=0.8, aa_forcefield="spce")
    assert isinstance(cfg.reference, ReferenceConfig) and isinstance(cfg.cg, CGSimulationConfig)
    assert (cfg.reference.production, cfg.cg.production, cfg.cg.mts, cfg.cg.frame_interval) == (1.0, 0.5, 2, 0.02)
    assert (cfg.aa_production, cfg.cg_mts, cfg.aa_cutoff, cfg.reference_cutoff) == (1.0, 2, 0.8, 0.8)
    assert cfg.reference.forcefield == cfg.aa_forcefield == "spce"
    flat = {"name": "tiny", "species": None, "n_molecules": 64, "system": None, "mapping": None,
            "aa_cutoff": 0.8, "aa_forcefield": "spce", "aa_timestep": 0.002, "aa_equilibration": 0.5,
            "aa_production": 1.0, "aa_frame_interval": 0.05, "cg_timestep": 0.002, "cg_friction": 1.0,
            "cg_equilibration": 0.1, "cg_production": 0.5, "cg_frame_interval": 0.02, "cg_cuda_graphs": None,
            "cg_mts": 2, "cg_mts_fast": "prior", "rdf_bin_width": 0.01, "adf_bins": 36, "adf_shell_cutoff": None,
            "density_blocks": 4, "platform": None, "torch_threads": 1, "seed": 2024, "reuse_references": True}
    (tmp_path / "old.json").write_text(json.dumps(flat))
    assert H.HarnessConfig.from_json(tmp_path / "old.json") == cfg
    (tmp_path / "new.json").write_text(json.dumps(cfg.to_dict()))
    assert H.HarnessConfig.from_json(tmp_path / "new.json") == cfg
    assert "aa_production" not in cfg.to_dict() and cfg.to_dict()["cg"]["mts"] == 2
    other = dataclasses.replace(cfg, n_molecules=100)
    other.cg_production = 2.0                         # the copy has its own run settings
    assert (other.cg.production, cfg.cg.production) == (2.0, 0.5)
    with pytest.raises(ValueError, match="unknown keys"):
        H.HarnessConfig.from_dict({"cg": {"model": "elsewhere.pt"}})     # set per state point, not here


# ---------------------------------------------------------------------------------------------
# end to end on a tiny system
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(methanol_dataset, tmp_path_factory):
    """An exported tiny HIP-NN-TS model (one epoch on the 64-bead methanol data set)."""
    from openmm_cgnn.export import export_model
    from openmm_cgnn.training import TrainConfig, train

    d = tmp_path_factory.mktemp("harness-model")
    cfg = TrainConfig.from_preset("tiny")
    cfg.max_epochs = 1
    cfg.device = "cpu"
    train([methanol_dataset], cfg, d / "model", verbose=False)
    return export_model(d / "model", d / "model.pt")


def tiny_config(**overrides) -> H.HarnessConfig:
    return H.HarnessConfig.from_preset("tiny", platform="CPU", **overrides)


@pytest.fixture(scope="module")
def tiny_report(tiny_model, methanol_dataset, tmp_path_factory):
    """A comparison at 300 K NVT (the given reference data set) and 300 K, 1 bar NPT (computed)."""
    out = tmp_path_factory.mktemp("harness") / "report"
    report = H.compare(tiny_model, STATE_POINTS, out, tiny_config(), reference_datasets=[methanol_dataset],
                       progress=False)
    return out, report


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (path, img.shape)
    assert img[..., :3].std() > 0.05, f"{path.name} looks blank"


def test_compare_writes_every_output(tiny_report):
    out, report = tiny_report
    for name in ("config.json", "report.json", "report.md", "rdf.png", "adf.png", "density.png", "curves.npz"):
        assert (out / name).is_file(), name
    for name in ("rdf.png", "adf.png", "density.png"):
        _check_png(out / name)
    assert json.loads((out / "report.json").read_text()) == report
    # config.json records the settings as run: the all-atom system taken from the model's metadata included
    assert H.HarnessConfig.from_json(out / "config.json") == dataclasses.replace(tiny_config(), species="methanol")
    # no leftover temporary files of the atomic writes
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    # per-state-point folders: mapped reference (computed one only) and the CG run for mdtraj
    assert (out / "state_points/300K_1bar/reference-aa.npz").is_file()
    assert (out / "state_points/300K_1bar/reference-cg.npz").is_file()
    assert not (out / "state_points/300K_0.787gcm3/reference-aa.npz").exists()   # given, not recomputed
    for slug in ("300K_1bar", "300K_0.787gcm3"):
        for name in ("trajectory.dcd", "topology.pdb", "frames.npz"):
            assert (out / "state_points" / slug / "cg" / name).is_file()


def test_report_has_every_documented_key(tiny_report, methanol_dataset):
    out, report = tiny_report
    assert set(H.REPORT_KEYS) <= set(report)
    for key in H.REPORT_KEYS:                      # the docstring documents every key
        assert f"``{key}``" in H.__doc__, key
    assert report["format"] == H.REPORT_FORMAT and report["platform"] == "CPU"
    assert report["device"] and "openmm" in report["versions"]
    assert set(H.MODEL_KEYS) <= set(report["model"])
    assert report["model"]["kind"] == "torchscript" and report["model"]["type_names"] == ["MEOH"]
    assert report["model"]["training_state_points"][0]["temperature_K"] == 300.0
    assert report["summary"]["n_complete"] == 2 and len(report["summary"]["lines"]) == 3
    nvt, npt = report["state_points"]
    for sp in (nvt, npt):
        assert set(H.STATE_POINT_KEYS) <= set(sp)
        assert sp["status"] == "complete" and sp["message"] is None, sp["message"]
        for group, keys in (("reference", H.REFERENCE_KEYS), ("cg", H.CG_KEYS), ("rdf", H.RDF_KEYS),
                            ("adf", H.ADF_KEYS), ("density", H.DENSITY_KEYS)):
            assert set(keys) <= set(sp[group]), group
        for key in ("mad", "max_abs_dev", "peak_position_error", "peak_height_error", "r_max_nm"):
            assert np.isfinite(sp["rdf"][key]), key
        assert 0.0 <= sp["adf"]["l1"] <= 2.0
        # RDF up to half the box, ADF shell at the first minimum of the reference RDF
        assert sp["rdf"]["r_max_nm"] <= 0.5 * 1.64 + 1e-6
        assert 0.3 < sp["adf"]["shell_cutoff_nm"] < sp["rdf"]["r_max_nm"]
    assert nvt["in_training"] and not npt["in_training"]
    assert nvt["reference"]["source"] == "given" and nvt["reference"]["dataset"] == Path(methanol_dataset).name
    assert npt["reference"]["source"] == "computed" and npt["reference"]["config"]["pressure"] == 1.0
    assert nvt["density"]["fixed"] and nvt["density"]["relative_error"] is None
    assert nvt["density"]["ref_mean"] == pytest.approx(0.787, rel=1e-3)
    d = npt["density"]
    assert not d["fixed"] and d["relative_error_se"] > 0 and d["n_blocks"] == 4
    assert d["relative_error"] == pytest.approx(d["cg_mean"] / d["ref_mean"] - 1)
    # pressures of both sides (bar) at every state point, from the recorded time series
    for sp in (nvt, npt):
        p = sp["pressure"]
        assert set(H.PRESSURE_KEYS) <= set(p)
        assert np.isfinite([p["ref_mean"], p["ref_se"], p["cg_mean"], p["cg_se"]]).all()
        assert p["difference"] == pytest.approx(p["cg_mean"] - p["ref_mean"])
    # no absolute path of this machine in the report (folders are relative, models by file name)
    assert str(out.parent) not in (out / "report.json").read_text()
    assert str(Path(methanol_dataset).parent) not in (out / "report.json").read_text()


def test_markdown_report_and_curves(tiny_report):
    out, report = tiny_report
    md = (out / "report.md").read_text()
    for line in report["summary"]["lines"]:
        assert line in md
    assert "| 300K:1bar | NPT |" in md and "| 300K:0.787g/cm3 | NVT | yes |" in md
    for name in ("rdf.png", "adf.png", "density.png"):
        assert f"]({name})" in md
    curves = H.load_curves(out)
    assert list(curves) == ["300K:0.787g/cm3", "300K:1bar"]
    for label, c in curves.items():
        assert all(c[k] is not None for k in ("r", "g_ref", "g_cg", "theta", "p_ref", "p_cg", "density_cg"))
        assert c["r"].shape == c["g_ref"].shape == c["g_cg"].shape
        assert np.sum(c["p_ref"]) * (c["theta"][1] - c["theta"][0]) == pytest.approx(1.0)


def test_state_point_pieces_run_alone_and_reuse_finished_runs(tiny_report, tiny_model):
    """The pieces of a state point are module-level functions of paths and settings (picklable, for a task
    scheduler); run alone on a finished report folder they reuse its runs and reproduce its numbers."""
    import pickle

    out, report = tiny_report
    for piece in (H.reference_piece, H.cg_piece, H.analysis_piece, H.RunCache):
        assert pickle.loads(pickle.dumps(piece)) is piece
    config = pickle.loads(pickle.dumps(H.HarnessConfig.from_json(out / "config.json")))
    sp = H.parse_state_point("300K:1bar")
    entry = next(s for s in report["state_points"] if s["label"] == sp.label())
    ds_path, ref = H.reference_piece(sp, config, report["platform"], out)
    assert ref["source"] == "reused" and ref["sha256"] == entry["reference"]["sha256"]
    sim_dir = H.state_point_dir(out, sp) / "cg"
    stamp = json.loads((sim_dir / H.RunCache.MARKER).read_text())
    cache = H.RunCache()
    assert cache.cg_run_done(sim_dir, stamp)
    assert not cache.cg_run_done(sim_dir, {**stamp, "model_sha256": "0" * 64})          # another model
    assert not H.RunCache(reuse_references=False).mapped_reference_done(ds_path, ref["config"])
    assert cache.mapped_reference_done(ds_path, ref["config"])
    assert not cache.mapped_reference_done(ds_path, {**ref["config"], "seed": 1})         # other settings
    before = (sim_dir / "frames.npz").stat().st_mtime_ns
    cg = H.cg_piece(sp, tiny_model, report["model"]["sha256"], config, report["platform"], ds_path, out)
    assert (sim_dir / "frames.npz").stat().st_mtime_ns == before                             # reused, not rerun
    for key in ("folder", "status", "n_frames", "ns_per_day"):
        assert cg[key] == entry["cg"][key], key
    res, curves, notes = H.analysis_piece(sp, config, ds_path, sim_dir)
    assert res["rdf"]["mad"] == pytest.approx(entry["rdf"]["mad"], rel=1e-12)
    assert res["density"]["cg_mean"] == pytest.approx(entry["density"]["cg_mean"], rel=1e-12)
    np.testing.assert_array_equal(curves["g_cg"], H.load_curves(out)[sp.label()]["g_cg"])


def test_existing_report_is_refused_and_references_are_reused(tiny_report, tiny_model, tmp_path, capsys):
    src, _ = tiny_report
    out = tmp_path / "again"
    shutil.copytree(src, out)
    with pytest.raises(OutputExistsError, match="already holds a comparison report"):
        H.compare(tiny_model, "300K:1bar", out, tiny_config(), progress=False)
    aa = out / "state_points/300K_1bar/reference-aa.npz"
    before = aa.stat().st_mtime_ns
    # an interrupted comparison (no report yet) is resumed: finished runs with the same settings are reused
    (out / "report.json").unlink()
    report = H.compare(tiny_model, "300K:1bar", out, tiny_config())
    assert report["state_points"][0]["reference"]["source"] == "reused"
    log = capsys.readouterr().out
    assert "[compare] 1/1 300K:1bar: CG simulation: reusing state_points/300K_1bar/cg" in log
    assert report["state_points"][0]["status"] == "complete"
    # with overwrite the CG model is run again, the all-atom reference is still reused
    fast_cg = dict(cg_equilibration=0.0, cg_production=0.1, cg_frame_interval=0.025)   # only the reference matters here
    report = H.compare(tiny_model, "300K:1bar", out, tiny_config(**fast_cg), overwrite=True)
    assert report["state_points"][0]["reference"]["source"] == "reused"
    assert report["state_points"][0]["status"] == "complete"
    assert aa.stat().st_mtime_ns == before
    log = capsys.readouterr().out
    assert "[compare] 1/1 300K:1bar: all-atom reference: reusing" in log
    assert "[compare] 1/1 300K:1bar: CG simulation:" in log and "[compare] done in" in log
    # different all-atom settings are not reused
    report = H.compare(tiny_model, "300K:1bar", out, tiny_config(aa_production=0.5, **fast_cg), overwrite=True,
                       progress=False)
    assert report["state_points"][0]["reference"]["source"] == "computed"
    assert report["state_points"][0]["reference"]["n_frames"] == 10


def test_reference_data_sets_are_matched_by_state(tiny_model, methanol_dataset, tmp_path):
    # a data set that matches no state point is noted and not used; a box too small for the model is refused
    with pytest.raises(ValueError, match="too small for the model's cutoff"):
        H.compare(tiny_model, "350K:0.787g/cm3", tmp_path / "small", tiny_config(n_molecules=8),
                  reference_datasets=[methanol_dataset], progress=False)
    assert not (tmp_path / "small" / "report.json").exists()
    with pytest.raises(ValueError, match="two reference data sets match"):
        H.compare(tiny_model, "300K:0.787g/cm3", tmp_path / "two", tiny_config(),
                  reference_datasets=[methanol_dataset, methanol_dataset], progress=False)


def test_blow_up_is_recorded_not_raised(tiny_model, methanol_dataset, tmp_path, capsys):
    from openmm_cgnn.cli import main

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(cg_timestep=0.1, cg_frame_interval=0.1).to_dict()))   # 100 fs: overlap at once
    out = tmp_path / "report"
    rc = main(["compare", "--model", str(tiny_model), "--state-points", "300K:0.787g/cm3", "--out", str(out),
               "--config", str(cfg), "--reference-data", str(methanol_dataset), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "blew up" in printed and "report.md" in printed
    report = H.load_report(out)
    sp = report["state_points"][0]
    assert sp["status"] == "blew_up" and "blew up" in sp["message"]
    assert str(tmp_path) not in json.dumps(report)          # the message names the folder relatively
    assert sp["cg"]["status"] == "blew_up" and sp["rdf"]["mad"] is None and sp["adf"]["l1"] is None
    assert report["summary"]["n_blew_up"] == 1
    for name in ("rdf.png", "adf.png", "density.png"):
        _check_png(out / name)
    curves = H.load_curves(out)["300K:0.787g/cm3"]
    assert curves["g_ref"] is not None and curves["g_cg"] is None
    assert "blew up" in (out / "report.md").read_text()


def test_a_state_point_that_cannot_run_is_recorded(tiny_model, tmp_path, capsys):
    from openmm_cgnn.cli import main

    out = tmp_path / "report"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_config(aa_forcefield="no-such-forcefield.xml").to_dict()))
    rc = main(["compare", "--model", str(tiny_model), "--state-points", "320K:1bar", "--out", str(out),
               "--config", str(cfg), "--quiet"])
    assert rc == 2
    assert "could not be run (320K:1bar)" in capsys.readouterr().err
    sp = H.load_report(out)["state_points"][0]
    assert sp["status"] == "failed" and sp["message"].startswith("the all-atom reference failed")
    assert (out / "state_points/320K_1bar/error.txt").is_file()
    _check_png(out / "rdf.png")


def test_cli_rejects_bad_state_points(tiny_model, tmp_path, capsys):
    from openmm_cgnn.cli import main

    rc = main(["compare", "--model", str(tiny_model), "--state-points", "300K:0.787", "--out",
               str(tmp_path / "x"), "--preset", "tiny"])
    assert rc == 2
    assert "needs a unit: g/cm3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_pair_baseline_models_are_compared_too(methanol_dataset, tmp_path):
    from openmm_cgnn.baselines import fit_pair_force_matching
    from openmm_cgnn.dataset import CGDataset

    pair = fit_pair_force_matching([CGDataset.load(methanol_dataset)], cutoff=0.7, bin_width=0.01)
    pair.save(tmp_path / "pair.json")
    report = H.compare(tmp_path / "pair.json", "300K:0.787g/cm3", tmp_path / "report", tiny_config(),
                       reference_datasets=[methanol_dataset], progress=False)
    assert report["model"]["kind"] == "pair" and report["model"]["label"] == "CG (pair MS-CG)"
    assert report["state_points"][0]["status"] == "complete"
    assert report["state_points"][0]["in_training"]


# ---------------------------------------------------------------------------------------------
# the notebook
# ---------------------------------------------------------------------------------------------
def test_analysis_notebook_runs_on_a_report(tiny_report, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out, _ = tiny_report
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    # committed clean: no outputs, and no path of any machine
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    text = path.read_text()
    assert str(ROOT) not in text and "/tmp/" not in text and "/home/" not in text
    # a kernel spec that runs this very interpreter (the test's venv), whatever python3 is on PATH
    kernel_dir = tmp_path / "jupyter" / "kernels" / "openmm-cgnn-test"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "openmm-cgnn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("OPENMM_CGNN_REPORT", str(out))
    monkeypatch.delenv("MPLBACKEND", raising=False)      # let ipykernel use its inline backend
    client = nbclient.NotebookClient(nb, kernel_name="openmm-cgnn-test", timeout=300,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 4            # RDF, ADF, density, MSD
    text_out = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "64 beads" in text_out and "self-diffusion" in text_out


def test_report_has_error_bars_and_noise_floors(tiny_report):
    """Every metric of a completed state point carries its block-bootstrap standard error, every distance
    its noise floor (two halves of the reference), and report.md shows both."""
    out, report = tiny_report
    for sp in report["state_points"]:
        r, a, u = sp["rdf"], sp["adf"], sp["uncertainty"]
        assert set(H.UNCERTAINTY_KEYS) <= set(u)
        assert u["method"] == "block bootstrap" and u["n_resamples"] == 200 and u["n_sigma"] == 2.0
        assert u["blocks"]["reference"]["n_blocks"] >= 8 and u["blocks"]["cg"]["n_blocks"] >= 8
        assert u["noise_floor_method"] == "halves"
        # the floor of two halves is scaled to the comparison by sqrt((1/n_ref + 1/n_cg) / (2 / n_half)), with
        # n = independent samples (frames / g): below 1 when the CG run holds enough of them, above otherwise
        ref, cg = u["blocks"]["reference"], u["blocks"]["cg"]
        g_ref, g_cg = max(1.0, ref["statistical_inefficiency"]), max(1.0, cg["statistical_inefficiency"])
        n_half = ref["n_blocks"] // 2 * ref["block_length"] / g_ref
        expected = math.sqrt((g_ref / ref["n_frames"] + g_cg / cg["n_frames"]) / (2.0 / n_half))
        assert u["noise_floor_scale"] == pytest.approx(expected, rel=1e-9)
        for key in H.RDF_UNCERTAINTY_KEYS:
            assert r[key] is not None and r[key] >= 0, key
        assert r["mad_se"] > 0 and r["mad_noise_floor"] > 0 and r["mad_noise_floor_se"] > 0
        # a floor is a distance between two samples of one distribution: below the largest
        # deviation it is measured against, and the same for every model of this state point
        assert r["mad_noise_floor"] < r["max_abs_dev_noise_floor"]
        for key in H.ADF_UNCERTAINTY_KEYS:
            assert a[key] is not None and a[key] > 0, key
    nvt, npt = report["state_points"]
    assert nvt["density"]["abs_error_se_bootstrap"] is None          # NVT: the density is imposed
    assert npt["density"]["abs_error_se_bootstrap"] > 0 and npt["density"]["relative_error_se_bootstrap"] > 0
    md = (out / "report.md").read_text()
    assert "| RDF MAD | RDF MAD floor |" in md and "| ADF L1 | ADF L1 floor |" in md
    row = next(line for line in md.splitlines() if line.startswith("| 300K:1bar |"))
    assert f"{npt['rdf']['mad']:.4f} \u00b1 {npt['rdf']['mad_se']:.4f}" in row
    assert f"{npt['rdf']['mad_noise_floor']:.4f} \u00b1 {npt['rdf']['mad_noise_floor_se']:.4f}" in row
    assert "Noise floor" in report["summary"]["lines"][0]
    # per-bin errors for the noise band of rdf.png, kept in curves.npz
    for c in H.load_curves(out).values():
        assert c["g_ref_se"].shape == c["g_cg_se"].shape == c["r"].shape
        assert np.all(c["g_ref_se"] >= 0) and c["g_ref_se"].max() > 0
        assert c["p_ref_se"].shape == c["theta"].shape


def test_error_bars_can_be_switched_off_and_are_checked():
    assert H.HarnessConfig.from_preset("tiny", bootstrap_resamples=0).bootstrap_resamples == 0
    with pytest.raises(ValueError, match="bootstrap_min_blocks"):
        H.HarnessConfig.from_preset("tiny", bootstrap_min_blocks=3)
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        H.HarnessConfig.from_preset("tiny", bootstrap_resamples=-1)


def test_analysis_reproduces_its_error_bars_and_survives_their_failure(tiny_report, monkeypatch):
    """The error bars of a finished state point come out the same when its analysis is rerun (seeded
    bootstrap); if the bootstrap fails, the metrics stay and a note says why there are no error bars."""
    from openmm_cgnn import analysis as A

    out, report = tiny_report
    config = H.HarnessConfig.from_json(out / "config.json")
    sp = H.parse_state_point("300K:1bar")
    entry = next(s for s in report["state_points"] if s["label"] == sp.label())
    ds_path = H.state_point_dir(out, sp) / "reference-cg.npz"
    sim_dir = H.state_point_dir(out, sp) / "cg"
    res, _, _ = H.analysis_piece(sp, config, ds_path, sim_dir)
    for key in H.RDF_UNCERTAINTY_KEYS:
        assert res["rdf"][key] == pytest.approx(entry["rdf"][key], rel=1e-9), key

    def broken(*args, **kwargs):
        raise ValueError("no frames")

    monkeypatch.setattr(A, "comparison_uncertainty", broken)
    res, _, notes = H.analysis_piece(sp, config, ds_path, sim_dir)
    assert res["rdf"]["mad"] == pytest.approx(entry["rdf"]["mad"]) and res["rdf"]["mad_se"] is None
    assert any("no error bars: no frames" in n for n in notes)


# ---------------------------------------------------------------------------------------------
# the same comparison on a Dask cluster
# ---------------------------------------------------------------------------------------------
def _without_timings(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report.pop("created"), report.pop("timing_s")
    for sp in report["state_points"]:
        sp.pop("timing_s")
        sp["cg"].pop("ns_per_day")
    return report


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_sweep_on_two_dask_workers_gives_the_serial_report(tiny_model, methanol_dataset, tmp_path):
    """Two state points on a local cluster of two worker processes: the same report, curves and files as
    the serial path (the command line with --workers 1), and a rerun reuses every finished run.
    OpenMM's CPU platform repeats a run exactly only with one thread in a fresh process (its PME keeps the
    thread count of the first run), which is what each worker is; so is the serial run (a new process)."""
    import subprocess

    from distributed import get_task_stream

    from openmm_cgnn.cluster import ClusterConfig, runner_for

    config = tiny_config(aa_equilibration=0.1, aa_production=0.4, cg_equilibration=0.05, cg_production=0.2)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OPENMM_CPU_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    # the serial run (its own process) and the cluster run at the same time, into separate folders
    cli = subprocess.Popen([sys.executable, "-m", "openmm_cgnn.cli", "compare", "--model", str(tiny_model),
                            "--state-points", STATE_POINTS, "--out", str(tmp_path / "serial"), "--config",
                            str(tmp_path / "config.json"), "--reference-data", str(methanol_dataset),
                            "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "dask"
    with runner_for(ClusterConfig(workers=2)) as runner:
        assert runner.parallel and "2 worker process(es)" in runner.description
        with get_task_stream(runner.client) as stream:
            report = H.compare(tiny_model, STATE_POINTS, out, config, reference_datasets=[methanol_dataset],
                               progress=False, cluster=runner)
        # reference, CG run and analysis of each state point ran as tasks, spread over both workers
        assert len({t["worker"] for t in stream.data}) == 2
        stdout, stderr = cli.communicate(timeout=600)
        assert cli.returncode == 0, stderr
        assert "Dask" not in stdout                     # it ran in its own process, without a cluster
        serial = H.load_report(tmp_path / "serial")
        assert _without_timings(report) == _without_timings(serial)
        assert [s["status"] for s in report["state_points"]] == ["complete", "complete"]
        assert _files(out) == _files(tmp_path / "serial")
        a, b = H.load_curves(out), H.load_curves(tmp_path / "serial")
        for label in a:
            for k in a[label]:
                np.testing.assert_array_equal(a[label][k], b[label][k])
        md = [(f / "report.md").read_text().replace(r["created"], "") for f, r in ((out, report),
                                                                                  (tmp_path / "serial", serial))]
        assert md[0] == md[1]
        # an interrupted sweep is resumed on the cluster: every finished run is reused
        frames = out / "state_points/300K_1bar/cg/frames.npz"
        before = frames.stat().st_mtime_ns
        (out / "report.json").unlink()
        again = H.compare(tiny_model, STATE_POINTS, out, config, reference_datasets=[methanol_dataset],
                          progress=False, cluster=runner)
    assert frames.stat().st_mtime_ns == before
    assert [s["reference"]["source"] for s in again["state_points"]] == ["given", "reused"]
    for first, second in zip(_without_timings(report)["state_points"], _without_timings(again)["state_points"]):
        first["reference"].pop("source"), second["reference"].pop("source")
        assert first == second

