"""2. TorchForce overhead: an OpenMM step (a Context holding only the TorchForce, VerletIntegrator)
against the bare model in PyTorch (forward + ``torch.autograd.grad``) on the same positions.

The ratio (OpenMM step / bare model) is what openmm-torch and the integrator add; the target is
<= 1.10. OpenMM and PyTorch chunks alternate (A B A B ...) and each pair gives a ratio, so that a busy
machine affects both alike; the median of the paired ratios is reported (with their range).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import openmm.unit as u

from . import _common as C

NAME = "overhead"
TARGET_RATIO = 1.10


def bare_model_timer(model: C.ModelEntry, positions, edge: float, device: str, dtype: str = "float32",
                     backward: bool = True):
    """A ``step(k)`` callable: k calls of the scripted model (+ autograd forces) on fixed positions.

    Inputs mimic what openmm-torch hands the model: float64 on the CPU, float32 on CUDA (mixed precision).
    """
    import torch

    module, _ = model.load(dtype, device)
    in_dtype = torch.float32 if device == "cuda" else torch.float64
    pos = torch.tensor(positions, dtype=in_dtype, device=device)
    box = torch.eye(3, dtype=in_dtype, device=device) * edge

    def step(k: int) -> None:
        for _ in range(k):
            if backward:
                p = pos.detach().requires_grad_(True)
                energy = module(p, box)
                (grad,) = torch.autograd.grad(energy, p)
                forces = -grad  # noqa: F841 - what openmm-torch copies back
            else:
                with torch.no_grad():
                    module(pos, box)

    return step


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    import openmm

    s = ctx.settings
    budget = ctx.budget()
    sync = C.sync_fn(ctx.device)
    rows = []
    for arch in ctx.archs():
        model = ctx.models.get(arch)
        for n in s.overhead_sizes:
            row: dict[str, Any] = {"model": arch, "n_beads": n}
            if not model.fits(n):
                rows.append({**row, "status": f"skipped: box narrower than twice the cutoff ({model.cutoff_nm} nm)"})
                continue
            if budget.remaining() <= 0:
                rows.append({**row, "status": "skipped: time budget"})
                continue
            ctx.log(f"[{NAME}] {arch} x {n}")
            try:
                system, positions, edge = C.cg_system(model, n)
                integ = openmm.VerletIntegrator(0.001 * u.picoseconds)
                context = C.make_context(system, integ, ctx.platform, positions)
                pos_now = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
                bare = bare_model_timer(model, pos_now, edge, ctx.device)
                fwd = bare_model_timer(model, pos_now, edge, ctx.device, backward=False)
                # warm both up and size a chunk (~min_time_s / max_chunks of OpenMM steps) ...
                first = C.timed_chunks(integ.step, C.context_sync(context), s, budget)
                C.timed_chunks(bare, sync, s, budget)
                k = max(1, int(s.min_time_s / s.max_chunks / first["step_s"]))
                omm_sync = C.context_sync(context)
                # ... then alternate single chunks, OpenMM then PyTorch, and pair them: the ratio of each pair
                # cancels slow changes of the machine's load; the median over pairs is reported.
                omm, torch_t = [], []
                pairs = 2 if s.mode == "smoke" else max(5, s.max_chunks)
                for _ in range(pairs):
                    for fn, sy, acc in ((integ.step, omm_sync, omm), (bare, sync, torch_t)):
                        sy()
                        t = time.perf_counter()
                        fn(k)
                        sy()
                        acc.append((time.perf_counter() - t) / k)
                    if budget.remaining() < 0:
                        break
                fwd_t = C.timed_chunks(fwd, sync, s, budget)
                ratios = [a / b for a, b in zip(omm, torch_t)]
                t_omm = statistics.median(omm)
                t_bare = statistics.median(torch_t)
                ratio = statistics.median(ratios)
                rows.append({**row, "status": "ok", "openmm_step_s": t_omm, "model_fwd_bwd_s": t_bare,
                             "model_fwd_only_s": fwd_t["step_s"], "ratio": ratio,
                             "ratio_of_minima": min(omm) / min(torch_t), "ratio_min": min(ratios),
                             "ratio_max": max(ratios), "pairs": len(ratios), "steps_per_chunk": k,
                             "overhead_s": t_omm - t_bare, "meets_target": ratio <= TARGET_RATIO,
                             "openmm_runs": omm, "torch_runs": torch_t})
                del context, integ
            except C.OutOfBudget as exc:
                rows.append({**row, "status": f"skipped: time budget ({exc})"})
            except Exception as exc:  # noqa: BLE001
                C.free_memory()
                rows.append({**row, "status": "skipped: out of memory" if C.is_oom(exc) else "failed",
                             "error": C.short_error(exc)})
    return {"rows": rows, "target_ratio": TARGET_RATIO, "sizes": list(s.overhead_sizes),
            "integrator": "Verlet 1 fs, Context with only the TorchForce",
            "bare": "scripted model forward + torch.autograd.grad, same positions, same device"}


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        if r.get("status") == "ok":
            rows.append([r["model"], r["n_beads"], r["openmm_step_s"] * 1e3, r["model_fwd_bwd_s"] * 1e3,
                         r["model_fwd_only_s"] * 1e3, r["ratio"],
                         f"{C.fmt(r['ratio_min'])}-{C.fmt(r['ratio_max'])}", r["meets_target"]])
        else:
            rows.append([r["model"], r["n_beads"], r["status"] + (f" ({r['error']})" if "error" in r else ""),
                         "-", "-", "-", "-", "-"])
    return "\n".join(["### 2. TorchForce overhead", "",
                      C.md_table(["model", "beads", "OpenMM step (ms)", "model fwd+bwd (ms)", "model fwd (ms)",
                                  "ratio (median of pairs)", "range", f"<= {res['target_ratio']}"], rows)])
