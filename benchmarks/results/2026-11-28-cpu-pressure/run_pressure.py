"""Pressure-consistent CG on the CPU: methanol density at 1 bar from 250 to 330 K, with and without
the volume term, for a model trained at 300 K and 0.787 g/cm^3 (the demo's training state point).

Run from the repository root (minutes to an hour on 2 shared cores):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/results/2026-11-28-cpu-pressure/run_pressure.py WORKDIR [--without]

Every stage reuses what WORKDIR already holds. ``--without`` also runs the model without its volume
term at the first two state points; ``--extra-point=250K:1bar`` refits U_V with that all-atom
reference as a second pressure-matching point (terms a and c) and reruns the 1-bar points (or those of
``--two-point-states=300K:1bar,330K:1bar``). Writes pressure.json, pressure.md and density-1bar.png next to
this file.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(work: Path, without: bool = False, extra: str | None = None, two_states: list[str] | None = None) -> None:
    from openmm_cgnn.export import export_model
    from openmm_cgnn.harness import HarnessConfig, compare, load_report
    from openmm_cgnn.mapping import map_reference
    from openmm_cgnn.reference import ReferenceConfig, run_reference
    from openmm_cgnn.training import TrainConfig, fit_model_volume_term, train
    from openmm_cgnn.volume import VolumeTermParams, describe

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    aa, cg = work / "train-aa.npz", work / "train-cg.npz"
    # the demo's training data: 125 methanol, NVT 300 K, 0.787 g/cm^3, 10 + 24 ps, a frame every 0.2 ps
    if not aa.exists():
        run_reference(ReferenceConfig(species="methanol", n_molecules=125, temperature=300.0, density=0.787,
                                      cutoff=0.9, equilibration=10.0, production=24.0, frame_interval=0.2,
                                      platform="CPU"), aa)
    if not cg.exists():
        map_reference(aa, cg)
    model_dir = work / "model"
    if not (model_dir / "metadata.json").exists():
        tc = TrainConfig.from_preset("tiny")
        tc.max_epochs = 8
        train([cg], tc, model_dir, overwrite=True)
    with_v, without_v = work / "model.pt", work / "model-no-volume.pt"
    # the tiny preset fits U_V on the mapped frames; keep that fit for the record and refit from a CG NVT run
    if not (model_dir / "volume-mapped.json").exists():
        shutil.copy(model_dir / "volume.json", model_dir / "volume-mapped.json")
    if not VolumeTermParams.load(model_dir / "volume.json").fit.get("cg_pressure_from", "").startswith("CG NVT"):
        cfg = TrainConfig.from_toml(model_dir / "config.toml")
        cfg.volume_source, cfg.volume_nvt_ps, cfg.volume_nvt_equilibration_ps = "cg-nvt", 10.0, 2.0
        fit_model_volume_term(model_dir, [cg], cfg)
        with_v.unlink(missing_ok=True)
    if not with_v.exists():
        export_model(model_dir, with_v)
    if not without_v.exists():
        plain = work / "model-no-volume"
        if plain.exists():
            shutil.rmtree(plain)
        shutil.copytree(model_dir, plain)
        (plain / "volume.json").unlink()
        export_model(plain, without_v)
    volume = VolumeTermParams.load(model_dir / "volume.json")

    hc = HarnessConfig.from_preset("default", n_molecules=125, adf_shell_cutoff=0.6, platform="CPU")
    points = ["300K:0.787g/cm3", "300K:1bar", "250K:1bar", "270K:1bar", "330K:1bar"]
    if (work / "report-volume" / "report.json").exists():
        rep_v = load_report(work / "report-volume")
    else:
        rep_v = compare(with_v, points, work / "report-volume", hc, reference_datasets=[cg], overwrite=True)
    shutil.copy(work / "report-volume" / "density.png", HERE / "density-1bar.png")
    rep_0 = None
    if without:   # the same model without U_V at the training point and at 300 K, 1 bar
        mapped = [work / "report-volume" / "state_points" / s["slug"] / "reference-cg.npz"
                  for s in rep_v["state_points"][1:2]]
        rep_0 = compare(without_v, points[:2], work / "report-no-volume", hc, reference_datasets=[cg, *mapped],
                        overwrite=True)

    def rows(report):
        out = []
        for s in report["state_points"]:
            out.append({"label": s["label"], "status": s["status"], "density": s["density"], "pressure": s["pressure"],
                        "rdf_mad": s["rdf"]["mad"], "adf_l1": s["adf"]["l1"]})
        return out

    rep_2, two = None, None
    if extra:   # a second pressure-matching state point (an NPT all-atom reference at 1 bar): fits a and c
        slug = next(s["slug"] for s in rep_v["state_points"] if s["label"] == extra)
        two_dir, two_pt = work / "model-2pt", work / "model-2pt.pt"
        if not (two_dir / "volume.json").exists() or len(VolumeTermParams.load(two_dir / "volume.json").fit["points"]) < 2:
            if two_dir.exists():
                shutil.rmtree(two_dir)
            shutil.copytree(model_dir, two_dir)
            cfg = TrainConfig.from_toml(two_dir / "config.toml")
            cfg.volume_source, cfg.volume_nvt_ps, cfg.volume_nvt_equilibration_ps = "cg-nvt", 10.0, 2.0
            fit_model_volume_term(two_dir, [cg, work / "report-volume" / "state_points" / slug / "reference-cg.npz"],
                                  cfg)
            two_pt.unlink(missing_ok=True)
        if not two_pt.exists():
            export_model(two_dir, two_pt)
        two = VolumeTermParams.load(two_dir / "volume.json")
        refs = [work / "report-volume" / "state_points" / s["slug"] / "reference-cg.npz" for s in rep_v["state_points"][1:]]
        if (work / "report-2pt" / "report.json").exists():
            rep_2 = load_report(work / "report-2pt")
        else:
            rep_2 = compare(two_pt, two_states or points[1:], work / "report-2pt", hc, reference_datasets=refs,
                            overwrite=True)
        shutil.copy(work / "report-2pt" / "density.png", HERE / "density-1bar-two-points.png")

    result = {
        "date": time.strftime("%Y-%m-%d"), "device": rep_v["device"], "platform": rep_v["platform"],
        "note": "2 CPU cores shared with other jobs; 125 methanol; tiny HIP-NN-TS, 8 epochs; harness preset "
                "'default' (all-atom 10 + 50 ps, CG 5 + 30 ps per state point)",
        "volume_term": volume.to_dict(), "volume_term_summary": describe(volume),
        "volume_term_from_mapped_frames": VolumeTermParams.load(model_dir / "volume-mapped.json").to_dict(),
        "with_volume_term": rows(rep_v), "without_volume_term": rows(rep_0) if rep_0 else [],
        "two_point_volume_term": two.to_dict() if two else None,
        "two_point_volume_term_summary": describe(two) if two else None,
        "with_two_point_volume_term": rows(rep_2) if rep_2 else [],
        "minutes": (time.perf_counter() - started) / 60.0,
        "harness_minutes": rep_v["timing_s"]["total"] / 60.0,
    }
    (HERE / "pressure.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (HERE / "pressure.md").write_text(markdown(result))
    print(markdown(result))


def _pm(m, se, spec):
    if m is None:
        return "\u2014"
    return format(m, spec) + (f" \u00b1 {format(se, spec.replace('+', ''))}" if se is not None else "")


def markdown(result: dict) -> str:
    lines = [f"# Pressure-consistent CG methanol on the CPU ({result['date']})", "",
             result["note"] + ".", "", f"Volume term: {result['volume_term_summary']}.", "",
             "| model | state point | density AA (g/cm^3) | density CG (g/cm^3) | error (%) | P AA (bar) | P CG (bar) "
             "| RDF MAD |", "|---|---|---|---|---|---|---|---|"]
    if result.get("two_point_volume_term_summary"):
        lines[4:4] = [f"Two-point volume term: {result['two_point_volume_term_summary']}.", ""]
    for name, key in (("U_V from 300 K", "with_volume_term"), ("no U_V", "without_volume_term"),
                      ("U_V from 300 K + 250 K", "with_two_point_volume_term")):
        for r in result[key]:
            d, p = r["density"], r["pressure"]
            err = ("\u2014" if d["relative_error"] is None else
                   _pm(100 * d["relative_error"], None if d["relative_error_se"] is None
                       else 100 * d["relative_error_se"], "+.2f"))
            lines.append(f"| {name} | {r['label']} ({r['status']}) | {_pm(d['ref_mean'], d['ref_se'], '.4f')} | "
                         f"{_pm(d['cg_mean'], d['cg_se'], '.4f') if not d['fixed'] else '(fixed)'} | {err} | "
                         f"{_pm(p['ref_mean'], p['ref_se'], '.0f')} | {_pm(p['cg_mean'], p['cg_se'], '.0f')} | "
                         f"{'—' if r['rdf_mad'] is None else format(r['rdf_mad'], '.4f')} |")
    lines += ["", f"Harness time {result['harness_minutes']:.0f} min (this script's last run: "
              f"{result['minutes']:.0f} min).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    extra = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--extra-point=")), None)
    states = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--two-point-states=")), None)
    main(Path(args[0] if args else "pressure-work"), without="--without" in sys.argv, extra=extra, two_states=states)
