"""openmm-cgnn benchmarks: one entry point.

    python benchmarks/run.py                 # --quick: minutes on a laptop CPU (also `make bench`)
    python benchmarks/run.py --full          # large sizes, meant for a GPU
    python benchmarks/run.py --only throughput scaling --platform CPU --budget 120

Benchmarks (``--only`` names):

* ``throughput``  CG vs all-atom ns/day at the same number of molecules; CG time step from the
  NVE energy drift at 2, 4, 5 fs on a small system.
* ``overhead``    OpenMM step with only the TorchForce vs the bare model forward+backward in PyTorch.
* ``scaling``     CG (and all-atom) step time vs size; log-log exponent.
* ``precision``   float32 vs float64 export; CUDA graphs on/off (CUDA only).
* ``training``    training throughput (frames/s) of the tiny, fast and paper presets.
* ``profile``     where a CG force evaluation spends its time.
* ``mts``         multiple time stepping: largest stable outer step (NVE drift), speed against one
  time step, RDF MAD against single-step runs.

The speed models are the "tiny", "fast" (the distillation student) and "paper" presets trained for one epoch on synthetic lattice
frames (speed does not depend on the weights; ``--model-dir`` uses a trained model instead).
Each benchmark prints its JSON and a Markdown table; all of them go to
``<out>/<date>-<device>-<mode>.json`` and ``.md`` (written atomically; benchmarks of an earlier run
with the same date, device and mode that this run did not repeat are kept).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

_HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    # run as a script: import the ``benchmarks`` package from the repository root, and keep this
    # folder off sys.path (its module names must not shadow anything)
    if sys.path and Path(sys.path[0]).resolve() == _HERE:
        sys.path.pop(0)
    sys.path.insert(0, str(_HERE.parent))

from benchmarks import _common as C  # noqa: E402
from benchmarks import cg_profile, overhead, precision, scaling, throughput, training_speed  # noqa: E402
from benchmarks import mts  # noqa: E402

BENCHMARKS = {
    "throughput": throughput,
    "overhead": overhead,
    "scaling": scaling,
    "precision": precision,
    "training": training_speed,
    "profile": cg_profile,
    "mts": mts,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, a few CPU minutes (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="large sizes (512-32768 beads, 4096-molecule comparison); meant for a GPU")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny sizes, every benchmark once (the test suite's check)")
    p.set_defaults(mode="quick")
    p.add_argument("--platform", default=None,
                   help="OpenMM platform (CUDA, CPU, OpenCL, Reference); default: CUDA when it works, else CPU")
    p.add_argument("--out", default=str(_HERE / "results"), help="results folder (default: benchmarks/results)")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only these benchmarks: {', '.join(BENCHMARKS)}")
    p.add_argument("--budget", type=float, default=None,
                   help="wall-time budget per benchmark, s (quick 180, full 90; throughput gets 1.75x for its drift "
                        "runs): sizes predicted not to fit are skipped and recorded as such")
    p.add_argument("--total-budget", type=float, default=None,
                   help="wall-time budget of the whole run, s (after the models are trained): each benchmark "
                        "gets at most its share of what is left, e.g. 480 for a 10-minute GPU window")
    p.add_argument("--archs", nargs="+", choices=["tiny", "fast", "paper"], default=None,
                   help="network sizes to benchmark (TrainConfig presets; default: tiny, fast and paper)")
    p.add_argument("--model-dir", default=None,
                   help="benchmark this trained model directory instead of 1-epoch tiny/fast/paper models")
    p.add_argument("--workdir", default=None,
                   help="keep the benchmark models and data here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and OpenMM's CPU platform (default: their own defaults)")
    p.add_argument("--no-save", action="store_true", help="print only; write no result files")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    settings = C.Settings.from_preset(args.mode)
    if args.archs:
        settings.archs = list(args.archs)
    budget = args.budget if args.budget is not None else settings.budget_s

    import openmm

    from openmm_cgnn.files import versions, write_json_atomic, write_text_atomic
    from openmm_cgnn.reference import choose_platform

    platform = choose_platform(args.platform)
    device = C.torch_device(platform.getName())
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            device = "cpu"  # OpenMM CUDA without torch CUDA: openmm-torch would fail; say so below
    restore: list = []
    if args.threads:
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        restore.append(lambda: torch.set_num_threads(old_threads))
        if platform.getName() == "CPU":
            old_default = platform.getPropertyDefaultValue("Threads")
            platform.setPropertyDefaultValue("Threads", str(args.threads))
            restore.append(lambda: platform.setPropertyDefaultValue("Threads", old_default))
    info = C.describe_device(platform.getName())
    if platform.getName() == "CPU":
        info["openmm_cpu_threads"] = platform.getPropertyDefaultValue("Threads")
    names = list(args.only) if args.only else list(BENCHMARKS)
    workdir, cleanup = C.new_workdir(args.workdir)
    models = C.Models(workdir, settings, device, args.model_dir, keep=args.workdir is not None)
    ctx = C.BenchmarkContext(settings=settings, platform=platform, device=device, models=models, budget_s=budget, log=log)
    log(f"[bench] {args.mode}: {', '.join(names)} on {info['device']} (OpenMM {platform.getName()}, "
        f"torch {device}); budget {budget:.0f} s per benchmark")

    results: dict[str, Any] = {
        "format": C.RESULTS_FORMAT, "version": C.RESULTS_VERSION, "mode": args.mode, "date": C.today(),
        "started": C.now(), "command": " ".join(["benchmarks/run.py"] + list(argv if argv is not None else sys.argv[1:])),
        "device": info, "platform": platform.getName(), "openmm_platform_speed": platform.getSpeed(),
        "torch_device": device, "versions": versions(), "openmm_version": openmm.__version__,
        "load_average_start": C.load_average(), "budget_s_per_benchmark": budget,
        "total_budget_s": args.total_budget,
        "settings": C.json_default(settings), "benchmarks": {},
    }
    try:
        if any(n != "training" for n in names):
            t = time.perf_counter()
            for arch in models.archs:  # train and export before any budget starts ticking
                log(f"[bench] preparing the {arch} model (1 epoch on synthetic frames, export)")
                try:
                    models.get(arch).metadata()
                except Exception as exc:  # noqa: BLE001 - the benchmarks record it per model
                    log(f"[bench] the {arch} model could not be prepared: {C.short_error(exc)}")
            results["models_prep_s"] = time.perf_counter() - t
        t_total = time.perf_counter()
        ctx.shared["strict_budget"] = args.total_budget is not None
        for k, name in enumerate(names):
            mod = BENCHMARKS[name]
            if args.total_budget is not None:
                left = args.total_budget - (time.perf_counter() - t_total)
                ctx.budget_s = max(0.0, min(budget, left / (len(names) - k)))
            t = time.perf_counter()
            load0 = C.load_average()
            try:
                res = mod.run(ctx)
                entry = {"status": "ok", **res}
            except Exception as exc:  # noqa: BLE001 - one failing benchmark must not lose the others
                entry = {"status": "failed", "error": C.short_error(exc, 2000),
                         "traceback": traceback.format_exc(limit=8)}
                log(f"[bench] {name} failed: {C.short_error(exc)}")
            entry.update(name=name, date=C.now(), command=results["command"], seconds=time.perf_counter() - t,
                         budget_s=ctx.budget_s,
                         load_average_before=load0, load_average_after=C.load_average(),
                         platform=platform.getName(), device=info["device"])
            results["benchmarks"][name] = entry
            table = _markdown(name, entry)
            print(f"\n## {name}\n\n```json\n{C.to_json(_trim(entry))}\n```\n\n{table}\n", flush=True)
        results["models"] = models.summary()
        results["seconds"] = time.perf_counter() - t_start
        results["load_average_end"] = C.load_average()
        if not args.no_save:
            json_path, md_path = C.results_paths(Path(args.out), info["slug"], args.mode, results["date"])
            results = C.merge_results(json_path, results)
            write_json_atomic(json_path, results)
            write_text_atomic(md_path, report(results))
            results["files"] = {"json": str(json_path), "markdown": str(md_path)}
            log(f"[bench] wrote {json_path} and {md_path} ({results['seconds']:.0f} s)")
    finally:
        cleanup()
        for undo in restore:
            undo()
    return results


def _trim(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without the bulky per-chunk timings (they stay in the JSON file)."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("openmm_runs", "torch_runs", "traceback")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(entry)


def _markdown(name: str, entry: dict[str, Any]) -> str:
    if entry.get("status") != "ok":
        return f"### {name}\n\n{entry.get('status')}: {entry.get('error', '')}"
    try:
        return BENCHMARKS[name].markdown(entry)
    except Exception as exc:  # noqa: BLE001
        return f"### {name}\n\n(no table: {C.short_error(exc)})"


def report(results: dict[str, Any]) -> str:
    """The Markdown report of a results dictionary."""
    dev = results["device"]
    v = results.get("versions", {})
    lines = [f"# openmm-cgnn benchmarks ({results['mode']}, {results['date']})", "",
             f"- device: {dev['device']}; OpenMM platform {results['platform']}; torch device "
             f"{results.get('torch_device')}; torch threads {dev.get('torch_threads')}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
             f"- command: `{results.get('command')}`; budget {results.get('budget_s_per_benchmark'):.0f} s per "
             f"benchmark; load average at start {results.get('load_average_start')}",
             ""]
    models = results.get("models", {})
    if models:
        rows = [[a, m.get("preset"), m.get("tensor_order"), m.get("n_features"), m.get("n_sensitivities"),
                 m.get("network_cutoff_nm"), m.get("trained_on", m.get("source"))] for a, m in models.items()]
        lines += ["Models (speed does not depend on the weights):", "",
                  C.md_table(["model", "preset", "l", "features", "sensitivities", "cutoff nm", "weights"], rows), ""]
    benches = results.get("benchmarks", {})
    for name in sorted(benches, key=C.benchmark_order_key):  # the JSON file stores them sorted by name
        entry = benches[name]
        lines += [_markdown(name, entry), "",
                  f"_{name}: {entry.get('seconds', 0):.0f} s, {entry.get('date')}, `{entry.get('command')}`, "
                  f"load average {entry.get('load_average_before')} -> {entry.get('load_average_after')}_", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
