"""Smoke test of the benchmark suite: every benchmark runs once at tiny size and writes its results.

No speed target is asserted (the numbers depend on the machine); only that each benchmark runs, its
results have the documented shape, and the JSON and Markdown files are written.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import run as bench


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.main(["--smoke", "--platform", "CPU", "--threads", "1", "--out", str(out), "--quiet"])
    return out, results


def test_every_benchmark_runs(smoke):
    _, results = smoke
    assert list(results["benchmarks"]) == list(bench.BENCHMARKS)
    for name, entry in results["benchmarks"].items():
        assert entry["status"] == "ok", (name, entry.get("error"), entry.get("traceback"))
        assert entry["platform"] == "CPU" and entry["seconds"] >= 0


def test_results_are_recorded(smoke):
    out, results = smoke
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith("-smoke.json") and files[1].endswith("-smoke.md")
    saved = json.loads((out / files[0]).read_text())
    assert saved["mode"] == "smoke" and saved["platform"] == "CPU"
    for key in ("device", "versions", "date", "command", "settings", "models"):
        assert saved[key], key
    assert "openmm" in saved["versions"] and "torch" in saved["versions"]
    assert saved["device"]["device"] and saved["device"]["slug"] in files[0]
    md = (out / files[1]).read_text()
    for heading in ("CG vs all-atom throughput", "TorchForce overhead", "Scaling", "Precision",
                    "Training throughput", "Profile", "Multiple time stepping"):
        assert heading in md, heading
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_measurements_have_their_fields(smoke):
    b = smoke[1]["benchmarks"]
    row = b["throughput"]["rows"][0]
    assert row["aa"]["status"] == "ok" and row["aa"]["ns_per_day"] > 0
    assert row["cg_tiny"]["status"] == "ok" and row["cg_tiny"]["ns_per_day"] > 0
    assert row["cg_tiny"]["speedup_vs_aa"] > 0
    drift = b["throughput"]["drift"]["tiny"]
    assert drift["chosen_timestep_fs"] in (2.0, 4.0)
    assert all(math.isfinite(r["drift_kT_per_ns_per_dof"]) for r in drift["rows"] if r["status"] == "ok")

    ov = b["overhead"]["rows"][0]
    assert ov["status"] == "ok" and ov["ratio"] > 0

    fits = b["scaling"]["fits"]
    assert fits["cg_tiny"] is not None and math.isfinite(fits["cg_tiny"]["exponent"])

    prec = b["precision"]["rows"][0]
    assert prec["float32"]["status"] == "ok" and prec["float64"]["status"] == "ok"
    assert prec["accuracy"]["force_max_rel_diff"] < 1e-3
    assert prec["cuda_graphs_on"]["status"] == "skipped: no CUDA"

    tr = b["training"]["rows"][0]
    assert tr["status"] == "ok" and tr["frames_per_s"] > 0

    prof = b["profile"]["models"]["tiny"]
    assert prof["status"] == "ok"
    assert set(prof["coarse"]) >= {"neighbour_list_s", "forward_s", "backward_s"}
    assert prof["profiler_top_ops"]

    mts = b["mts"]["models"]["tiny"]
    first = mts["drift"]["rows"][0]
    assert (first["substeps"], first["status"]) == (1, "ok") and math.isfinite(first["drift_kT_per_ns_per_dof"])
    assert mts["mts"]["substeps"] > 1  # the chosen setting, or the smallest tested when none passed
    assert mts["speed"]["mts"]["ns_per_day"] > 0 and mts["speed"]["single"]["ns_per_day"] > 0
    assert mts["structure"]["mad_single_vs_single"]["mad"] >= 0 and mts["structure"]["mad_mts_vs_single"]["se"] >= 0


def test_budget_skips_instead_of_running(tmp_path):
    """With no time left every size is recorded as skipped, and the run still writes its files."""
    results = bench.main(["--smoke", "--platform", "CPU", "--out", str(tmp_path), "--quiet",
                          "--only", "scaling", "--budget", "0", "--threads", "1"])
    series = results["benchmarks"]["scaling"]["series"]
    assert all(r["status"].startswith("skipped") for rows in series.values() for r in rows)
    assert (tmp_path / results["files"]["json"].split("/")[-1]).exists()


def test_student_against_teacher_compares_rows_where_both_ran():
    """The `fast` student's speed-up over the `paper` teacher, per size: step-time ratio against the 5x target,
    ns/day ratio at each model's own time step; sizes where one of them did not run are left out."""
    from benchmarks.throughput import markdown, student_vs_teacher

    rows = [{"n_molecules": 64, "aa": {"status": "ok", "ns_per_day": 1.0},
             "cg_fast": {"status": "skipped: box"}, "cg_paper": {"status": "ok", "step_s": 0.1, "ns_per_day": 3.0}},
            {"n_molecules": 512, "aa": {"status": "ok", "ns_per_day": 1.0},
             "cg_fast": {"status": "ok", "step_s": 0.01, "ns_per_day": 40.0, "ns_per_day_at_2fs": 17.0},
             "cg_paper": {"status": "ok", "step_s": 0.06, "ns_per_day": 8.0, "ns_per_day_at_2fs": 3.0}}]
    result = student_vs_teacher(rows)
    assert [r["n_molecules"] for r in result] == [512]
    assert result[0]["step_time_ratio"] == pytest.approx(6.0) and result[0]["met"]
    assert result[0]["ns_per_day_ratio"] == pytest.approx(5.0)
    rows[1]["cg_fast"]["step_s"] = 0.02
    assert not student_vs_teacher(rows)[0]["met"]
    text = markdown({"archs": [], "rows": [], "drift": {}, "cg_timestep_fs": {}, "target_check": {},
                     "student_vs_teacher": result})
    assert "`fast` student against the `paper` teacher" in text
