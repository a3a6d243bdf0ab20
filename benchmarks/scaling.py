"""3. Scaling: CG step time against the number of beads, with a log-log least-squares exponent
(target <= 1.1), and the all-atom step time at the same numbers of molecules where feasible.

Sizes run from small to large; a size is skipped when its predicted cost does not fit in the
benchmark's time budget, and the larger ones after an out-of-memory error.
"""

from __future__ import annotations

from typing import Any

from . import _common as C

NAME = "scaling"
TARGET_EXPONENT = 1.1


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    s = ctx.settings
    budget = ctx.budget()
    archs = ctx.archs()
    series: dict[str, list[dict[str, Any]]] = {}
    timesteps = ctx.shared.get("cg_timestep_fs", {})
    sides = [(f"cg_{a}", a) for a in archs] + ([("aa", None)] if s.scaling_aa else [])
    # Interleave the series size by size so that a tight budget trims the largest sizes of all of them.
    for key, _ in sides:
        series[key] = []
    stopped: dict[str, str] = {}
    last: dict[str, tuple[int, float]] = {}
    for n in s.scaling_sizes:
        for key, arch in sides:
            if key in stopped:
                series[key].append({"n": n, "status": stopped[key]})
                continue
            est = C.predicted_seconds(last.get(key), n, s)
            if not budget.allows(est):
                series[key].append({"n": n, "status": "skipped: time budget"})
                continue
            if arch is not None:
                model = ctx.models.get(arch)
                if not model.fits(n):
                    series[key].append({"n": n, "status": "skipped: box narrower than twice the cutoff"})
                    continue
            ctx.log(f"[{NAME}] {key} x {n}")
            if arch is None:
                r = C.guarded(lambda: C.time_aa(n, ctx.platform, s, budget))
            else:
                dt = timesteps.get(arch, 2.0) * 1e-3
                r = C.guarded(lambda: C.time_cg(model, n, ctx.platform, s, dt, budget))
            r["n"] = n
            if r["status"] == "ok":
                last[key] = (n, r["step_s"], r.get("setup_s", 0.0))
                r["step_us_per_particle"] = r["step_s"] / n * 1e6
            elif "memory" in r["status"]:
                stopped[key] = r["status"]
            series[key].append(r)
    fits = {}
    for key, rows in series.items():
        ok = [r for r in rows if r["status"] == "ok"]
        fit = C.loglog_fit([r["n"] for r in ok], [r["step_s"] for r in ok])
        if fit is not None and key.startswith("cg_"):
            fit["target"] = TARGET_EXPONENT
            fit["meets_target"] = fit["exponent"] <= TARGET_EXPONENT
        fits[key] = fit
    return {"series": series, "fits": fits, "sizes": list(s.scaling_sizes), "target_exponent": TARGET_EXPONENT,
            "cg_integrator": "LangevinMiddle", "aa": "OPLS-AA methanol, PME, HBonds, 2 fs"}


def markdown(res: dict[str, Any]) -> str:
    keys = list(res["series"])
    heads = ["molecules / beads"] + [f"{'AA' if k == 'aa' else 'CG ' + k[3:]} step (ms)" for k in keys]
    rows = []
    for i, n in enumerate(res["sizes"]):
        cells: list[Any] = [n]
        for k in keys:
            r = res["series"][k][i] if i < len(res["series"][k]) else {"status": "-"}
            cells.append(r["step_s"] * 1e3 if r["status"] == "ok" else r["status"])
        rows.append(cells)
    fit_rows = []
    for k, f in res["fits"].items():
        name = "AA" if k == "aa" else f"CG {k[3:]}"
        if f is None:
            fit_rows.append([name, "-", "-", "-", "-"])
        else:
            fit_rows.append([name, f["exponent"], f.get("exponent_stderr"), f["points"],
                             f.get("meets_target", "-") if k != "aa" else "-"])
    return "\n".join(["### 3. Scaling of the step time", "", C.md_table(heads, rows), "",
                      C.md_table(["series", "exponent (log-log)", "+-", "points",
                                  f"<= {res['target_exponent']}"], fit_rows)])
