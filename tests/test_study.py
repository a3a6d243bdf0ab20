"""The transferability study runs end to end at toy size and writes its table, plots and conclusion."""

import json

import matplotlib.image as mpimg
import pytest

from openmm_cgnn.study import StudyConfig, conclude, run_transfer_study


@pytest.mark.slow
def test_toy_study_writes_rows_for_every_model_and_state(tmp_path):
    cfg = StudyConfig.from_preset("toy")
    result = run_transfer_study(tmp_path / "study", cfg, progress=False)
    models = {r["model"] for r in result["rows"]}
    assert models == {"hipnn-ts-l2", "pair-fm"}
    assert len(result["rows"]) == 2 * len(cfg.eval_states)
    trained = [r for r in result["rows"] if r["in_training"]]
    assert {r["state"] for r in trained} == {"300K:0.787g/cm3"}
    for r in result["rows"]:
        if r["status"] == "complete":
            assert r["rdf_mad"] is not None and r["rdf_mad"] >= 0
            if r["in_training"]:
                assert r["rdf_mad_relative_to_training"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["conclusion"]["lines"] and "per_model" in saved["conclusion"]
    for name in ("rdf_mad_vs_T.png", "adf_l1_vs_T.png", "relative_error.png"):
        assert mpimg.imread(tmp_path / "study" / name).shape[0] > 100
    assert "![RDF MAD vs T](rdf_mad_vs_T.png)" in (tmp_path / "study" / "study.md").read_text()
    # each all-atom reference ran once: the first model's comparison ran those no training data set covers,
    # the pair baseline's used them
    sources = {m: [sp["reference"]["source"] for sp in json.loads(
        (tmp_path / "study" / "models" / m / "report" / "report.json").read_text())["state_points"]]
        for m in ("hipnn-ts-l2", "pair-fm")}
    assert sources == {"hipnn-ts-l2": ["given", "computed", "computed"], "pair-fm": ["given", "given", "given"]}
    assert not (tmp_path / "study" / "models" / "pair-fm" / "report" / "state_points" / "400K_0.787gcm3"
                / "reference-aa.npz").exists()


def test_study_pieces_train_every_model_after_its_data(tmp_path):
    from openmm_cgnn.cluster import graph_width
    from openmm_cgnn.study import training_pieces

    cfg = StudyConfig.from_preset("small")
    pieces, models = training_pieces(cfg, tmp_path)
    needs = {p.key: set(p.needs()) for p in pieces}
    assert [m[0] for m in models] == [v.name for v in cfg.variants] + ["hipnn-ts-l2-multi", "pair-fm"]
    assert needs["data/300K:0.787g/cm3"] == needs["data/400K:0.787g/cm3"] == set()
    for v in cfg.variants:
        assert needs[f"train/{v.name}"] == {"data/300K:0.787g/cm3"}
    assert needs["train/hipnn-ts-l2-multi"] == {"data/300K:0.787g/cm3", "data/400K:0.787g/cm3"}
    # the pair baseline takes the first GNN's cutoff, so it waits for that model
    assert needs["train/pair-fm"] == {"data/300K:0.787g/cm3", f"train/{cfg.variants[0].name}"}
    assert graph_width(pieces) == len(cfg.variants) + 1          # every GNN trains at the same time
    assert not list(tmp_path.iterdir())                          # planning runs nothing


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
