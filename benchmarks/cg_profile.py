"""Where a CG step's time goes: the exported model's forward pass split into its stages, timed with
simple synchronised timers; plus the top operators from ``torch.profiler`` for whole forward+backward
calls (openmm-torch's force call).

The stages call the exported module's own scripted pieces in the order ``CGPotential.energy_from_table``
does. With the hand-written gradient (``module.analytic_gradient``, one interaction block): neighbour
table, slot geometry, prior with its slope, sensitivities with their slopes, environment + per-bead
layers + slot gradients, scatter to beads; the backward is then only the product that hands the gradient
to autograd. Otherwise: neighbour table, slot geometry, prior, network forward, autograd backward.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

from . import _common as C

NAME = "profile"


def _stage_timer(module, positions, edge: float, device: str):
    import torch

    dtype = module._dtype_ref.dtype
    n = positions.shape[0]
    pos0 = torch.tensor(positions, dtype=dtype, device=device)
    box = torch.eye(3, dtype=dtype, device=device) * edge
    types = torch.zeros(n, dtype=torch.long, device=device)
    sync = C.sync_fn(device)

    module.configure(n, box, 0)

    def timed(fn):
        """(fn(), seconds), synchronised on both sides."""
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    def once() -> dict[str, float]:
        if bool(module.analytic_gradient):
            return once_by_hand()
        times: dict[str, float] = {}
        pos = pos0.detach().requires_grad_(True)
        (nbr, _), times["neighbour_table"] = timed(lambda: module.neighbour_table(pos, box))
        (vec, r), times["slot_geometry"] = timed(lambda: module._slot_geometry(pos, box, nbr))
        energy, times["prior"] = timed(lambda: module.prior_energy(r) if module.has_prior
                                       else torch.zeros((), dtype=dtype, device=device))
        e_net, times["network_forward"] = timed(lambda: module.network_energy(
            types, vec * module.angstrom_per_nm, r * module.angstrom_per_nm, nbr))
        energy = energy + module.kj_per_kcal * e_net
        _, times["backward_autograd"] = timed(lambda: torch.autograd.grad(energy, pos))
        times["pairs"] = float((nbr != n).sum())
        times["table_slots"] = float(nbr.numel())
        return times

    def once_by_hand() -> dict[str, float]:
        """The stages of the hand-written gradient (one interaction block): the sensitivities are also
        timed alone; the network stage includes them again and is reported net of them."""
        times: dict[str, float] = {}
        zero = torch.zeros((), dtype=dtype, device=device)
        with torch.no_grad():
            pos = pos0.clone()
            (nbr, _), times["neighbour_table"] = timed(lambda: module.neighbour_table(pos, box))
            (vec, r), times["slot_geometry"] = timed(lambda: module._slot_geometry(pos, box, nbr))
            _, times["prior (energy and slope)"] = timed(lambda: module.prior_energy_and_slope(r)
                                                         if module.has_prior else None)
            r_a = r * module.angstrom_per_nm
            vec_a = vec * module.angstrom_per_nm
            blocks = [block for _, block in module.blocks.named_children()]  # scripted ModuleList: no iteration
            _, sens = timed(lambda: [block.interaction.sensitivity_and_slope(r_a) for block in blocks])
            times["sensitivities and slopes"] = sens
            _, network = timed(lambda: module._network_energy_and_slot_gradient(types, vec_a, r_a, nbr, zero))
            times["environment, per-bead layers, slot gradients"] = network - sens
            _, whole_s = timed(lambda: module._energy_and_gradient(pos, box, nbr))
        times["scatter to beads (the rest of energy and gradient)"] = max(
            whole_s - sum(v for k, v in times.items() if k != "neighbour_table"), 0.0)
        times["pairs"] = float((nbr != n).sum())
        times["table_slots"] = float(nbr.numel())
        return times

    def whole() -> float:
        pos = pos0.detach().requires_grad_(True)
        sync()
        t = time.perf_counter()
        energy = module(pos, box)
        torch.autograd.grad(energy, pos)
        sync()
        return time.perf_counter() - t

    return once, whole


_CATEGORIES = [
    ("gather/scatter (message passing indexing)", ("index", "gather", "scatter", "embedding", "take", "put_",
                                                    "masked")),
    ("dense math (bmm, matmul, linear)", ("bmm", "aten::mm", "addmm", "matmul", "linear", "baddbmm")),
    ("sort, bincount, cumsum", ("sort", "bincount", "cumsum", "unique")),
    ("elementwise (sensitivities, activations, geometry)", ("exp", "cos", "mul", "add", "sub", "div", "pow",
                                                             "sqrt", "softplus", "where", "clamp", "square",
                                                             "neg", "rsub", "sigmoid", "log", "reciprocal",
                                                             "threshold", "lt", "le", "gt", "ge")),
    ("reductions", ("sum", "mean", "norm")),
    ("copies, casts, allocation", ("copy", "to", "cat", "stack", "empty", "zeros", "full", "fill", "clone",
                                   "contiguous", "new_", "ones", "arange", "cross", "resize")),
]


def _category(op: str) -> str:
    name = op.lower()
    for label, keys in _CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other"


def _coarse(module, cutoff_nm: float, positions, edge: float, device: str, repeats: int) -> dict[str, float]:
    """Neighbour table alone (the module's own cell search), forward alone, forward + backward."""
    import torch

    dtype = module._dtype_ref.dtype
    pos0 = torch.tensor(positions, dtype=dtype, device=device)
    box = torch.eye(3, dtype=dtype, device=device) * edge
    sync = C.sync_fn(device)

    def timed(fn) -> float:
        out = []
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    def fwd():
        module(pos0.detach().requires_grad_(True), box)

    def fwd_bwd():
        p = pos0.detach().requires_grad_(True)
        torch.autograd.grad(module(p, box), p)

    # the fresh cell search is the GPU step's; on a CPU the step reuses a Verlet list (module.reuse_on_cpu),
    # so there the fresh search is reported but not taken out of the forward
    nl_s = timed(lambda: module.neighbour_table(pos0, box))
    in_step = not (bool(module.reuse_on_cpu) and device == "cpu")
    f_s = timed(fwd)
    fb_s = timed(fwd_bwd)
    rest = f_s - nl_s if in_step else f_s
    return {"neighbour_list_s": nl_s, "neighbour_search_in_step": in_step, "forward_s": f_s,
            "forward_backward_s": fb_s, "backward_s": fb_s - f_s, "forward_without_neighbour_list_s": rest,
            "shares": {"neighbour list": nl_s / fb_s, "forward network + prior + pair geometry": rest / fb_s,
                       "backward (autograd)": (fb_s - f_s) / fb_s}}


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    s = ctx.settings
    repeats = {"smoke": 2, "quick": 5, "full": 20}.get(s.mode, 5)
    out: dict[str, Any] = {"models": {}, "repeats": repeats}
    for arch in ctx.archs():
        model = ctx.models.get(arch)
        n = s.profile_size if model.fits(s.profile_size) else C.min_beads_for_cutoff(model.cutoff_nm)
        ctx.log(f"[{NAME}] {arch} x {n}")
        try:
            module, _ = model.load("float32", ctx.device)
            _, positions, edge = C.bead_lattice(n)
            once, whole = _stage_timer(module, positions, edge, ctx.device)
            for _ in range(max(4, s.warmup_steps)):
                whole()
            whole_s = statistics.median(whole() for _ in range(repeats))
            coarse = _coarse(module, model.cutoff_nm, positions, edge, ctx.device, repeats)
            entry: dict[str, Any] = {"status": "ok", "n_beads": n, "cutoff_nm": model.cutoff_nm,
                                     "scripted_forward_backward_s": whole_s, "coarse": coarse}
            try:  # the stages need the module's own pieces; a changed export only loses this part
                for _ in range(3):
                    once()
                runs = [once() for _ in range(repeats)]
                stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]
                          if k not in ("pairs", "table_slots")}
                total = sum(stages.values())
                entry.update(pairs_full_list=int(runs[0]["pairs"]), pairs_per_bead=runs[0]["pairs"] / n,
                             table_slots_per_bead=runs[0]["table_slots"] / n,
                             stages_s=stages, stages_share={k: v / total for k, v in stages.items()},
                             stages_total_s=total)
            except Exception as exc:  # noqa: BLE001
                entry["stages"] = f"unavailable: {C.short_error(exc)}"
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device == "cuda" else [])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Profiler clears events at the end of each cycle"
                with profile(activities=acts) as prof:
                    for _ in range(repeats):
                        whole()
            key = "self_device_time_total" if ctx.device == "cuda" else "self_cpu_time_total"
            events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
            all_self = sum(getattr(e, key, 0.0) for e in events) or 1.0
            top = [{"op": e.key, "calls_per_step": e.count / repeats,
                    "self_ms_per_step": getattr(e, key, 0.0) / 1e3 / repeats,
                    "share": getattr(e, key, 0.0) / all_self} for e in events[:15]]
            cats: dict[str, float] = {}
            for e in events:
                if e.key.startswith("ProfilerStep") or getattr(e, key, 0.0) <= 0:
                    continue
                cats[_category(e.key)] = cats.get(_category(e.key), 0.0) + getattr(e, key, 0.0) / all_self
            entry.update(profiler_top_ops=top, profiler_time=key,
                         profiler_categories=dict(sorted(cats.items(), key=lambda kv: -kv[1])))
            out["models"][arch] = entry
        except Exception as exc:  # noqa: BLE001
            C.free_memory()
            out["models"][arch] = {"status": "failed", "error": C.short_error(exc)}
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["### Profile of one CG force evaluation (forward + backward)", ""]
    for arch, r in res["models"].items():
        if r.get("status") != "ok":
            lines += [f"{arch}: {r.get('status')} {r.get('error', '')}", ""]
            continue
        c = r["coarse"]
        nb = f", {r['pairs_per_bead']:.0f} neighbours per bead" if "pairs_per_bead" in r else ""
        lines += [f"**{arch}**, {r['n_beads']} beads{nb} (cutoff {r['cutoff_nm']:.2f} nm): scripted "
                  f"forward+backward {r['scripted_forward_backward_s'] * 1e3:.1f} ms", ""]
        lines.append(C.md_table(["part (whole calls)", "ms", "share"],
                                [["neighbour table (fresh cell search alone)" if c.get("neighbour_search_in_step", True)
                                  else "fresh cell search (the GPU step's; the CPU step reuses a Verlet list)",
                                  c["neighbour_list_s"] * 1e3, f"{c['shares']['neighbour list'] * 100:.0f} %"],
                                 ["rest of the forward" if c.get("neighbour_search_in_step", True)
                                  else "forward (with the reused table)", c["forward_without_neighbour_list_s"] * 1e3,
                                  f"{c['shares']['forward network + prior + pair geometry'] * 100:.0f} %"],
                                 ["backward (autograd: the full chain, or only the hand-written gradient's hand-over)",
                                  c["backward_s"] * 1e3,
                                  f"{c['shares']['backward (autograd)'] * 100:.0f} %"]]))
        if "stages_s" in r:
            lines += ["", C.md_table(["stage (module pieces, as the GPU step runs them: fresh search)", "ms", "share"],
                                     [[k, v * 1e3, f"{r['stages_share'][k] * 100:.0f} %"]
                                      for k, v in r["stages_s"].items()])]
        else:
            lines += ["", f"stages: {r.get('stages')}"]
        lines += ["", C.md_table(["operator class (torch.profiler self time)", "share"],
                                 [[k, f"{v * 100:.0f} %"] for k, v in r["profiler_categories"].items()])]
        lines += ["", C.md_table(["top ops (torch.profiler)", "calls/step", "self ms/step", "share"],
                                 [[f"`{o['op']}`", o["calls_per_step"], o["self_ms_per_step"],
                                   f"{o['share'] * 100:.0f} %"] for o in r["profiler_top_ops"][:8]]), ""]
    return "\n".join(lines)
