"""5. Training throughput (frames/s) of the force-matching step for the "tiny" and "paper" presets.

One training step is what hippynn runs per batch (``openmm_cgnn.training.TrainingStep``): the
hippynn graph (pairs from the per-frame cache that ``train()`` uses, or the preset's per-batch pair
finder), HIP-NN-TS, HEnergy, forces by autograd, the loss (force RMSE + MAE), backward, Adam.
Batches are synthetic methanol-density lattices of the smallest cubic size whose box fits the
preset's cutoff (64 beads for "tiny", 512 for "paper"). Data loading (hippynn's Database) is left
out; the end-to-end ``train()`` rate of the 1-epoch benchmark models is listed under "models".
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from . import _common as C

NAME = "training"


def _step_fn(preset: str, n_frames: int, device: str, cache_pairs: bool = True):
    """(step(), beads per frame, config, seconds spent caching pairs) for ``preset`` on ``n_frames``
    synthetic frames (one batch)."""
    from openmm_cgnn.training import TrainConfig, TrainingStep

    cfg = TrainConfig.from_preset(preset)
    cfg.cache_pairs = cache_pairs
    n = C.min_beads_for_cutoff(cfg.cutoff_nm)
    side = math.ceil(n ** (1.0 / 3.0) - 1e-9)
    n = side ** 3
    ds = C.synthetic_frames(n, n_frames, seed=2)
    step = TrainingStep(cfg, ds, device=device)
    return step.step, n, cfg, step.pair_seconds


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    s = ctx.settings
    budget = ctx.budget()
    device = ctx.device
    rows = []
    for preset, batch_sizes in s.training_batches.items():
        last: tuple[int, float] | None = None
        for b in batch_sizes:
            row: dict[str, Any] = {"preset": preset, "batch_size": b}
            est = None if last is None else last[1] * b / last[0] * (s.training_timed_batches + 2)
            if not budget.allows(est):
                rows.append({**row, "status": "skipped: time budget"})
                continue
            ctx.log(f"[{NAME}] {preset} batch {b}")
            try:
                t = time.perf_counter()
                step, n, cfg, pair_s = _step_fn(preset, b, device)
                setup = time.perf_counter() - t
                step()  # warm-up (allocations, first-call work)
                times = []
                for _ in range(s.training_timed_batches):
                    t = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t)
                    if budget.remaining() < 2 * times[-1]:
                        break
                med = statistics.median(times)
                last = (b, med)
                rows.append({**row, "status": "ok", "beads_per_frame": n, "batch_s": med, "batches_timed": len(times),
                             "frames_per_s": b / med, "bead_frames_per_s": b * n / med, "setup_s": setup,
                             "pair_cache_s": pair_s, "cache_pairs": cfg.cache_pairs, "force_mode": cfg.force_mode,
                             "n_features": cfg.n_features,
                             "tensor_order": cfg.tensor_order, "device": device})
            except Exception as exc:  # noqa: BLE001
                C.free_memory()
                rows.append({**row, "status": "skipped: out of memory" if C.is_oom(exc) else "failed",
                             "error": C.short_error(exc)})
                if C.is_oom(exc):
                    break
    return {"rows": rows, "device": device, "optimizer": "Adam", "loss": "force RMSE + force MAE",
            "end_to_end": {a: {k: v for k, v in e.items() if k.startswith("train")}
                           for a, e in ctx.models.summary().items()}}


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        if r.get("status") == "ok":
            rows.append([r["preset"], r["beads_per_frame"], r["batch_size"], r["batch_s"] * 1e3, r["frames_per_s"],
                         r["bead_frames_per_s"]])
        else:
            rows.append([r["preset"], "-", r["batch_size"], r.get("status", "-") + (
                f" ({r['error']})" if "error" in r else ""), "-", "-"])
    e2e = [[a, v.get("train_frames"), v.get("train_call_s"), v.get("train_end_to_end_frames_per_s")]
           for a, v in res.get("end_to_end", {}).items()]
    out = ["### 5. Training throughput", "",
           C.md_table(["preset", "beads/frame", "batch", "step (ms)", "frames/s", "bead-frames/s"], rows)]
    if e2e:
        out += ["", "End to end (`train()` for 1 epoch incl. prior fit, validation, test metrics, writing):", "",
                C.md_table(["model", "train frames", "train() s", "frames/s"], e2e)]
    return "\n".join(out)
