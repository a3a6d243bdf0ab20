"""The transferability study runs end to end at toy size and writes its table, plots and conclusion."""

import json

import matplotlib.image as mpimg
import pytest

from openmm_cgnn.study import StudyConfig, run_transfer_study


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
