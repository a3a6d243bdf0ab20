"""7. Multiple time stepping: the largest stable outer step, the speed it buys, and what it does to structure.

The CG System is split (``openmm_cgnn.mts``): the model's repulsive prior every inner step (fast
group), the model minus that prior every K inner steps (slow group).

1. **Stability.** From one state equilibrated at 2 fs, NVE runs with ``MTSIntegrator`` at each inner
   step and K; the same drift rule as the throughput benchmark: |drift| below ``drift_threshold``
   kT/ns per degree of freedom with no blow-up, every smaller tested K at that inner step passing
   too. The largest passing outer step (inner x K) is chosen. The one-time-step reference is the
   throughput benchmark's chosen step (measured here with its own drift runs if it did not run).
2. **Speed.** Step time of the single-step run (LangevinMiddle at its chosen step) and of the MTS run
   (MTSLangevin at the chosen inner step and K), one after the other in the same process, at the
   throughput size: ns/day and their ratio.
3. **Structure.** Three NVT runs from the same equilibrated state: two single-step runs with
   different seeds (A, B) and one MTS run. RDF MAD of MTS against A, next to the MAD of B against A
   (the noise floor of runs this long); standard errors from a bootstrap over blocks of frames.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from . import _common as C
from .throughput import _guard, measure_drift

NAME = "mts"

# per mode: inner steps (fs) and substeps K tried; structure-run size and lengths (ps)
MODES: dict[str, dict[str, Any]] = {
    "quick": {"inner_fs": [2.0], "substeps": [1, 2, 3, 4, 5], "structure_archs": ["tiny"], "structure_beads": 125,
              "equilibration_ps": 5.0, "production_ps": 20.0, "frame_ps": 0.1, "blocks": 10, "bootstrap": 200,
              "rdf_bin_nm": 0.01},
    "full": {"inner_fs": [2.0, 4.0], "substeps": [1, 2, 3, 4, 5, 6, 8], "structure_archs": ["tiny", "paper"],
             "structure_beads": 512, "equilibration_ps": 10.0, "production_ps": 100.0, "frame_ps": 0.2,
             "blocks": 10, "bootstrap": 200, "rdf_bin_nm": 0.01},
    "smoke": {"inner_fs": [2.0], "substeps": [1, 2], "structure_archs": ["tiny"], "structure_beads": 64,
              "equilibration_ps": 0.02, "production_ps": 0.08, "frame_ps": 0.02, "blocks": 2, "bootstrap": 20,
              "rdf_bin_nm": 0.02},
}


def _mode(ctx: C.Context) -> dict[str, Any]:
    return MODES.get(ctx.settings.mode, MODES["quick"])


def _split_system(model: C.ModelEntry, n: int, dtype: str = "float32"):
    """(System split into fast and slow groups, positions nm, edge nm) for a lattice of ``n`` beads."""
    from openmm_cgnn.system import create_system

    positions, edge = C.bead_lattice(n)
    top = C.cg_topology(n, edge, model.type_name)
    module, meta = model.load(dtype)
    system = create_system(top, (module, meta), masses=[C.METHANOL_MASS] * n, use_cuda_graphs=False,
                           mts_fast="prior")
    return system, positions, edge


def _equilibrated(system, positions: np.ndarray, platform, ps: float, seed: int = 3):
    """Positions and 300 K velocities after ``ps`` of LangevinMiddle at 2 fs (10/ps, then fresh velocities)."""
    import openmm.unit as u

    integ = C.langevin(0.002, seed)
    integ.setFriction(10.0 / u.picosecond)
    context = C.make_context(system, integ, platform, positions)
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, seed)
    integ.step(max(1, int(round(ps / 0.002))))
    context.setVelocitiesToTemperature(C.TEMPERATURE * u.kelvin, seed + 1)
    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    del context, integ
    return state


def measure_mts_drift(ctx: C.Context, model: C.ModelEntry, budget: C.Budget, mode: dict) -> dict[str, Any]:
    """NVE drift of the split System under MTSIntegrator for every (inner step, K), one start state."""
    from openmm_cgnn.mts import verlet_integrator

    s = ctx.settings
    n = max(s.drift_min_beads, model.min_beads)
    n = math.ceil(n ** (1.0 / 3.0) - 1e-9) ** 3
    system, positions, edge = _split_system(model, n)
    t = time.perf_counter()
    state = _equilibrated(system, positions, ctx.platform, s.drift_equilibration_ps)
    step_s = (time.perf_counter() - t) / max(1, int(round(s.drift_equilibration_ps / 0.002)))
    equilibrated = math.isfinite(state.getPotentialEnergy()._value)
    dof, kT = 3 * n, C.KB_KJ_PER_MOL_K * C.TEMPERATURE
    rows = []
    for inner_fs in mode["inner_fs"]:
        for k in mode["substeps"]:
            outer = inner_fs * k * 1e-3
            n_steps = max(10, int(round(s.drift_nve_ps / outer)))
            every = max(1, n_steps // s.drift_samples)
            predicted = step_s * n_steps * (1 + 1.0 / every) + 5 * step_s
            row: dict[str, Any] = {"inner_fs": inner_fs, "substeps": k, "outer_fs": inner_fs * k,
                                   "nve_ps": n_steps * outer, "outer_steps": n_steps, "sample_every": every}
            if not equilibrated:
                rows.append({**row, "status": "skipped: equilibration blew up"})
                continue
            if not budget.allows(predicted):
                rows.append({**row, "status": f"skipped: time budget (needs ~{predicted:.0f} s)"})
                continue
            integ = verlet_integrator(inner_fs * 1e-3, k)
            context = C.make_context(system, integ, ctx.platform, state.getPositions(asNumpy=True)._value)
            context.setVelocities(state.getVelocities())
            times, etot, ekin, finite, done = [], [], [], True, 0
            while done <= n_steps:
                st = context.getState(getEnergy=True)
                pe, ke = st.getPotentialEnergy()._value, st.getKineticEnergy()._value
                if not (math.isfinite(pe) and math.isfinite(ke)):
                    finite = False
                    break
                times.append(done * outer * 1e-3)  # ns
                etot.append(pe + ke)
                ekin.append(ke)
                integ.step(every)
                done += every
            del context, integ
            if not finite or len(times) < 3:
                rows.append({**row, "status": "blew up", "finite": False})
                continue
            slope, se = C.linear_fit(np.array(times), np.array(etot))
            ek = np.array(ekin)
            rows.append({**row, "status": "ok", "finite": True, "drift_kT_per_ns_per_dof": slope / (dof * kT),
                         "drift_stderr": se / (dof * kT),
                         "mean_temperature_K": float(2 * ek.mean() / (dof * C.KB_KJ_PER_MOL_K))})
    chosen = None
    for inner_fs in mode["inner_fs"]:
        passing = None
        for r in sorted((r for r in rows if r["inner_fs"] == inner_fs), key=lambda r: r["substeps"]):
            if r.get("status") != "ok" or not abs(r["drift_kT_per_ns_per_dof"]) < s.drift_threshold:
                break
            passing = r
        if passing and (chosen is None or passing["outer_fs"] > chosen["outer_fs"]):
            chosen = passing
    return {"n_beads": n, "box_nm": edge, "fast": "prior", "threshold_kT_per_ns_per_dof": s.drift_threshold,
            "dof": dof, "rows": rows,
            "chosen": None if chosen is None else {k: chosen[k] for k in ("inner_fs", "substeps", "outer_fs")}}


def measure_speed(model: C.ModelEntry, n: int, platform, settings: C.Settings, single_fs: float, inner_fs: float,
                  k: int, budget: C.Budget) -> dict[str, Any]:
    """Step times of the one-time-step run (LangevinMiddle, unsplit System) and of the MTS run
    (MTSLangevin, split System), timed in alternating chunks so that both see the same machine load."""
    import openmm.unit as u

    from openmm_cgnn.mts import langevin_integrator

    single_sys, positions, edge = C.cg_system(model, n)
    mts_sys, _, _ = _split_system(model, n)
    runs = {"single": (single_sys, C.langevin(single_fs * 1e-3), single_fs),
            "mts": (mts_sys, langevin_integrator(C.TEMPERATURE, 1.0, inner_fs * 1e-3, k, seed=1), inner_fs * k)}
    contexts, first = {}, {}
    for name, (system, integ, _) in runs.items():
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
    for _ in range(max(2, settings.max_chunks)):
        for name, (_, integ, _) in runs.items():
            t = time.perf_counter()
            integ.step(steps[name])
            C.context_sync(contexts[name])()
            per_step[name].append((time.perf_counter() - t) / steps[name])
        if budget.remaining() < 0:
            break
    out: dict[str, Any] = {"n_beads": n, "box_nm": edge, "timing": "alternating chunks, median per step"}
    for name, (_, _, step_fs) in runs.items():
        med = float(np.median(per_step[name]))
        energy = contexts[name].getState(getEnergy=True).getPotentialEnergy()._value
        out[name] = {"status": "ok", "step_fs": step_fs, "step_s": med, "step_s_min": min(per_step[name]),
                     "step_s_max": max(per_step[name]), "chunks": len(per_step[name]),
                     "steps_per_chunk": steps[name], "ns_per_day": C.ns_per_day(med, step_fs * 1e-3),
                     "finite": bool(math.isfinite(energy))}
    out["single"]["integrator"] = "LangevinMiddle"
    out["mts"].update(integrator="MTSLangevin", inner_fs=inner_fs, substeps=k)
    del contexts
    return out


def _trajectory(system, state, integrator, platform, mode: dict, outer_ps: float) -> tuple[np.ndarray, float]:
    """Frames (F, N, 3) nm of an NVT run from ``state`` (equilibration, then production), and seconds."""
    context = C.make_context(system, integrator, platform, state.getPositions(asNumpy=True)._value)
    context.setVelocities(state.getVelocities())
    per_frame = max(1, int(round(mode["frame_ps"] / outer_ps)))
    integrator.step(int(round(mode["equilibration_ps"] / outer_ps)))
    n_frames = int(round(mode["production_ps"] / mode["frame_ps"]))
    frames = np.empty((n_frames, system.getNumParticles(), 3))
    t = time.perf_counter()
    for f in range(n_frames):
        integrator.step(per_frame)
        frames[f] = context.getState(getPositions=True).getPositions(asNumpy=True)._value
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


def measure_structure(ctx: C.Context, model: C.ModelEntry, dt_single_fs: float, chosen: dict, mode: dict,
                      budget: C.Budget) -> dict[str, Any]:
    """RDF MAD: MTS vs single-step run A, and single-step B vs A (the noise floor)."""
    import openmm

    from openmm_cgnn.mts import langevin_integrator

    n = mode["structure_beads"] if model.fits(mode["structure_beads"]) else model.min_beads
    system, positions, edge = _split_system(model, n)
    box = np.eye(3) * edge
    state = _equilibrated(system, positions, ctx.platform, mode["equilibration_ps"])
    runs: dict[str, Any] = {}
    block_g: dict[str, np.ndarray] = {}
    r = None
    plan = [("single_a", dt_single_fs, 1, 11), ("single_b", dt_single_fs, 1, 12),
            ("mts", chosen["inner_fs"], chosen["substeps"], 13)]
    for name, inner_fs, k, seed in plan:
        if budget.remaining() <= 0:
            runs[name] = {"status": "skipped: time budget"}
            continue
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


def run(ctx: C.Context) -> dict[str, Any]:
    s = ctx.settings
    mode = _mode(ctx)
    budget = ctx.budget()
    results: dict[str, Any] = {}
    single = dict(ctx.shared.get("cg_timestep_fs", {}))
    for arch in ctx.archs():
        model = ctx.models.get(arch)
        res: dict[str, Any] = {}
        results[arch] = res
        if arch not in single:
            ctx.log(f"[{NAME}] {arch}: single-step NVE drift at {s.drift_timesteps_fs} fs")
            d = measure_drift(ctx, model, C.Budget(0.2 * budget.remaining()))
            single[arch] = d["chosen_timestep_fs"]
            res["single_step_drift"] = d
        res["single_step_fs"] = single[arch]
        ctx.log(f"[{NAME}] {arch}: MTS NVE drift, inner {mode['inner_fs']} fs x K {mode['substeps']}")
        try:
            res["drift"] = measure_mts_drift(ctx, model, C.Budget(0.35 * budget.remaining()), mode)
        except Exception as exc:  # noqa: BLE001
            res["drift"] = {"status": "failed", "error": C.short_error(exc), "chosen": None}
        chosen = res["drift"].get("chosen")
        if not chosen:
            res["status"] = "no MTS setting met the drift threshold"
            continue
        n = s.throughput_sizes[-1]
        if not model.fits(n):
            n = model.min_beads
        ctx.log(f"[{NAME}] {arch} x {n}: speed, single step {single[arch]:g} fs vs MTS "
                f"{chosen['inner_fs']:g} fs x {chosen['substeps']}")
        speed = _guard(lambda: measure_speed(model, n, ctx.platform, s, single[arch], chosen["inner_fs"],
                                             chosen["substeps"], budget))
        if speed.get("status") == "ok":
            speed["speedup"] = speed["mts"]["ns_per_day"] / speed["single"]["ns_per_day"]
            speed["outer_step_over_single_step_time"] = speed["mts"]["step_s"] / speed["single"]["step_s"]
        res["speed"] = speed
        if arch in mode["structure_archs"] and budget.remaining() > 0:
            try:
                res["structure"] = measure_structure(ctx, model, single[arch], chosen, mode, budget)
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
        chosen = (r.get("drift") or {}).get("chosen") or {}
        st = r.get("structure", {})
        a, b, ex = st.get("mad_mts_vs_single"), st.get("mad_single_vs_single"), st.get("excess_mad")
        rows.append([arch, r.get("single_step_fs"),
                     f"{C.fmt(chosen.get('inner_fs'))} x {chosen.get('substeps', '-')} = {C.fmt(chosen.get('outer_fs'))}"
                     if chosen else r.get("status", "-"),
                     sp.get("n_beads"), single.get("ns_per_day") if single.get("status") == "ok" else single.get("status"),
                     mts.get("ns_per_day") if mts.get("status") == "ok" else mts.get("status"), sp.get("speedup"),
                     f"{C.fmt(a['mad'])} +- {C.fmt(a['se'])}" if a else "-",
                     f"{C.fmt(b['mad'])} +- {C.fmt(b['se'])}" if b else "-",
                     f"{C.fmt(ex['value'])} +- {C.fmt(ex['se'])}" if ex else "-"])
    out.append(C.md_table(["model", "single step (fs)", "MTS inner x K = outer (fs)", "beads", "single ns/day",
                           "MTS ns/day", "MTS / single", "RDF MAD MTS vs single", "RDF MAD single vs single",
                           "excess MAD"], rows))
    drows = []
    for arch, r in res["models"].items():
        d = r.get("drift") or {}
        for row in d.get("rows", []):
            drows.append([arch, d.get("n_beads"), row["inner_fs"], row["substeps"], row["outer_fs"], row.get("nve_ps"),
                          row.get("drift_kT_per_ns_per_dof") if row.get("status") == "ok" else row.get("status"),
                          row.get("drift_stderr"), row.get("mean_temperature_K")])
        if "error" in d:
            drows.append([arch, "-", "-", "-", "-", "-", d["error"], "-", "-"])
    out += ["", "MTS NVE drift (MTSIntegrator, from a state equilibrated at 2 fs):", "",
            C.md_table(["model", "beads", "inner (fs)", "K", "outer (fs)", "NVE ps", "drift (kT/ns/DOF)", "+-",
                        "T (K)"], drows)]
    thr = next((r["drift"].get("threshold_kT_per_ns_per_dof") for r in res["models"].values()
                if isinstance(r.get("drift"), dict) and "rows" in r["drift"]), None)
    st = next((r["structure"] for r in res["models"].values() if "runs" in r.get("structure", {})), None)
    out += ["", f"Rule: the largest outer step with |drift| < {thr} kT/ns per degree of freedom, every smaller K at "
                "that inner step passing too. Speed: LangevinMiddle at the single-step run's chosen step vs "
                "MTSLangevin at the chosen inner step and K, timed one after the other."]
    if st:
        out += [f"Structure: NVT at {C.TEMPERATURE:g} K, {st['n_beads']} beads, {C.fmt(st['equilibration_ps'])} ps "
                f"equilibration + {C.fmt(st['production_ps'])} ps per run, frames every {C.fmt(st['frame_ps'])} ps; "
                "RDF MAD (mean |g_1 - g_2| where either is non-zero, bins of "
                f"{C.fmt(st['rdf_bin_nm'])} nm) of the MTS run against single-step run A, and of single-step run B "
                f"(another seed) against A: the noise floor. +-: bootstrap over {st['blocks']} blocks of frames; "
                "excess MAD = MTS MAD - noise floor."]
    out += ["", res.get("note", "")]
    return "\n".join(out)
