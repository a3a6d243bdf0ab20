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
