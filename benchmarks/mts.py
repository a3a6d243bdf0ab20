"""7. Multiple time stepping: the largest stable outer step, the speed it buys, and what it does to structure.

The CG System is split (``openmm_cgnn.mts``): the model's repulsive prior every inner step (fast
group), the model minus that prior every K inner steps (slow group).

1. **Stability.** From one state equilibrated at 2 fs, NVE runs with ``MTSIntegrator``: K = 1 (velocity
   Verlet, the one-time-step reference) at each of the throughput benchmark's candidate steps, and
   every K at each inner step. The throughput benchmark's drift rule: |drift| below
   ``drift_threshold`` kT/ns per degree of freedom with no blow-up, every smaller tested step (or K
   at that inner step) passing too. The NVE runs here are longer than the throughput benchmark's
   (``nve_ps``), so the drift is resolved better than its threshold. Chosen: the largest passing
   single step, and the largest passing outer step (inner x K, K > 1).
2. **Speed.** The single-step run (LangevinMiddle at its chosen step, the unsplit System) and the MTS
   run (MTSLangevin at the chosen inner step and K) at the throughput size, timed in alternating
   chunks in one process: ns/day and their ratio. On the CPU platform from the process's CPU time
   (one thread), which other jobs on a shared machine do not inflate; on a GPU from wall time.
3. **Structure.** Three NVT runs from the same equilibrated state: two single-step runs with
   different seeds (A, B) and one MTS run. RDF MAD of MTS against A, next to the MAD of B against A
   (the noise floor of runs this long); standard errors from a bootstrap over blocks of frames.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

import openmm.unit as u

from . import _common as C

NAME = "mts"

# per mode: inner steps (fs) and substeps K tried; structure-run size and lengths (ps)
MODES: dict[str, dict[str, Any]] = {
    "quick": {"inner_fs": [2.0], "substeps": [1, 2, 3, 4, 5, 6, 8], "structure_archs": ["tiny"],
              "structure_beads": 64, "nve_ps": {"default": 1.0, "paper": 0.4}, "drift_samples": 50,
              "equilibration_ps": 2.0, "production_ps": 12.0, "frame_ps": 0.12, "blocks": 10, "bootstrap": 200,
              "rdf_bin_nm": 0.01},
    "full": {"inner_fs": [2.0, 4.0], "substeps": [1, 2, 3, 4, 5, 6, 8], "structure_archs": ["tiny", "paper"],
             "structure_beads": 512, "nve_ps": {"default": 4.0}, "drift_samples": 50, "equilibration_ps": 10.0, "production_ps": 100.0, "frame_ps": 0.2,
             "blocks": 10, "bootstrap": 200, "rdf_bin_nm": 0.01},
    "smoke": {"inner_fs": [2.0], "substeps": [1, 2], "structure_archs": ["tiny"], "structure_beads": 64,
              "nve_ps": {"default": 0.02}, "drift_samples": 5, "equilibration_ps": 0.02, "production_ps": 0.08, "frame_ps": 0.02, "blocks": 2, "bootstrap": 20,
              "rdf_bin_nm": 0.02},
}


def _mode(ctx: C.BenchmarkContext) -> dict[str, Any]:
    return MODES.get(ctx.settings.mode, MODES["quick"])


def _split_system(model: C.ModelEntry, n: int, dtype: str = "float32"):
    """(System split into fast and slow groups, positions nm, edge nm) for a lattice of ``n`` beads."""
    from openmm_cgnn.system import create_system

    top, positions, edge = C.bead_lattice(n, type_name=model.type_name)
    module, meta = model.load(dtype)
    system = create_system(top, (module, meta), masses=[C.METHANOL_MASS] * n, use_cuda_graphs=False,
                           mts_fast="prior")
    return system, positions, edge


def _equilibrated(system, positions: np.ndarray, platform, ps: float, seed: int = 3):
    """(State with positions and fresh 300 K velocities after ``ps`` of LangevinMiddle at 2 fs and
    10/ps, seconds per step)."""

    integ = C.langevin(0.002, seed)
    integ.setFriction(10.0 / u.picosecond)
    context = C.make_context(system, integ, platform, positions)
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, seed)
    n_steps = max(1, int(round(ps / 0.002)))
    t = time.perf_counter()
    integ.step(n_steps)
    step_s = (time.perf_counter() - t) / n_steps
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, seed + 1)
    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    del context, integ
    return state, step_s


def _largest_passing(rows: list[dict], threshold: float, inner_fs: float, substeps: list[int]) -> dict | None:
    """The row of the largest K in ``substeps`` at ``inner_fs`` that passes, every smaller one passing too."""
    passing = None
    for k in sorted(substeps):
        r = next((r for r in rows if r["inner_fs"] == inner_fs and r["substeps"] == k), None)
        if r is None or r.get("status") != "ok" or not abs(r["drift_kT_per_ns_per_dof"]) < threshold:
            break
        passing = r
    return passing


def measure_mts_drift(ctx: C.BenchmarkContext, model: C.ModelEntry, budget: C.Budget, mode: dict) -> dict[str, Any]:
    """NVE drift of the split System under MTSIntegrator, all runs from one equilibrated state: K = 1
    at each single-step candidate (the one-time-step reference: velocity Verlet) and every K at each
    inner step. Returns the rows and the chosen single step and MTS setting."""
    from openmm_cgnn.mts import verlet_integrator

    s = ctx.settings
    n = max(s.drift_min_beads, model.min_beads)
    n = math.ceil(n ** (1.0 / 3.0) - 1e-9) ** 3
    nve_ps = mode["nve_ps"].get(model.arch, mode["nve_ps"]["default"])
    system, positions, edge = _split_system(model, n)
    state, step_s = _equilibrated(system, positions, ctx.platform, s.drift_equilibration_ps)
    dof = 3 * n
    plan = [(dt, 1) for dt in s.drift_timesteps_fs]
    plan += [(inner, k) for inner in mode["inner_fs"] for k in mode["substeps"] if (inner, k) not in plan]
    rows = []
    for inner_fs, k in plan:
        outer = inner_fs * k * 1e-3
        n_steps = max(10, int(round(nve_ps / outer)))
        every = max(1, n_steps // mode["drift_samples"])
        row: dict[str, Any] = {"inner_fs": inner_fs, "substeps": k, "outer_fs": inner_fs * k,
                               "nve_ps": n_steps * outer, "outer_steps": n_steps, "sample_every": every}
        rows.append({**row, **C.nve_drift(system, state, verlet_integrator(inner_fs * 1e-3, k), ctx.platform,
                                          n_steps, every, outer, dof, step_s, budget)})
        if rows[-1]["status"] != "ok":
            continue
        ctx.log(f"[{NAME}] {model.arch}: inner {inner_fs:g} fs x {k}: drift "
                f"{rows[-1]['drift_kT_per_ns_per_dof']:.3g} kT/ns/DOF")
    thr = s.drift_threshold
    # one time step: the largest tested step whose K = 1 run passes, every smaller one passing too
    single = None
    for dt in sorted(s.drift_timesteps_fs):
        r = _largest_passing(rows, thr, dt, [1])
        if r is None:
            break
        single = dt
    chosen = None
    for inner_fs in mode["inner_fs"]:
        r = _largest_passing(rows, thr, inner_fs, sorted({1, *mode["substeps"]}))
        if r and r["substeps"] > 1 and (chosen is None or r["outer_fs"] > chosen["outer_fs"]):
            chosen = r
    return {"n_beads": n, "box_nm": edge, "fast": "prior", "threshold_kT_per_ns_per_dof": thr, "dof": dof,
            "nve_ps": nve_ps, "equilibration_ps": s.drift_equilibration_ps, "rows": rows,
            "single_step_fs": single,
            "chosen": None if chosen is None else {k: chosen[k] for k in ("inner_fs", "substeps", "outer_fs")}}


def measure_speed(model: C.ModelEntry, n: int, platform, settings: C.Settings, single_fs: float, inner_fs: float,
                  k: int, budget: C.Budget) -> dict[str, Any]:
    """Step times of the one-time-step run (LangevinMiddle, unsplit System), of the MTS run (MTSLangevin,
    split System) and of the all-atom run of as many molecules (the throughput benchmark's, 2 fs), timed in
    alternating chunks so that all three see the same machine load.

    Wall time and, on the CPU platform, the process's CPU time per step (with one thread for torch and
    OpenMM it is the work done, which other jobs on a shared machine do not inflate): the ratio uses
    CPU time on the CPU platform and wall time on a GPU."""

    from openmm_cgnn.mts import langevin_integrator

    single_sys, positions, edge = C.cg_system(model, n)
    mts_sys, _, _ = _split_system(model, n)
    aa_context, aa_integrator, aa_info = C.aa_context(n, platform)
    runs = {"single": (single_sys, C.langevin(single_fs * 1e-3), single_fs),
            "mts": (mts_sys, langevin_integrator(C.TEMPERATURE, 1.0, inner_fs * 1e-3, k, seed=1), inner_fs * k),
            "aa": (None, aa_integrator, C.AA_TIMESTEP_PS * 1e3)}
    contexts, first = {"aa": aa_context}, {}
    for name, (system, integ, _) in runs.items():
        if name != "aa":
            contexts[name] = C.make_context(system, integ, platform, positions)
            contexts[name].setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, 1)
        integ.step(settings.warmup_steps)
        C.context_sync(contexts[name])()
        t = time.perf_counter()
        integ.step(1)
        C.context_sync(contexts[name])()
        first[name] = max(time.perf_counter() - t, 1e-7)
    chunk = settings.min_time_s / settings.max_chunks
    steps = {name: max(1, int(chunk / first[name])) for name in runs}
    if budget.remaining() < 2 * settings.min_time_s:
        raise C.OutOfBudget("not enough budget left to time the single-step and MTS runs")
    per_step: dict[str, list[float]] = {name: [] for name in runs}
    cpu_step: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(2, settings.max_chunks)):
        for name, (_, integ, _) in runs.items():
            t, c = time.perf_counter(), time.process_time()
            integ.step(steps[name])
            C.context_sync(contexts[name])()
            per_step[name].append((time.perf_counter() - t) / steps[name])
            cpu_step[name].append((time.process_time() - c) / steps[name])
        if budget.remaining() < 0:
            break
    clock = C.step_clock(platform)
    out: dict[str, Any] = {"n_beads": n, "box_nm": edge, "clock": clock,
                           "timing": "alternating chunks, median per step; ns/day from "
                                     + ("process CPU time (1 thread)" if clock == "cpu" else "wall time")}
    for name, (_, _, step_fs) in runs.items():
        wall = float(np.median(per_step[name]))
        cpu = float(np.median(cpu_step[name]))
        med = cpu if clock == "cpu" else wall
        energy = contexts[name].getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        out[name] = {"status": "ok", "step_fs": step_fs, "step_s": med, "wall_step_s": wall, "cpu_step_s": cpu,
                     "wall_step_s_min": min(per_step[name]), "wall_step_s_max": max(per_step[name]),
                     "cpu_step_s_min": min(cpu_step[name]), "cpu_step_s_max": max(cpu_step[name]),
                     "chunks": len(per_step[name]), "steps_per_chunk": steps[name],
                     "ns_per_day": C.ns_per_day(med, step_fs * 1e-3),
                     "ns_per_day_wall": C.ns_per_day(wall, step_fs * 1e-3), "finite": bool(math.isfinite(energy))}
    out["single"]["integrator"] = "LangevinMiddle"
    out["mts"].update(integrator="MTSLangevin", inner_fs=inner_fs, substeps=k)
    out["aa"].update(aa_info)
    for name in ("single", "mts"):
        out[name]["over_aa"] = out[name]["ns_per_day"] / out["aa"]["ns_per_day"]
    del contexts
    return out


def _trajectory(system, state, integrator, platform, mode: dict, outer_ps: float) -> tuple[np.ndarray, float]:
    """Frames (F, N, 3) nm of an NVT run from ``state`` (equilibration, then production), and seconds."""
    context = C.make_context(system, integrator, platform, state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
    context.setVelocities(state.getVelocities())
    per_frame = max(1, int(round(mode["frame_ps"] / outer_ps)))
    integrator.step(int(round(mode["equilibration_ps"] / outer_ps)))
    n_frames = int(round(mode["production_ps"] / mode["frame_ps"]))
    frames = np.empty((n_frames, system.getNumParticles(), 3))
    t = time.perf_counter()
    for f in range(n_frames):
        integrator.step(per_frame)
        frames[f] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    seconds = time.perf_counter() - t
    del context
    if not np.isfinite(frames).all():
        raise FloatingPointError("the positions stopped being finite")
    return frames, seconds


def _block_rdfs(frames: np.ndarray, box: np.ndarray, blocks: int, bin_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """(r, g per block (B, R)) over ``blocks`` contiguous blocks of frames (NVT: one box)."""
    from openmm_cgnn.analysis import rdf

    parts = np.array_split(np.arange(len(frames)), blocks)
    gs = []
    for idx in parts:
        r, g = rdf(frames[idx], box, bin_width=bin_nm)
        gs.append(g)
    return r, np.array(gs)


def _mad(g_ref: np.ndarray, g: np.ndarray) -> float:
    support = np.maximum(g_ref, g) > 0
    return float(np.mean(np.abs(g - g_ref)[support]))


def _mad_with_error(g_a: np.ndarray, g_b: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict[str, float]:
    """RDF MAD between the block means of two runs and its bootstrap standard error over blocks."""
    value = _mad(g_a.mean(0), g_b.mean(0))
    boots = [_mad(g_a[rng.integers(0, len(g_a), len(g_a))].mean(0), g_b[rng.integers(0, len(g_b), len(g_b))].mean(0))
             for _ in range(n_boot)]
    return {"mad": value, "se": float(np.std(boots, ddof=1)) if n_boot > 1 else None}


def measure_structure(ctx: C.BenchmarkContext, model: C.ModelEntry, dt_single_fs: float, chosen: dict, mode: dict,
                      budget: C.Budget) -> dict[str, Any]:
    """RDF MAD: MTS vs single-step run A, and single-step B vs A (the noise floor)."""
    import openmm

    from openmm_cgnn.mts import langevin_integrator

    n = mode["structure_beads"] if model.fits(mode["structure_beads"]) else model.min_beads
    system, positions, edge = _split_system(model, n)
    box = np.eye(3) * edge
    state, step_s = _equilibrated(system, positions, ctx.platform, mode["equilibration_ps"])
    runs: dict[str, Any] = {}
    block_g: dict[str, np.ndarray] = {}
    r = None
    plan = [("single_a", dt_single_fs, 1, 11), ("single_b", dt_single_fs, 1, 12),
            ("mts", chosen["inner_fs"], chosen["substeps"], 13)]
    # the three runs are worth having only together: predict them from the equilibration's step time
    # (an MTS outer step costs about one single step: one network evaluation)
    run_ps = mode["equilibration_ps"] + mode["production_ps"]
    predicted = step_s * sum(run_ps / (inner_fs * k * 1e-3) for _, inner_fs, k, _ in plan)
    if not budget.allows(predicted):
        return {"n_beads": n, "status": f"skipped: time budget (needs ~{predicted:.0f} s)"}
    for name, inner_fs, k, seed in plan:
        if k == 1:
            integ = openmm.LangevinMiddleIntegrator(C.TEMPERATURE, 1.0, inner_fs * 1e-3)
            integ.setRandomNumberSeed(seed)
        else:
            integ = langevin_integrator(C.TEMPERATURE, 1.0, inner_fs * 1e-3, k, seed=seed)
        ctx.log(f"[{NAME}] {model.arch} x {n}: NVT run {name} (inner {inner_fs:g} fs, K = {k})")
        try:
            frames, seconds = _trajectory(system, state, integ, ctx.platform, mode, inner_fs * k * 1e-3)
        except Exception as exc:  # noqa: BLE001 - a blown-up run is a result
            runs[name] = {"status": "failed", "error": C.short_error(exc)}
            continue
        r, block_g[name] = _block_rdfs(frames, box, mode["blocks"], mode["rdf_bin_nm"])
        runs[name] = {"status": "ok", "inner_fs": inner_fs, "substeps": k, "seed": seed, "frames": len(frames),
                      "production_s": seconds}
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"n_beads": n, "box_nm": edge, "runs": runs, "blocks": mode["blocks"],
                           "production_ps": mode["production_ps"], "frame_ps": mode["frame_ps"],
                           "equilibration_ps": mode["equilibration_ps"], "rdf_bin_nm": mode["rdf_bin_nm"],
                           "rdf_r_max_nm": None if r is None else float(r[-1] + mode["rdf_bin_nm"] / 2)}
    if "single_a" in block_g and "mts" in block_g:
        out["mad_mts_vs_single"] = _mad_with_error(block_g["single_a"], block_g["mts"], mode["bootstrap"], rng)
    if "single_a" in block_g and "single_b" in block_g:
        out["mad_single_vs_single"] = _mad_with_error(block_g["single_a"], block_g["single_b"], mode["bootstrap"],
                                                      rng)
    a, b = out.get("mad_mts_vs_single"), out.get("mad_single_vs_single")
    if a and b and a["se"] is not None and b["se"] is not None:
        diff = a["mad"] - b["mad"]
        se = math.hypot(a["se"], b["se"])
        out["excess_mad"] = {"value": diff, "se": se, "z": diff / se if se > 0 else None}
    return out


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    s = ctx.settings
    mode = _mode(ctx)
    # per model: the drift runs and the timing share one budget, the structure runs get one of their own
    results: dict[str, Any] = {}
    single: dict[str, float] = {}
    for arch in ctx.archs():
        model = ctx.models.get(arch)
        budget = ctx.budget()
        res: dict[str, Any] = {}
        results[arch] = res
        ctx.log(f"[{NAME}] {arch}: NVE drift, one time step at {s.drift_timesteps_fs} fs and inner "
                f"{mode['inner_fs']} fs x K {mode['substeps']}")
        try:
            res["drift"] = measure_mts_drift(ctx, model, C.Budget(0.7 * budget.remaining()), mode)
        except Exception as exc:  # noqa: BLE001
            res["drift"] = {"status": "failed", "error": C.short_error(exc), "chosen": None, "single_step_fs": None}
        single[arch] = res["drift"].get("single_step_fs") or min(s.drift_timesteps_fs)
        res["single_step_fs"] = single[arch]
        if res["drift"].get("single_step_fs") is None:
            res["single_step_note"] = "no tested single time step met the drift threshold; the smallest one is used"
        if arch in ctx.shared.get("cg_timestep_fs", {}):
            res["throughput_benchmark_step_fs"] = ctx.shared["cg_timestep_fs"][arch]
        chosen = res["drift"].get("chosen")
        if not chosen:
            # as the throughput benchmark does with its time step: measure the smallest setting, and say so
            k = min(k for k in mode["substeps"] if k > 1)
            inner = mode["inner_fs"][0]
            chosen = {"inner_fs": inner, "substeps": k, "outer_fs": inner * k}
            res["chosen_note"] = (f"no MTS setting met the drift threshold; speed and structure are measured at the "
                                  f"smallest tested, {inner:g} fs x {k}")
        res["mts"] = chosen
        n = s.throughput_sizes[-1]
        if not model.fits(n):
            n = model.min_beads
        ctx.log(f"[{NAME}] {arch} x {n}: speed, single step {single[arch]:g} fs vs MTS "
                f"{chosen['inner_fs']:g} fs x {chosen['substeps']}")
        speed = C.guarded(lambda: measure_speed(model, n, ctx.platform, s, single[arch], chosen["inner_fs"],
                                             chosen["substeps"], budget))
        if speed.get("status") == "ok":
            speed["speedup"] = speed["mts"]["ns_per_day"] / speed["single"]["ns_per_day"]
            speed["outer_step_over_single_step_time"] = speed["mts"]["step_s"] / speed["single"]["step_s"]
        res["speed"] = speed
        if arch in mode["structure_archs"]:
            try:
                res["structure"] = measure_structure(ctx, model, single[arch], chosen, mode, ctx.budget())
            except Exception as exc:  # noqa: BLE001
                res["structure"] = {"status": "failed", "error": C.short_error(exc)}
        res["status"] = "ok"
    return {"models": results, "fast": "prior", "mode": dict(mode), "platform": ctx.platform_name,
            "note": "timings on the machine as it was (on a shared CPU the absolute numbers move by ~30 %; the "
                    "ratios compare runs made one after the other in the same process)"}


def markdown(res: dict[str, Any]) -> str:
    out = ["### 7. Multiple time stepping (fast: the model's prior every inner step; network every K)", ""]
    rows = []
    for arch, r in res["models"].items():
        sp = r.get("speed", {})
        single, mts = sp.get("single", {}), sp.get("mts", {})
        chosen = r.get("mts") or {}
        st = r.get("structure", {})
        a, b, ex = st.get("mad_mts_vs_single"), st.get("mad_single_vs_single"), st.get("excess_mad")
        rows.append([arch, r.get("single_step_fs"),
                     f"{C.fmt(chosen.get('inner_fs'))} x {chosen.get('substeps', '-')} = {C.fmt(chosen.get('outer_fs'))}"
                     + (" (none passed)" if r.get("chosen_note") else "") if chosen else r.get("status", "-"),
                     sp.get("n_beads"), single.get("ns_per_day") if single.get("status") == "ok" else single.get("status"),
                     mts.get("ns_per_day") if mts.get("status") == "ok" else mts.get("status"),
                     sp.get("outer_step_over_single_step_time"), sp.get("speedup"),
                     sp.get("aa", {}).get("ns_per_day"), single.get("over_aa"), mts.get("over_aa"),
                     f"{C.fmt(a['mad'])} +- {C.fmt(a['se'])}" if a else "-",
                     f"{C.fmt(b['mad'])} +- {C.fmt(b['se'])}" if b else "-",
                     f"{C.fmt(ex['value'])} +- {C.fmt(ex['se'])}" if ex else "-"])
    out.append(C.md_table(["model", "single step (fs)", "MTS inner x K = outer (fs)", "beads", "single ns/day",
                           "MTS ns/day", "cost of an outer step / a single step", "MTS / single (ns/day)",
                           "AA ns/day (2 fs)", "single / AA", "MTS / AA",
                           "RDF MAD MTS vs single", "RDF MAD single vs single", "excess MAD"], rows))
    drows = []
    for arch, r in res["models"].items():
        d = r.get("drift") or {}
        for row in d.get("rows", []):
            drows.append([arch, d.get("n_beads"), row["inner_fs"], row["substeps"], row["outer_fs"], row.get("nve_ps"),
                          row.get("drift_kT_per_ns_per_dof") if row.get("status") == "ok" else row.get("status"),
                          row.get("drift_stderr"), row.get("mean_temperature_K")])
        if "error" in d:
            drows.append([arch, "-", "-", "-", "-", "-", d["error"], "-", "-"])
    out += ["", "NVE drift (MTSIntegrator; K = 1 is one time step; all runs of a model from one state "
                "equilibrated at 2 fs):", "",
            C.md_table(["model", "beads", "inner (fs)", "K", "outer (fs)", "NVE ps", "drift (kT/ns/DOF)", "+-",
                        "T (K)"], drows)]
    thr = next((r["drift"].get("threshold_kT_per_ns_per_dof") for r in res["models"].values()
                if isinstance(r.get("drift"), dict) and "rows" in r["drift"]), None)
    st = next((r["structure"] for r in res["models"].values() if "runs" in r.get("structure", {})), None)
    clock = next((r["speed"].get("clock") for r in res["models"].values() if r.get("speed", {}).get("clock")), None)
    out += ["", f"Rule: the largest step with |drift| < {thr} kT/ns per degree of freedom, every smaller tested "
                "step (K = 1) or K at that inner step passing too. Speed: LangevinMiddle at the chosen single "
                "step against MTSLangevin at the chosen inner step and K and against all-atom methanol of as many "
                "molecules at 2 fs (the throughput benchmark's), timed in alternating chunks; ns/day from "
                + ("the process's CPU time per step (torch and OpenMM on one thread: the work done, not inflated by "
                   "other jobs on the machine)." if clock == "cpu" else "wall time per step.")]
    if st:
        out += [f"Structure: NVT at {C.TEMPERATURE:g} K, {st['n_beads']} beads, {C.fmt(st['equilibration_ps'])} ps "
                f"equilibration + {C.fmt(st['production_ps'])} ps per run, frames every {C.fmt(st['frame_ps'])} ps; "
                "RDF MAD (mean |g_1 - g_2| where either is non-zero, bins of "
                f"{C.fmt(st['rdf_bin_nm'])} nm) of the MTS run against single-step run A, and of single-step run B "
                f"(another seed) against A: the noise floor. +-: bootstrap over {st['blocks']} blocks of frames; "
                "excess MAD = MTS MAD - noise floor."]
    out += ["", res.get("note", "")]
    return "\n".join(out)
