"""1. CG vs all-atom throughput (ns/day) at the same number of molecules, on the same platform.

The all-atom side runs OPLS-AA methanol at 2 fs (bonds to hydrogen constrained, PME, Langevin).
The CG side runs the exported model in a TorchForce (LangevinMiddle) at the largest time step whose
NVE energy drift, measured here on a small system, stays below ``drift_threshold`` (kT/ns per degree
of freedom); its ns/day at 2 fs is given too (the step time does not depend on the time step).
The drift runs have 3/4 of a budget of their own, the throughput rows a whole one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from . import _common as C

NAME = "throughput"
TARGETS = {"cg_over_aa_gpu_at_4096": 10.0, "cg_over_aa_cpu": 1.0, "student_over_teacher": 5.0}
STUDENT, TEACHER = "fast", "paper"   # the distillation student preset and its teacher


def _drift_size(ctx: C.BenchmarkContext, model: C.ModelEntry) -> int:
    n = max(ctx.settings.drift_min_beads, model.min_beads)
    side = math.ceil(n ** (1.0 / 3.0) - 1e-9)
    return side ** 3


def measure_drift(ctx: C.BenchmarkContext, model: C.ModelEntry, budget: C.Budget) -> dict[str, Any]:
    """NVE (Verlet) total-energy drift of the CG model at each time step, from one equilibrated state."""
    import openmm
    import openmm.unit as u

    s = ctx.settings
    n = _drift_size(ctx, model)
    system, positions, edge = C.cg_system(model, n)
    # Equilibrate from the lattice with strong friction (10/ps), then draw fresh 300 K velocities: a lattice
    # start otherwise hands half its kinetic energy to the potential and the NVE runs would be cold.
    integ = C.langevin(0.002)
    integ.setFriction(10.0 / u.picosecond)
    context = C.make_context(system, integ, ctx.platform, positions)
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, 3)
    n_eq = max(1, int(round(s.drift_equilibration_ps / 0.002)))
    t = time.perf_counter()
    integ.step(n_eq)
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, 4)
    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    step_s = (time.perf_counter() - t) / n_eq
    del context, integ
    dof = 3 * n
    rows = []
    for dt_fs in s.drift_timesteps_fs:
        dt = dt_fs * 1e-3
        n_steps = max(10, int(round(s.drift_nve_ps / dt)))
        every = max(1, n_steps // s.drift_samples)  # each energy sample costs one more force evaluation
        row: dict[str, Any] = {"timestep_fs": dt_fs, "nve_ps": n_steps * dt, "steps": n_steps,
                               "sample_every": every}
        drift = C.nve_drift(system, state, openmm.VerletIntegrator(dt * u.picoseconds), ctx.platform, n_steps, every,
                            dt, dof, step_s, budget)
        rows.append({**row, **drift})
    # The largest time step that passes with every smaller tested one passing too.
    chosen = None
    for r in sorted(rows, key=lambda r: r["timestep_fs"]):
        if r.get("status") != "ok" or not abs(r["drift_kT_per_ns_per_dof"]) < s.drift_threshold:
            break
        chosen = r["timestep_fs"]
    note = None
    if chosen is None:
        chosen = min(s.drift_timesteps_fs)
        note = "no tested time step met the drift threshold; the smallest one is used"
    return {"n_beads": n, "box_nm": edge, "equilibration_ps": n_eq * 0.002, "equilibration_timestep_fs": 2.0,
            "equilibration": "LangevinMiddle 300 K, friction 10/ps, then fresh 300 K velocities",
            "threshold_kT_per_ns_per_dof": s.drift_threshold, "dof": dof, "rows": rows,
            "chosen_timestep_fs": chosen, "note": note}


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    s = ctx.settings
    archs = ctx.archs()
    drift: dict[str, Any] = {}
    # The drift runs get 3/4 of a budget of their own, so that the throughput rows keep a whole one
    # (under a total budget, --total-budget, they share one: 40 % for the drift runs).
    strict = bool(ctx.shared.get("strict_budget"))
    t_start = time.perf_counter()
    drift_budget = C.Budget((0.4 if strict else 0.75) * ctx.budget_s)
    for arch in archs:
        model = ctx.models.get(arch)
        ctx.log(f"[{NAME}] NVE drift of the {arch} model at {s.drift_timesteps_fs} fs")
        try:
            drift[arch] = measure_drift(ctx, model, drift_budget)
        except Exception as exc:  # noqa: BLE001 - record and go on with 2 fs
            drift[arch] = {"status": "failed", "error": C.short_error(exc), "chosen_timestep_fs": 2.0}
    ctx.shared["cg_timestep_fs"] = {a: d["chosen_timestep_fs"] for a, d in drift.items()}
    budget = C.Budget(ctx.budget_s - (time.perf_counter() - t_start)) if strict else ctx.budget()

    rows = []
    stop_aa = stop_cg = None
    last: dict[str, tuple[int, float]] = {}
    for n in s.throughput_sizes:
        row: dict[str, Any] = {"n_molecules": n}
        # all-atom
        est = C.predicted_seconds(last.get("aa"), n, s)
        if stop_aa:
            row["aa"] = {"status": stop_aa}
        elif not budget.allows(est):
            row["aa"] = {"status": "skipped: time budget"}
        else:
            ctx.log(f"[{NAME}] all-atom methanol x {n}")
            row["aa"] = C.guarded(lambda: C.time_aa(n, ctx.platform, s, budget))
            if row["aa"].get("status") == "ok":
                last["aa"] = (n, row["aa"]["step_s"], row["aa"]["setup_s"])
            elif "memory" in row["aa"].get("status", ""):
                stop_aa = row["aa"]["status"]
        for arch in archs:
            model = ctx.models.get(arch)
            key = f"cg_{arch}"
            dt_fs = drift[arch]["chosen_timestep_fs"]
            est = C.predicted_seconds(last.get(key), n, s)
            if not model.fits(n):
                row[key] = {"status": f"skipped: box ({C.box_edge_nm(n):.2f} nm) narrower than twice the "
                                      f"cutoff ({model.cutoff_nm:.2f} nm)"}
            elif stop_cg and stop_cg.get(arch):
                row[key] = {"status": stop_cg[arch]}
            elif not budget.allows(est):
                row[key] = {"status": "skipped: time budget"}
            else:
                ctx.log(f"[{NAME}] CG {arch} x {n} at {dt_fs} fs")
                r = C.guarded(lambda: C.time_cg(model, n, ctx.platform, s, dt_fs * 1e-3, budget))
                if r.get("status") == "ok":
                    r["ns_per_day_at_2fs"] = C.ns_per_day(r["step_s"], 0.002)
                    last[key] = (n, r["step_s"], r["setup_s"])
                    aa = row["aa"]
                    if aa.get("status") == "ok":
                        r["speedup_vs_aa"] = r["ns_per_day"] / aa["ns_per_day"]
                        r["speedup_vs_aa_same_timestep"] = r["ns_per_day_at_2fs"] / aa["ns_per_day"]
                elif "memory" in r.get("status", ""):
                    stop_cg = {**(stop_cg or {}), arch: r["status"]}
                row[key] = r
        rows.append(row)
    return {"drift": drift, "rows": rows, "archs": archs, "sizes": list(s.throughput_sizes),
            "aa_timestep_fs": C.AA_TIMESTEP_PS * 1e3, "cg_timestep_fs": ctx.shared["cg_timestep_fs"],
            "targets": TARGETS, "target_check": _targets(ctx, rows, archs),
            "student_vs_teacher": student_vs_teacher(rows)}


def student_vs_teacher(rows: list[dict]) -> list[dict[str, Any]]:
    """Per size where both ran: how much faster the `fast` student runs than the `paper` teacher, by step
    time (the same time step) and by ns/day at each model's chosen time step."""
    out = []
    for row in rows:
        st, te = row.get(f"cg_{STUDENT}", {}), row.get(f"cg_{TEACHER}", {})
        if st.get("status") == "ok" and te.get("status") == "ok":
            ratio = te["step_s"] / st["step_s"]
            out.append({"n_molecules": row["n_molecules"], "step_time_ratio": ratio,
                        "ns_per_day_ratio": st["ns_per_day"] / te["ns_per_day"],
                        "target": TARGETS["student_over_teacher"], "met": ratio >= TARGETS["student_over_teacher"]})
    return out


