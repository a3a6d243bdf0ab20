"""Training speed and profile: frames/s of one force-matching step for the tiny, fast and paper presets,
with the forces written out explicitly (``force_mode = "explicit"``) and by autograd, each frame's pairs
cached once (what ``train()`` does) or found by hippynn's per-batch pair search, measured side by side
(interleaved) in one process; plus a torch.profiler table of one paper-preset step per variant.

    python benchmarks/training_profile.py                       # CPU, a few minutes
    python benchmarks/training_profile.py --device cuda --batches paper=1,8,32

Writes ``<out>/<date>-<device>-training-profile.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    if sys.path and Path(sys.path[0]).resolve() == _HERE:
        sys.path.pop(0)
    sys.path.insert(0, str(_HERE.parent))

from benchmarks import _common as C  # noqa: E402


def _batch(preset: str, n_frames: int):
    from openmm_cgnn.training import TrainConfig

    cfg = TrainConfig.from_preset(preset)
    n = C.min_beads_for_cutoff(cfg.cutoff_nm)
    n = math.ceil(n ** (1.0 / 3.0) - 1e-9) ** 3
    return cfg, C.synthetic_frames(n, n_frames, seed=2)


#: (force_mode, cache_pairs) of each timed variant
VARIANTS = (("explicit", True), ("autograd", True), ("autograd", False))


def _variant_label(cfg, force_mode: str, cache: bool) -> str:
    return f"{force_mode}, " + ("pairs cached" if cache else f"pairs per batch ({cfg.pair_finder})")


def time_steps(preset: str, n_frames: int, device: str, repeats: int,
               variants=VARIANTS) -> list[dict[str, Any]]:
    """Median step time of each variant (force mode, pair cache), the variants interleaved."""
    import torch

    from openmm_cgnn.training import TrainingStep

    cfg, ds = _batch(preset, n_frames)
    steps = {}
    for variant in variants:
        c = type(cfg).from_toml(cfg.to_toml())
        c.force_mode, c.cache_pairs = variant
        torch.manual_seed(0)
        steps[variant] = TrainingStep(c, ds, device=device)
        steps[variant].step()  # warm-up
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:  # interleaved: contention hits all alike
            t = time.perf_counter()
            steps[variant].step()
            times[variant].append(time.perf_counter() - t)
    rows = []
    for variant in variants:
        force_mode, cache = variant
        med = statistics.median(times[variant])
        rows.append({"preset": preset, "beads": ds.n_beads, "batch": n_frames, "forces": force_mode,
                     "pairs": "cached once" if cache else f"per batch ({cfg.pair_finder})",
                     "step_s": med, "frames_per_s": n_frames / med, "steps_timed": len(times[variant]),
                     "step_times_s": times[variant],
                     "pair_cache_s_per_frame": steps[variant].pair_seconds / n_frames if cache else None,
                     "n_features": cfg.n_features, "n_sensitivities": cfg.n_sensitivities,
                     "cutoff_angstrom": cfg.dist_hard_max})
    base = next((r for r in rows if r["forces"] == "autograd" and r["pairs"] == "cached once"), None)
    for r in rows:
        r["speedup_vs_autograd_cached"] = base["step_s"] / r["step_s"] if base else None
    return rows


def profile_step(preset: str, n_frames: int, device: str, cache: bool, top: int = 12,
                 force_mode: str = "autograd") -> dict[str, Any]:
    """torch.profiler operator table (self time) of one training step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from openmm_cgnn.training import TrainingStep

    cfg, ds = _batch(preset, n_frames)
    cfg.cache_pairs = cache
    cfg.force_mode = force_mode
    torch.manual_seed(0)
    step = TrainingStep(cfg, ds, device=device)
    step.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts, record_shapes=True) as prof:
        t = time.perf_counter()
        step.step()
        wall = time.perf_counter() - t
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"preset": preset, "batch": n_frames, "cached_pairs": cache, "forces": force_mode, "wall_s": wall,
            "beads": ds.n_beads,
            "self_cpu_total_ms": total / 1e3,
            "top_ops": [{"op": e.key, "shapes": str(e.input_shapes)[:90], "calls": e.count,
                         "self_cpu_ms": e.self_cpu_time_total / 1e3,
                         "fraction": e.self_cpu_time_total / total if total else float("nan")} for e in rows]}


