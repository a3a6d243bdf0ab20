"""4. Precision and CUDA options: float32 vs float64 export (CG step time and the force difference
between the two on the same positions), and openmm-torch's CUDA graphs on/off (CUDA only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _common as C

NAME = "precision"


def _forces(model: C.ModelEntry, dtype: str, positions: np.ndarray, edge: float, device: str):
    import torch

    module, _ = model.load(dtype, device)
    x = torch.tensor(positions, dtype=torch.float64, device=device, requires_grad=True)
    energy = module(x, torch.eye(3, dtype=torch.float64, device=device) * edge)
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.double().cpu().numpy()


def run(ctx: C.BenchmarkContext) -> dict[str, Any]:
    s = ctx.settings
    budget = ctx.budget()
    rows = []
    timesteps = ctx.shared.get("cg_timestep_fs", {})
    cuda = ctx.platform_name == "CUDA"
    for arch in ctx.archs():
        model = ctx.models.get(arch)
        n = s.precision_size if model.fits(s.precision_size) else C.min_beads_for_cutoff(model.cutoff_nm)
        dt = timesteps.get(arch, 2.0) * 1e-3
        row: dict[str, Any] = {"model": arch, "n_beads": n}
        ctx.log(f"[{NAME}] {arch} x {n}: float32 / float64")
        for dtype in ("float32", "float64"):
            row[dtype] = C.guarded(lambda: C.time_cg(model, n, ctx.platform, s, dt, budget, dtype=dtype)) \
                if budget.remaining() > 0 else {"status": "skipped: time budget"}
        if row["float32"].get("status") == "ok" and row["float64"].get("status") == "ok":
            row["float64_over_float32"] = row["float64"]["step_s"] / row["float32"]["step_s"]
        try:
            _, positions, edge = C.bead_lattice(n)
            e32, f32 = _forces(model, "float32", positions, edge, ctx.device)
            e64, f64 = _forces(model, "float64", positions, edge, ctx.device)
            row["accuracy"] = {"energy_abs_diff_kJ_mol": abs(e32 - e64), "energy_kJ_mol": e64,
                               "force_max_abs_diff": float(np.max(np.abs(f32 - f64))),
                               "force_rms_diff": float(np.sqrt(np.mean((f32 - f64) ** 2))),
                               "force_rms": float(np.sqrt(np.mean(f64 ** 2))),
                               "force_max_rel_diff": float(np.max(np.abs(f32 - f64)) / np.max(np.abs(f64))),
                               "units": "kJ/mol, kJ/mol/nm"}
        except Exception as exc:  # noqa: BLE001
            row["accuracy"] = {"status": "failed", "error": C.short_error(exc)}
        if cuda:
            ctx.log(f"[{NAME}] {arch} x {n}: CUDA graphs off / on")
            for flag in (False, True):
                row[f"cuda_graphs_{'on' if flag else 'off'}"] = C.guarded(
                    lambda: C.time_cg(model, n, ctx.platform, s, dt, budget, use_cuda_graphs=flag)) \
                    if budget.remaining() > 0 else {"status": "skipped: time budget"}
            on, off = row["cuda_graphs_on"], row["cuda_graphs_off"]
            if on.get("status") == "ok" and off.get("status") == "ok":
                row["cuda_graphs_speedup"] = off["step_s"] / on["step_s"]
        else:
            row["cuda_graphs_off"] = row["cuda_graphs_on"] = {"status": "skipped: no CUDA"}
        rows.append(row)
    return {"rows": rows, "platform": ctx.platform_name,
            "note": "openmm-torch gets positions in the platform's precision; the module casts them to its dtype"}


def markdown(res: dict[str, Any]) -> str:
    def cell(r: dict) -> Any:
        return r["step_s"] * 1e3 if r.get("status") == "ok" else r.get("status", "-") + (
            f" ({r['error']})" if "error" in r else "")

    rows = []
    for r in res["rows"]:
        acc = r.get("accuracy", {})
        rows.append([r["model"], r["n_beads"], cell(r["float32"]), cell(r["float64"]), r.get("float64_over_float32"),
                     acc.get("force_max_rel_diff", acc.get("status")), cell(r["cuda_graphs_off"]),
                     cell(r["cuda_graphs_on"])])
    return "\n".join(["### 4. Precision and CUDA options (CG step time, ms)", "",
                      C.md_table(["model", "beads", "float32", "float64", "f64/f32",
                                  "max |F32-F64| / max |F64|", "CUDA graphs off", "CUDA graphs on"], rows)])