def _targets(ctx: C.BenchmarkContext, rows: list[dict], archs: list[str]) -> dict[str, Any]:
    gpu = ctx.platform_name in ("CUDA", "OpenCL")
    out = {}
    for arch in archs:
        best = None
        for row in rows:
            r = row.get(f"cg_{arch}", {})
            if "speedup_vs_aa" in r and (not gpu or row["n_molecules"] >= 4096):
                best = r["speedup_vs_aa"] if best is None else max(best, r["speedup_vs_aa"])
        target = TARGETS["cg_over_aa_gpu_at_4096"] if gpu else TARGETS["cg_over_aa_cpu"]
        out[arch] = {"speedup": best, "target": target, "met": None if best is None else best >= target,
                     "condition": ">= 4096 molecules on GPU" if gpu else "CPU, any size"}
    return out


def markdown(res: dict[str, Any]) -> str:
    out = ["### 1. CG vs all-atom throughput (ns/day)", ""]
    archs = res["archs"]
    heads = ["molecules", "AA ns/day (2 fs)"]
    for a in archs:
        heads += [f"CG {a} ns/day (chosen {res['cg_timestep_fs'][a]:g} fs)", f"CG {a} ns/day (at 2 fs)",
                  f"CG {a} / AA"]
    rows = []
    for row in res["rows"]:
        aa = row["aa"]
        cells: list[Any] = [row["n_molecules"], aa["ns_per_day"] if aa.get("status") == "ok" else aa["status"]]
        for a in archs:
            r = row.get(f"cg_{a}", {})
            if r.get("status") == "ok":
                cells += [r["ns_per_day"], r["ns_per_day_at_2fs"], r.get("speedup_vs_aa")]
            else:
                cells += [r.get("status", "-"), "-", "-"]
        rows.append(cells)
    out.append(C.md_table(heads, rows))
    out += ["", "AA: OPLS-AA methanol, PME, HBonds constraints, LangevinMiddle, 2 fs; "
                "CG: one bead per molecule at 0.787 g/cm^3, TorchForce, LangevinMiddle.", ""]
    out += ["NVE energy drift of the CG model (Verlet, from a state equilibrated at 2 fs):", ""]
    drows = []
    for a in archs:
        d = res["drift"].get(a, {})
        for r in d.get("rows", []):
            drows.append([a, d["n_beads"], r["timestep_fs"], r.get("nve_ps"),
                          r.get("drift_kT_per_ns_per_dof") if r.get("status") == "ok" else r.get("status"),
                          r.get("drift_stderr"), r.get("etot_fluct_over_ekin_fluct"), r.get("mean_temperature_K"),
                          "chosen" if r["timestep_fs"] == d["chosen_timestep_fs"] else ""])
        if "error" in d:
            drows.append([a, "-", "-", "-", d["error"], "-", "-", "-", ""])
        elif d.get("note"):
            drows.append([a, "", "", "", d["note"], "", "", "", ""])
    out.append(C.md_table(["model", "beads", "dt (fs)", "NVE ps", "drift (kT/ns/DOF)", "+-", "dE_tot/dE_kin",
                           "T (K)", ""], drows))
    thr = next((d.get("threshold_kT_per_ns_per_dof") for d in res["drift"].values() if "rows" in d), None)
    out += ["", f"Time step rule: the largest tested time step with |drift| < {thr} kT/ns per degree of freedom "
                "and no blow-up, every smaller tested one passing too (drift: least-squares slope of the total "
                "energy; dE_tot/dE_kin: standard deviations of the detrended total and of the kinetic energy).", ""]
    checks = [f"{a}: {C.fmt(c['speedup'])}x vs target >= {c['target']}x ({c['condition']}): "
              f"{'met' if c['met'] else ('not met' if c['met'] is not None else 'not measured')}"
              for a, c in res["target_check"].items()]
    out += ["Targets: " + "; ".join(checks)]
    if res.get("student_vs_teacher"):
        out += ["", f"The `{STUDENT}` student against the `{TEACHER}` teacher (target: >= "
                f"{TARGETS['student_over_teacher']:g}x by step time):", ""]
        out.append(C.md_table(["molecules", "step-time ratio", "ns/day ratio (each at its chosen step)", "met"],
                              [[r["n_molecules"], r["step_time_ratio"], r["ns_per_day_ratio"],
                                "yes" if r["met"] else "no"] for r in res["student_vs_teacher"]]))
    return "\n".join(out)