def markdown(res: dict[str, Any]) -> str:
    out = ["## Training speed (one force-matching step: forward, forces, loss, backward, Adam)", "",
           f"_{res['device']['device']}, torch threads {res['device']['torch_threads']}, {res['date']}, "
           f"load average {res['load_before']} -> {res['load_after']}; the variants of each row group ran "
           f"interleaved in one process_", "",
           "Forces: `explicit` writes the one-block network's forces out by hand (one backward pass for the loss); "
           "`autograd` differentiates the energy with `create_graph` (a double backward).", ""]
    out.append(C.md_table(["preset", "beads", "batch", "forces", "pairs", "step (ms)", "frames/s", "speed-up"],
                          [[r["preset"], r["beads"], r["batch"], r.get("forces", "autograd"), r["pairs"],
                            r["step_s"] * 1e3, r["frames_per_s"],
                            f"{r['speedup_vs_autograd_cached']:.2f}x" if r.get("speedup_vs_autograd_cached") else ""]
                           for r in res["rows"]]))
    out += ["", "speed-up: the step time of autograd forces with cached pairs over the row's."]
    for p in res["profiles"]:
        out += ["", f"### Profile: {p['preset']}, {p['beads']} beads, batch {p['batch']}, "
                    f"forces {p.get('forces', 'autograd')}, "
                    f"{'cached pairs' if p['cached_pairs'] else 'per-batch pair search'} "
                    f"(step {p['wall_s'] * 1e3:.0f} ms under the profiler)", "",
                C.md_table(["operator", "input shapes", "calls", "self CPU (ms)", "share"],
                           [[o["op"], o["shapes"].replace("|", "/"), o["calls"], o["self_cpu_ms"],
                             f"{100 * o['fraction']:.1f} %"] for o in p["top_ops"]])]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batches", nargs="+", default=["tiny=2,8", "fast=1,4", "paper=1,2"],
                   help="preset=batch,batch,... (default: tiny=2,8 fast=1,4 paper=1,2)")
    p.add_argument("--explicit-batches", nargs="*", default=["paper=8"],
                   help="preset=batch,... timed with explicit forces only (autograd is too slow there on a CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", default="paper=1", help="preset=batch of the profiled step ('' for none)")
    p.add_argument("--note", default="", help="a note for the results (e.g. 'contended 2-core CPU')")
    p.add_argument("--out", default=str(_HERE / "results"))
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"format": "openmm-cgnn/training-profile", "date": C.now(), "note": args.note,
                           "device": C.describe_device("CUDA" if args.device.startswith("cuda") else "CPU"),
                           "load_before": C.load_average(), "rows": [], "profiles": []}
    specs = [(spec, VARIANTS) for spec in args.batches] + [(spec, VARIANTS[:1]) for spec in args.explicit_batches]
    for spec, variants in specs:
        preset, sizes = spec.split("=")
        for b in (int(x) for x in sizes.split(",")):
            rows = time_steps(preset, b, args.device, args.repeats, variants)
            res["rows"] += rows
            for r in rows:
                print(f"{preset:6s} {r['beads']:5d} beads batch {b:3d} {r['forces']:8s} {r['pairs']:22s} "
                      f"{r['step_s'] * 1e3:9.1f} ms  {r['frames_per_s']:8.3g} frames/s", flush=True)
    if args.profile:
        preset, b = args.profile.split("=")
        for force_mode, cache in VARIANTS:
            res["profiles"].append(profile_step(preset, int(b), args.device, cache, force_mode=force_mode))
    res["load_after"] = C.load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{C.today()}-{res['device']['slug']}-training-profile"
    from openmm_cgnn.files import write_json_atomic, write_text_atomic

    write_json_atomic(stem.with_suffix(".json"), json.loads(C.to_json(res)))
    md = markdown(res) + (f"\n{args.note}\n" if args.note else "")
    write_text_atomic(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
