"""The transferability study runs end to end at toy size and writes its table, plots and conclusion."""

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from openmm_cgnn.errors import ConfigError
from openmm_cgnn.study import StudyConfig, conclude, error_growth, run_transfer_study

THERMAL = "hipnn-ts-l2-thermal"
STUDENT = "hipnn-ts-l2-student"


@pytest.mark.slow
def test_toy_study_writes_rows_for_every_model_and_state(tmp_path):
    cfg = StudyConfig.from_preset("toy")
    result = run_transfer_study(tmp_path / "study", cfg, progress=False)
    models = {r["model"] for r in result["rows"]}
    assert models == {"hipnn-ts-l2", STUDENT, THERMAL, "pair-fm"}
    assert len(result["rows"]) == 4 * len(cfg.eval_states)
    trained = {(r["model"], r["state"]) for r in result["rows"] if r["in_training"]}
    assert trained == {("hipnn-ts-l2", "300K:0.787g/cm3"), ("pair-fm", "300K:0.787g/cm3"),
                       (STUDENT, "300K:0.787g/cm3"), (THERMAL, "300K:0.787g/cm3"), (THERMAL, "400K:0.787g/cm3")}
    # the student learnt from the teacher's forces (not the mapped ones), and the conclusion compares the two
    from openmm_cgnn.distill import distillation_info

    info = distillation_info(tmp_path / "study" / "models" / STUDENT / "model")
    assert Path(info["teacher"]) == tmp_path / "study" / "models" / "hipnn-ts-l2" / "model"
    student = result["conclusion"]["student"]
    assert student["line"] in result["conclusion"]["lines"] and student["ratio"] > 0
    for r in result["rows"]:
        if r["status"] == "complete":
            assert r["rdf_mad"] is not None and r["rdf_mad"] >= 0
            if r["in_training"] and r["state"] == "300K:0.787g/cm3":   # each model's first training point
                assert r["rdf_mad_relative_to_training"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["conclusion"]["lines"] and "per_model" in saved["conclusion"]
    for name in ("rdf_mad_vs_T.png", "adf_l1_vs_T.png", "relative_error.png"):
        assert mpimg.imread(tmp_path / "study" / name).shape[0] > 100
    assert "![RDF MAD vs T](rdf_mad_vs_T.png)" in (tmp_path / "study" / "study.md").read_text()
    # each all-atom reference ran once, in the study's first stage (beside the trainings): every comparison
    # took them as given data sets and ran none of its own
    sources = {m: [sp["reference"]["source"] for sp in json.loads(
        (tmp_path / "study" / "models" / m / "report" / "report.json").read_text())["state_points"]]
        for m in ("hipnn-ts-l2", STUDENT, THERMAL, "pair-fm")}
    assert all(s == ["given"] * 4 for s in sources.values())
    assert sorted(p.name for p in (tmp_path / "study" / "data").glob("*-cg.npz")) == [
        "300K_0.787gcm3-cg.npz", "300K_1bar-cg.npz", "400K_0.787gcm3-cg.npz", "450K_0.787gcm3-cg.npz"]
    assert not list((tmp_path / "study" / "models").glob("*/report/state_points/*/reference-aa.npz"))
    _check_thermal_model(tmp_path / "study", result)


def _check_thermal_model(study, result):
    """The temperature-aware model of the toy study: trained at both temperatures with a volume term,
    run by the harness at each state point's temperature, its error growth in the conclusion."""
    import numpy as np
    import torch

    from openmm_cgnn.export import load_exported
    from openmm_cgnn.simulate import load_cg_frames

    module, meta = load_exported(study / "models" / THERMAL / "model.pt")
    assert meta["temperature_aware"]["training_temperatures_K"] == [300.0, 400.0]
    assert meta["volume_term"]["c"] != 0.0          # pressure-matched at 300 and 400 K: offset and trend
    # every CG run of the harness gave the model its state point's temperature (the TorchForce parameter):
    # the recorded energy of the last frame is U(R, T) at that T, not at the model's middle temperature
    for slug, temperature in (("450K_0.787gcm3", 450.0), ("300K_1bar", 300.0)):
        frames, _ = load_cg_frames(study / "models" / THERMAL / "report" / "state_points" / slug / "cg")
        pos, box = torch.tensor(frames["positions"][-1]), torch.tensor(frames["boxes"][-1])
        with torch.no_grad():
            at_run, at_middle = (float(module(pos, box, torch.tensor(t))) for t in (temperature, 350.0))
        assert frames["potential_energy"][-1] == pytest.approx(at_run, rel=1e-5, abs=1e-3)
        assert abs(at_run - at_middle) > 1e-2 * max(1.0, abs(at_run))
    growth = result["conclusion"]["thermal_growth"]
    assert growth["training_K"] == [300.0, 400.0] and growth["farthest_K"] == 450.0
    rows = {r["state"]: r for r in result["rows"] if r["model"] == THERMAL}
    expected = rows["450K:0.787g/cm3"]["rdf_mad"] / np.mean([rows[s]["rdf_mad"] for s in
                                                               ("300K:0.787g/cm3", "400K:0.787g/cm3")])
    assert growth["growth"] == pytest.approx(expected) and growth["growth_se"] > 0
    assert result["conclusion"]["thermal_claim"] in (-1, 0, 1)
    text = (study / "study.md").read_text()
    assert f"Temperature-aware model ({THERMAL}): RDF MAD grows {growth['growth']:.2f}" in text
    assert f"{THERMAL} (300K:0.787g/cm3, 400K:0.787g/cm3)" in text


def test_study_pieces_train_every_model_after_its_data(tmp_path):
    from openmm_cgnn.cluster import graph_width
    from openmm_cgnn.study import training_pieces

    cfg = StudyConfig.from_preset("small")
    pieces, models = training_pieces(cfg, tmp_path)
    needs = {p.key: set(p.needs()) for p in pieces}
    assert [m[0] for m in models] == [v.name for v in cfg.variants] + ["hipnn-ts-l2-multi", THERMAL, "pair-fm"]
    assert needs["data/300K:0.787g/cm3"] == needs["data/400K:0.787g/cm3"] == set()
    # the evaluation state points' references need nothing either: they run beside the trainings
    assert {k for k in needs if k.startswith("data/")} == {f"data/{s}" for s in cfg.eval_states + ["400K:0.787g/cm3"]}
    assert all(needs[f"data/{s}"] == set() for s in cfg.eval_states)
    for v in cfg.variants:
        assert needs[f"train/{v.name}"] == {"data/300K:0.787g/cm3"}
    assert needs["train/hipnn-ts-l2-multi"] == {"data/300K:0.787g/cm3", "data/400K:0.787g/cm3"}
    assert needs[f"train/{THERMAL}"] == {"data/300K:0.787g/cm3", "data/400K:0.787g/cm3"}
    # a distilled student waits for its teacher; without a teacher among the variants it is refused
    student = StudyConfig.from_preset("small")
    student.student_preset = "tiny"
    needs_student = {p.key: set(p.needs()) for p in training_pieces(student, tmp_path)[0]}
    assert needs_student[f"train/{STUDENT}"] == {"train/hipnn-ts-l2", "data/300K:0.787g/cm3"}
    student.variants = [v for v in student.variants if v.name != "hipnn-ts-l2"]
    with pytest.raises(ConfigError, match="student_preset needs the teacher"):
        training_pieces(student, tmp_path)
    # the pair baseline takes the first GNN's cutoff, so it waits for that model
    assert needs["train/pair-fm"] == {"data/300K:0.787g/cm3", f"train/{cfg.variants[0].name}"}
    assert graph_width(pieces) == len(cfg.variants) + 2          # every GNN trains at the same time
    assert not list(tmp_path.iterdir())                          # planning runs nothing
    # a study begun when the first model's comparison ran these references: the one it holds is not run again
    held = tmp_path / "models" / "hipnn-l0" / "report" / "state_points" / "500K_0.787gcm3" / "reference-cg.npz"
    held.parent.mkdir(parents=True)
    held.touch()
    keys = {p.key for p in training_pieces(cfg, tmp_path)[0]}
    assert "data/500K:0.787g/cm3" not in keys and "data/250K:0.787g/cm3" in keys


def _row(model, state, mad, se, trained=False, floor=0.02, floor_se=0.002):
    """A study row as run_transfer_study makes it (NVT, complete), with error bars."""
    return {"model": model, "trained_at": ["300K:0.787g/cm3"], "state": state, "ensemble": "NVT",
            "temperature_K": float(state.split("K")[0]), "in_training": trained, "status": "complete",
            "rdf_mad": mad, "rdf_mad_se": se, "rdf_mad_noise_floor": floor, "rdf_mad_noise_floor_se": floor_se,
            "rdf_peak_height_error": 0.0, "adf_l1": 0.01, "adf_l1_se": 0.001, "adf_l1_noise_floor": 0.005,
            "adf_l1_noise_floor_se": 0.001, "density_relative_error": None, "density_relative_error_se": None,
            "rdf_mad_relative_to_training": mad / 0.05, "rdf_mad_relative_to_training_se": None,
            "adf_l1_relative_to_training": None}


def _rows(gnn, pair, se=0.003, gnn_se=None):
    """hipnn-ts-l2 and pair-fm at the training point and two state points away from it."""
    rows = []
    for model, mad, s in (("hipnn-ts-l2", gnn, gnn_se if gnn_se is not None else se), ("pair-fm", pair, se)):
        rows.append(_row(model, "300K:0.787g/cm3", 0.05, s, trained=True))
        rows += [_row(model, "400K:0.787g/cm3", mad, s), _row(model, "500K:0.787g/cm3", mad, s)]
    return rows


def test_conclusion_states_a_difference_only_beyond_two_combined_sigma():
    cfg = StudyConfig.from_preset("full")
    # each mean over 2 state points has SE 0.003 / sqrt(2); combined sqrt(2) x that = 0.003: 2 sigma = 0.006
    inside = conclude(_rows(0.095, 0.100), cfg)
    assert inside["claim"] == 0
    assert "the data cannot tell whether the paper's claim holds" in inside["lines"][0]
    assert "0.0950 \u00b1 0.0021" in inside["lines"][0] and "-0.0050 \u00b1 0.0030" in inside["lines"][0]
    outside = conclude(_rows(0.093, 0.100), cfg)                   # 0.007 > 0.006
    assert outside["claim"] == -1 and "the paper's claim holds here" in outside["lines"][0]
    assert outside["gnn_to_pair_ratio"] == pytest.approx(0.93)
    assert "ratio 0.93 \u00b1 0.03" in outside["lines"][0]
    reverse = conclude(_rows(0.107, 0.100), cfg)
    assert reverse["claim"] == 1 and "the paper's claim does not hold here" in reverse["lines"][0]
    # per state point: 0.007 apart with SE 0.003 each (2 sigma = 0.0085): cannot tell at either
    assert "cannot tell at 400K:0.787g/cm3, 500K:0.787g/cm3" in outside["lines"][1]
    # no error bars (a study recorded before them): no verdict at all
    bare = _rows(0.05, 0.10)
    for r in bare:
        r["rdf_mad_se"] = None
    assert conclude(bare, cfg)["claim"] is None
    assert "cannot tell whether the paper's claim holds" in conclude(bare, cfg)["lines"][0]
    assert not any("claim holds here" in line for line in conclude(bare, cfg)["lines"])


def test_conclusion_calls_an_error_real_only_above_its_noise_floor():
    cfg = StudyConfig.from_preset("full")
    # floor 0.02 +- 0.002/sqrt(2) per mean; hipnn-ts-l2 0.024 +- 0.003/sqrt(2): 0.004 < 2 x 0.0025
    result = conclude(_rows(0.024, 0.100), cfg)
    gnn = next(line for line in result["lines"] if line.startswith("hipnn-ts-l2:"))
    pair = next(line for line in result["lines"] if line.startswith("pair-fm:"))
    assert "the data cannot tell it from sampling noise" in gnn
    assert "a real error" in pair
    assert result["per_model"]["hipnn-ts-l2"]["off_rdf_mad_above_floor"] == 0
    assert result["per_model"]["pair-fm"]["off_rdf_mad_above_floor"] == 1
    assert result["per_model"]["pair-fm"]["off_rdf_mad_noise_floor_mean"] == pytest.approx(0.02)
    assert result["per_model"]["pair-fm"]["off_rdf_mad_mean_se"] == pytest.approx(0.003 / 2 ** 0.5)


def _thermal_rows(far_mad, far_se, train_se=0.002, extra=()):
    """The temperature-aware model trained at 300 and 400 K (RDF MAD 0.05 each), tested at 250, 350 and
    500 K (the farthest: 100 K from 400 K) and at 500 K and 1 bar (NPT: not part of the growth)."""
    rows = [_row(THERMAL, "300K:0.787g/cm3", 0.05, train_se, trained=True),
            _row(THERMAL, "400K:0.787g/cm3", 0.05, train_se, trained=True),
            _row(THERMAL, "250K:0.787g/cm3", 0.2, 0.002), _row(THERMAL, "350K:0.787g/cm3", 0.2, 0.002),
            _row(THERMAL, "500K:0.787g/cm3", far_mad, far_se), {**_row(THERMAL, "500K:1bar", 0.9, 0.002),
                                                                 "ensemble": "NPT"}]
    rows += [_row(THERMAL, state, mad, se) for state, mad, se in extra]
    for r in rows:
        r["trained_at"] = ["300K:0.787g/cm3", "400K:0.787g/cm3"]
    return rows


def test_error_growth_is_stated_against_1_3_only_beyond_two_sigma():
    cfg = StudyConfig.from_preset("full")
    # training mean 0.05 +- sqrt(2) 0.002 / 2 = 0.00141 (relative 0.0283); by hand:
    # 0.055 +- 0.002 (rel. 0.0364): growth 1.10 +- 1.10 x hypot(0.0364, 0.0283) = 0.0507: 1.10 + 2 x 0.0507 < 1.3
    below = conclude(_thermal_rows(0.055, 0.002), cfg)
    growth = below["thermal_growth"]
    assert growth["growth"] == pytest.approx(1.1) and growth["growth_se"] == pytest.approx(0.0507, rel=2e-3)
    assert growth["farthest_K"] == 500.0 and growth["training_K"] == [300.0, 400.0]
    assert growth["training_rdf_mad_mean_se"] == pytest.approx(0.002 / 2 ** 0.5)
    assert below["thermal_claim"] == -1
    line = next(x for x in below["lines"] if x.startswith("Temperature-aware model"))
    assert "grows 1.10 \u00b1 0.05x" in line and "500 K" in line and "the target (<= 1.3x) holds here" in line
    assert "(300, 400 K; mean 0.0500 \u00b1 0.0014)" in line
    # 0.080 +- 0.002: 1.60 +- 1.6 x hypot(0.025, 0.0283) = 0.0604: 1.60 - 2 x 0.0604 > 1.3
    above = conclude(_thermal_rows(0.080, 0.002), cfg)
    assert above["thermal_growth"]["growth_se"] == pytest.approx(0.0604, rel=2e-3)
    assert above["thermal_claim"] == 1
    assert any("the target (<= 1.3x) fails here" in x for x in above["lines"])
    # 0.066 +- 0.004: 1.32 +- 1.32 x hypot(0.0606, 0.0283) = 0.0883: 1.3 is inside 2 sigma
    unsure = conclude(_thermal_rows(0.066, 0.004), cfg)
    assert unsure["thermal_growth"]["growth"] == pytest.approx(1.32)
    assert unsure["thermal_claim"] == 0
    assert any("the data cannot tell whether the target (<= 1.3x) holds" in x for x in unsure["lines"])
    assert not any("holds here" in x or "fails here" in x for x in unsure["lines"])
    # without error bars: no verdict
    bare = _thermal_rows(0.055, None)
    assert conclude(bare, cfg)["thermal_claim"] is None
    # two temperatures equally far (200 and 500 K): the larger growth counts
    tie = error_growth(_thermal_rows(0.055, 0.002, extra=[("200K:0.787g/cm3", 0.07, 0.002)]), THERMAL)
    assert tie["farthest_K"] == 200.0 and tie["growth"] == pytest.approx(1.4)
    # a training temperature that was not evaluated still counts for the distance: trained at 300 and 400 K,
    # evaluated at 300, 350 and 450 K: 450 K (50 K from 400 K) ties with 350 K, not "150 K from 300 K"
    partial = [r for r in _thermal_rows(0.055, 0.002, extra=[("450K:0.787g/cm3", 0.06, 0.002)])
               if r["state"] in ("300K:0.787g/cm3", "350K:0.787g/cm3", "450K:0.787g/cm3")]
    growth = error_growth(partial, THERMAL)
    assert growth["training_K"] == [300.0] and growth["training_not_evaluated_K"] == [400.0]
    assert growth["farthest_K"] == 350.0 and growth["growth"] == pytest.approx(4.0)     # 0.2 / 0.05 beats 0.06 / 0.05
    assert any("(300 K; also trained at 400 K, not evaluated there; mean" in x for x in conclude(partial, cfg)["lines"])
    # a run that blew up at the farthest temperature: no growth, and the line says why
    broken = _thermal_rows(0.055, 0.002)
    broken[4].update(status="blew_up", rdf_mad=None)
    result = conclude(broken, cfg)
    assert result["thermal_growth"]["growth"] is None and result["thermal_claim"] is None
    assert any("the run at 500K:0.787g/cm3 did not complete" in x for x in result["lines"])


def test_error_growth_is_given_for_every_model_and_compared_with_the_same_data_without_t():
    cfg = StudyConfig.from_preset("full")
    multi = [{**r, "model": "hipnn-ts-l2-multi"} for r in _thermal_rows(0.08, 0.002)]
    result = conclude(_thermal_rows(0.055, 0.002) + multi + _rows(0.093, 0.100), cfg)
    assert result["per_model"]["hipnn-ts-l2-multi"]["error_growth"]["growth"] == pytest.approx(1.6)
    # the single-temperature models: from 300 K to the farthest of 400 and 500 K
    assert result["per_model"]["pair-fm"]["error_growth"]["farthest_K"] == 500.0
    assert result["per_model"]["pair-fm"]["error_growth"]["growth"] == pytest.approx(2.0)
    line = next(x for x in result["lines"] if x.startswith("Temperature-aware model"))
    assert "without the temperature (hipnn-ts-l2-multi): 1.60 \u00b1 0.06x to 500 K" in line


def test_medium_preset_has_every_cpu_model_at_five_temperatures(tmp_path):
    from openmm_cgnn.study import _harness_config, training_pieces

    cfg = StudyConfig.from_preset("medium")
    assert cfg.preset == "medium" and cfg.n_molecules == 216 and cfg.train_preset == "fast"
    _, models = training_pieces(cfg, tmp_path)
    assert [m[0] for m in models] == ["hipnn-l0", "hipnn-ts-l1", "hipnn-ts-l2", "hipnn-ts-l2-multi", THERMAL,
                                      STUDENT, "pair-fm"]
    assert [s for s in cfg.eval_states if s.endswith("g/cm3")] == [
        f"{t}K:0.787g/cm3" for t in (250, 300, 350, 400, 500)]
    hc = _harness_config(cfg)
    hc.validate()
    assert hc.n_molecules == 216 and hc.cg.production == 50.0 and hc.reference.production == 100.0
    assert not list(tmp_path.iterdir())


def test_cli_runs_the_medium_preset(monkeypatch, tmp_path):
    import openmm_cgnn.study as study
    from openmm_cgnn.cli import main

    seen = {}
    monkeypatch.setattr(study, "run_transfer_study", lambda out, cfg, cluster=None: seen.update(out=out, cfg=cfg))
    assert main(["study", "transfer", "--preset", "medium", "--out", str(tmp_path / "s"), "--workers", "1"]) == 0
    assert seen["cfg"] == StudyConfig.from_preset("medium") and seen["out"] == str(tmp_path / "s")
    assert StudyConfig.from_preset("medium").variants is not StudyConfig.from_preset("medium").variants


def test_error_growth_says_when_its_errors_are_sampling_noise():
    cfg = StudyConfig.from_preset("full")
    # floors 0.02 +- 0.002 (_row): training errors 0.05 +- 0.002 are real, a far error of 0.024 +- 0.002 is not
    clear = conclude(_thermal_rows(0.055, 0.002), cfg)
    assert clear["thermal_growth"]["training_above_floor"] == 1 and clear["thermal_growth"]["farthest_above_floor"] == 1
    assert not any("sampling noise as much" in x for x in clear["lines"])
    noisy = conclude(_thermal_rows(0.024, 0.002), cfg)
    assert noisy["thermal_growth"]["farthest_above_floor"] == 0
    line = next(x for x in noisy["lines"] if x.startswith("Temperature-aware model"))
    assert "its error at 500 K is not above the noise floor by 2 sigma" in line


def test_student_is_within_its_target_only_beyond_two_sigma():
    """The student's off-training RDF MAD over its teacher's, against 1.2x: within only when ratio + 2 SE <= 1.2,
    beyond only when ratio - 2 SE > 1.2, otherwise the data cannot tell."""
    def verdict(student, se):
        rows = [_row("hipnn-ts-l2", "300K:0.787g/cm3", 0.05, 0.002, trained=True),
                _row("hipnn-ts-l2", "400K:0.787g/cm3", 0.10, 0.002),
                _row(STUDENT, "300K:0.787g/cm3", 0.05, 0.002, trained=True),
                _row(STUDENT, "400K:0.787g/cm3", student, se)]
        return conclude(rows, StudyConfig.from_preset("small"))["student"]

    assert verdict(0.105, 0.002)["verdict"] == 1
    assert verdict(0.105, 0.002)["ratio"] == pytest.approx(1.05)
    assert verdict(0.150, 0.002)["verdict"] == -1
    assert verdict(0.118, 0.004)["verdict"] == 0
    assert "cannot tell" in verdict(0.118, 0.004)["line"]
