"""Plots and Markdown: the figures and text of a comparison report (``harness``), of a
transferability study (``study``) and the tables of the benchmarks.

Every function reads plain dictionaries and arrays (a ``report.json``, the study rows, curves in nm,
degrees, g/cm^3) and writes PNG files atomically or returns Markdown text; nothing here runs a
simulation or computes a statistic (those are in ``analysis``). The files and their content are
described in ``docs/formats.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .files import atomic_write
from .statepoints import StatePoint, _T_TOL, _num

__all__ = [
    "markdown_table", "format_number",
    "plot_rdfs", "plot_adfs", "plot_density_vs_temperature",
    "write_harness_plots", "summary_lines", "metrics_table_markdown", "harness_markdown",
    "write_study_plots", "study_markdown",
]


def _fmt(v: Any, spec: str = ".4f", missing: str = "\u2014") -> str:
    return missing if v is None else format(v, spec)


# ---------------------------------------------------------------------------------------------
# Markdown tables (the benchmarks)
# ---------------------------------------------------------------------------------------------
def format_number(x: Any, digits: int = 3) -> str:
    """A table cell: None as "-", booleans as yes/no, floats to ``digits`` significant digits (scientific
    notation outside 10^-digits..10^digits)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        mag = abs(x)
        if mag >= 10 ** digits or mag < 10 ** -(digits):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if mag < 1 else f"{x:.{max(digits - int(math.log10(mag)) - 1, 0)}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: one header row, then ``rows`` (strings as they are, other cells through
    :func:`format_number`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_number(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# curve plots (matplotlib's object API with the Agg canvas: no pyplot state, no backend switch)
# ---------------------------------------------------------------------------------------------
_REF_STYLE = dict(color="black", lw=1.6)
_CG_STYLE = dict(color="tab:red", lw=1.4, ls="--")


def _figure(n_panels: int, ncols: int | None, panel_size: tuple[float, float]):
    from matplotlib.figure import Figure

    ncols = max(1, min(n_panels, ncols or 3))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig, path: str | Path, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _note(ax, text: str) -> None:
    """A framed text box placed where it hides the least data (legend's loc="best" search)."""
    from matplotlib.lines import Line2D

    lines = text.split("\n")
    blank = [Line2D([], [], linestyle="none")] * len(lines)
    ax.legend(blank, lines, loc="best", handlelength=0, handletextpad=0, fontsize=8.5,
              framealpha=0.9, edgecolor="0.8", borderpad=0.4, labelspacing=0.2)


_BAND_LABEL = "noise band: \u00b12\u03c3 of g_CG \u2212 g_AA"


def _overlay_panels(curves, path, *, ref_label, cg_label, title, ncols, dpi, decorate, note, extra=None,
                    bands=None) -> Path:
    """Shared layout of plot_rdfs/plot_adfs: one panel per entry, one legend for the figure."""
    if not curves:
        raise ValueError("no curves to plot")
    fig, axes = _figure(len(curves), ncols, (4.2, 3.2))
    handles: dict[str, Any] = {}
    for ax, (label, (x, y_ref, y_cg)) in zip(axes, curves.items()):
        if bands and bands.get(label) is not None:
            lo, hi = bands[label]
            handles[_BAND_LABEL] = ax.fill_between(x, lo, hi, color="0.82", lw=0, zorder=0)
        if y_ref is not None:
            handles[ref_label], = ax.plot(x, y_ref, **_REF_STYLE)
        if y_cg is not None:
            handles[cg_label], = ax.plot(x, y_cg, **_CG_STYLE)
        decorate(ax, x)
        ax.set_title(str(label), fontsize=10)
        ax.set_ylim(0, 1.12 * ax.get_ylim()[1])           # headroom for the metric box
        if y_ref is not None and y_cg is not None:
            try:
                text = note(x, y_ref, y_cg)
            except ValueError:
                text = None
            more = (extra or {}).get(label)
            if text or more:
                _note(ax, "\n".join(t for t in (text, more) if t))
    # one legend below the panels, where it can never hide data
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=max(1, len(handles)), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_rdfs(curves: Mapping[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], path: str | Path, *,
              ref_label: str = "all-atom (mapped)", cg_label: str = "CG (GNN)", title: str | None = None,
              ncols: int | None = None, dpi: int = 150, extra: Mapping[str, str] | None = None,
              bands: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """One panel per state point: reference and CG g(r) overlaid, written as a PNG.

    curves : {panel title (e.g. "300 K, 0.79 g/cm3") -> (r nm, g_ref, g_cg)}; either g may be None.
    Panels with both curves show ``rdf_metrics``' MAD and first-peak errors; ``extra`` {panel title ->
    text} adds lines to a panel's box (the harness: standard error and noise floor); ``bands`` {panel
    title -> (lower, upper) on the panel's r} draws a grey band behind the curves (the harness: g_AA
    \u00b1 2 sqrt(SE_AA\u00b2 + SE_CG\u00b2) per bin, where the CG curve is within noise). Returns ``path``.
    """
    def decorate(ax, r):
        ax.axhline(1.0, color="0.6", lw=0.7, ls=":")
        ax.set_xlim(0, float(np.max(r)))
        ax.set_xlabel("r (nm)")
        ax.set_ylabel("g(r)")

    def note(r, g_ref, g_cg):
        from .analysis import rdf_metrics

        m = rdf_metrics(r, g_ref, g_cg)
        return (f"MAD {m['mad']:.3f}\npeak \u0394r {m['peak_position_error']:+.3f} nm\n"
                f"peak \u0394g {m['peak_height_error']:+.2f}")

    return _overlay_panels(curves, path, ref_label=ref_label, cg_label=cg_label, title=title,
                           ncols=ncols, dpi=dpi, decorate=decorate, note=note, extra=extra, bands=bands)


def plot_adfs(curves: Mapping[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], path: str | Path, *,
              ref_label: str = "all-atom (mapped)", cg_label: str = "CG (GNN)", title: str | None = None,
              ncols: int | None = None, dpi: int = 150, extra: Mapping[str, str] | None = None) -> Path:
    """One panel per state point: reference and CG ADF P(theta) overlaid, written as a PNG.

    curves : {panel title -> (theta degrees, p_ref 1/degree, p_cg 1/degree)}; either p may be None.
    Panels with both curves show ``adf_l1``; ``extra`` as in ``plot_rdfs``. Returns ``path``.
    """
    def decorate(ax, theta):
        ax.set_xlim(0, 180)
        ax.set_xticks(np.arange(0, 181, 30))
        ax.set_xlabel("\u03b8 (degrees)")
        ax.set_ylabel("P(\u03b8) (1/degree)")

    def note(theta, p_ref, p_cg):
        from .analysis import adf_l1

        return f"L1 {adf_l1(p_ref, p_cg, theta):.3f}"

    return _overlay_panels(curves, path, ref_label=ref_label, cg_label=cg_label, title=title,
                           ncols=ncols, dpi=dpi, decorate=decorate, note=note, extra=extra)


def plot_density_vs_temperature(rows: Iterable[Mapping[str, Any]], path: str | Path, *,
                                ref_label: str = "all-atom", cg_label: str = "CG (GNN)",
                                title: str | None = "Density vs temperature", dpi: int = 150) -> Path:
    """Density (g/cm^3) against temperature (K) for all-atom and CG runs, with error bars, as a PNG.

    rows : one mapping per state point with ``temperature_K`` and any of ``ref_mean``, ``ref_se``,
        ``cg_mean``, ``cg_se`` (g/cm^3; a missing or None/NaN mean leaves the point out, a missing
        standard error draws no bar), optionally ``training`` (True marks a temperature the CG
        model was trained at, drawn as a grey band). Returns ``path``.
    """
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda row: float(row["temperature_K"]))
    if not rows:
        raise ValueError("no rows to plot")

    def series(key: str):
        t, y, e = [], [], []
        for row in rows:
            v = row.get(f"{key}_mean")
            if v is None or not np.isfinite(v):
                continue
            se = row.get(f"{key}_se")
            t.append(float(row["temperature_K"]))
            y.append(float(v))
            e.append(float(se) if se is not None and np.isfinite(se) else 0.0)
        return np.array(t), np.array(y), np.array(e)

    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.subplots()
    temps = [float(row["temperature_K"]) for row in rows]
    span = (max(temps) - min(temps)) or 100.0
    trained = False
    for row in rows:
        if row.get("training"):
            t = float(row["temperature_K"])
            ax.axvspan(t - 0.015 * span, t + 0.015 * span, color="0.88", zorder=0,
                       label=None if trained else "training T")
            trained = True
    for key, label, style in (("ref", ref_label, dict(color="black", marker="o", ls="-")),
                              ("cg", cg_label, dict(color="tab:red", marker="s", ls="--", mfc="none"))):
        t, y, e = series(key)
        if len(t):
            ax.errorbar(t, y, yerr=e, capsize=3, ms=5, lw=1.3, label=label, **style)
    ax.set_xlabel("T (K)")
    ax.set_ylabel("density (g/cm\u00b3)")
    ax.set_xlim(min(temps) - 0.08 * span, max(temps) + 0.08 * span)
    ax.legend(fontsize=9, frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# the comparison report (harness)
# ---------------------------------------------------------------------------------------------
def _panel_title(res: dict[str, Any], extra: str | None = None) -> str:
    title = res["title"]
    if res.get("in_training"):
        title += " [training]"
    if extra:
        title += "\n" + extra
    if res["status"] == "blew_up":
        title += "\nCG blew up"
    elif res["status"] == "failed":
        title += "\nfailed"
    return title


def _message_png(path: Path, text: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_harness_plots(out: Path, results: list[dict[str, Any]], curves: list[dict[str, np.ndarray]],
                 trained_temperatures: Sequence[float] = (), cg_label: str = "CG (GNN)") -> dict[str, str]:
    files = {"rdf_plot": "rdf.png", "adf_plot": "adf.png", "density_plot": "density.png"}
    rdfs = {_panel_title(res): (c["r"], c["g_ref"], c.get("g_cg")) for res, c in zip(results, curves) if "r" in c}
    rdf_extra = {_panel_title(res): _error_note(res["rdf"], "mad") for res in results}
    rdf_bands = {_panel_title(res): _noise_band(c.get("g_ref"), c.get("g_ref_se"), c.get("g_cg_se"))
                 for res, c in zip(results, curves)}
    if rdfs:
        plot_rdfs(rdfs, out / "rdf.png", title="Bead-bead radial distribution function", cg_label=cg_label,
                  extra=rdf_extra, bands=rdf_bands)
    else:
        _message_png(out / "rdf.png", "no RDF: no state point has a reference")
    adfs = {_panel_title(res, f"shell < {res['adf']['shell_cutoff_nm']:.3f} nm"):
            (c["theta"], c["p_ref"], c.get("p_cg")) for res, c in zip(results, curves) if "theta" in c}
    adf_extra = {_panel_title(res, f"shell < {res['adf']['shell_cutoff_nm']:.3f} nm"): _error_note(res["adf"], "l1")
                 for res in results if res["adf"].get("shell_cutoff_nm") is not None}
    if adfs:
        plot_adfs(adfs, out / "adf.png", title="First-shell angle distribution", cg_label=cg_label, extra=adf_extra)
    else:
        _message_png(out / "adf.png", "no ADF: no state point has a reference with a first RDF minimum")
    groups: dict[float, list[dict[str, Any]]] = {}
    for res in results:
        if res["state"]["ensemble"] == "NPT" and res["density"]["ref_mean"] is not None:
            d = res["density"]
            groups.setdefault(res["state"]["pressure_bar"], []).append(
                {"temperature_K": res["state"]["temperature_K"], "ref_mean": d["ref_mean"], "ref_se": d["ref_se"],
                 "cg_mean": d["cg_mean"], "cg_se": d["cg_se"],
                 "training": any(abs(res["state"]["temperature_K"] - t) <= _T_TOL for t in trained_temperatures)})
    if not groups:
        _message_png(out / "density.png", "No NPT state point: every density was imposed (NVT).\n"
                                          "Add e.g. 300K:1bar to compare densities.")
    for k, (pressure, rows) in enumerate(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
        name = "density.png" if k == 0 else f"density-{_num(pressure)}bar.png"
        plot_density_vs_temperature(rows, out / name, title=f"Density at {_num(pressure)} bar (NPT)",
                                      ref_label="all-atom (mapped)", cg_label=cg_label)
        if k:
            files[f"density_plot_{_num(pressure)}bar"] = name
    return files


def _noise_band(y_ref: np.ndarray | None, se_ref: np.ndarray | None, se_cg: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(lower, upper): y_ref \u00b1 2 sqrt(se_ref\u00b2 + se_cg\u00b2) per bin (the CG side's error 0 when it has
    none; the lower edge not below 0); None without the reference's errors."""
    if y_ref is None or se_ref is None:
        return None
    half = 2.0 * np.sqrt(np.asarray(se_ref) ** 2 + (np.asarray(se_cg) ** 2 if se_cg is not None else 0.0))
    return np.maximum(np.asarray(y_ref) - half, 0.0), np.asarray(y_ref) + half


def _error_note(metrics: Mapping[str, Any], key: str) -> str | None:
    """"SE 0.004, floor 0.012 ± 0.002" for a panel's box, from a report's ``<key>_se`` and
    ``<key>_noise_floor`` entries (None when there are neither)."""
    parts = []
    if metrics.get(f"{key}_se") is not None:
        parts.append(f"SE {metrics[f'{key}_se']:.3f}")
    if metrics.get(f"{key}_noise_floor") is not None:
        se = metrics.get(f"{key}_noise_floor_se")
        parts.append(f"floor {metrics[f'{key}_noise_floor']:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
    return ", ".join(parts) or None


def _with_se(value: Any, se: Any, spec: str) -> str:
    """"0.0532 ± 0.0021" (value and its standard error), "0.0532" without an error, "—" without a value."""
    if value is None:
        return _fmt(None)
    return format(value, spec) + (f" ± {format(se, spec.lstrip('+'))}" if se is not None else "")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Three lines with the key errors: RDF, ADF, density (used by the demo and report.md)."""
    sps = report["state_points"]
    done = [s for s in sps if s["status"] == "complete" and s["rdf"]["mad"] is not None]
    bad = [s for s in sps if s["status"] != "complete"]
    head = ""
    if bad:
        head = (f"{len(sps) - len(bad)}/{len(sps)} state points complete ("
                + ", ".join(f"{s['label']} {s['status'].replace('_', ' ')}" for s in bad) + "). ")
    if done:
        worst = max(done, key=lambda s: s["rdf"]["mad"])
        mean_mad = float(np.mean([s["rdf"]["mad"] for s in done]))
        dr = max(abs(s["rdf"]["peak_position_error"]) for s in done)
        dg = max(abs(s["rdf"]["peak_height_error"]) for s in done)
        line1 = (f"{head}RDF: mean |g_CG - g_AA| {mean_mad:.3f} (worst {worst['rdf']['mad']:.3f} at "
                 f"{worst['label']}); first peak off by up to {dr:.3f} nm and {dg:.2f} in height.")
        floors = [s["rdf"].get("mad_noise_floor") for s in done]
        if all(f is not None for f in floors):
            line1 += (f" Noise floor (two all-atom halves, scaled): {float(np.mean(floors)):.3f} on average; "
                      f"{_n_above_floor(done, 'rdf', 'mad')} of {len(done)} state points above it by 2 sigma.")
    else:
        line1 = f"{head}RDF: no CG run completed, nothing to compare."
    with_adf = [s for s in done if s["adf"]["l1"] is not None]
    if with_adf:
        worst = max(with_adf, key=lambda s: s["adf"]["l1"])
        line2 = (f"ADF: L1 distance {np.mean([s['adf']['l1'] for s in with_adf]):.3f} on average (worst "
                 f"{worst['adf']['l1']:.3f} at {worst['label']}; 0 = identical, 2 = disjoint).")
    else:
        line2 = "ADF: no comparison (no completed CG run with a first-shell cutoff)."
    npt = [s for s in done if s["state"]["ensemble"] == "NPT" and s["density"]["relative_error"] is not None]
    if npt:
        parts = [f"{s['label']} {100 * s['density']['relative_error']:+.1f}"
                 + (f" \u00b1 {100 * s['density']['relative_error_se']:.1f}"
                    if s["density"]["relative_error_se"] is not None else "") + " %" for s in npt]
        line3 = "Density (NPT, CG vs all-atom): " + "; ".join(parts) + "."
    elif any(s["state"]["ensemble"] == "NPT" for s in sps):
        line3 = "Density: no NPT CG run completed, nothing to compare."
    else:
        line3 = "Density: no NPT state point (NVT densities are imposed, not predicted)."
    nvt_p = [s for s in done if s["state"]["ensemble"] == "NVT" and (s.get("pressure") or {}).get("difference")
             is not None]
    if nvt_p:
        line3 += " Pressure (NVT, CG - all-atom): " + "; ".join(
            f"{s['label']} {s['pressure']['difference']:+.0f}"
            + (f" \u00b1 {s['pressure']['difference_se']:.0f}" if s["pressure"]["difference_se"] is not None else "")
            + " bar" for s in nvt_p) + "."
    return [line1, line2, line3]


def _n_above_floor(states: Sequence[Mapping[str, Any]], group: str, key: str) -> int:
    """How many state points have ``group.key`` above its noise floor by more than 2 combined standard errors."""
    from .analysis import significant_difference

    return sum(1 for s in states if significant_difference(
        s[group].get(key), s[group].get(f"{key}_se"), s[group].get(f"{key}_noise_floor"),
        s[group].get(f"{key}_noise_floor_se")) == 1)


def _floor_cell(metrics: Mapping[str, Any], key: str, spec: str) -> str:
    return _with_se(metrics.get(f"{key}_noise_floor"), metrics.get(f"{key}_noise_floor_se"), spec)


def metrics_table_markdown(report: dict[str, Any]) -> str:
    """The metrics of every state point as a Markdown table."""
    head = ("| state point | ensemble | trained here | status | RDF MAD | RDF MAD floor | RDF max \\|\u0394g\\| "
            "| peak \u0394r (nm) | peak \u0394g | ADF L1 | ADF L1 floor | \u03c1 AA (g/cm\u00b3) "
            "| \u03c1 CG (g/cm\u00b3) | \u03c1 error (%) | P AA (bar) | P CG (bar) |")
    rows = [head, "|" + "---|" * 16]
    for s in report["state_points"]:
        r, a, d = s["rdf"], s["adf"], s["density"]
        if d["fixed"]:
            rho_aa = f"{_fmt(d['ref_mean'], '.3f')} (fixed)"
            rho_cg = "(fixed)"
            err = "\u2014"
        else:
            rho_aa = _fmt(d["ref_mean"], ".3f") + (f" \u00b1 {d['ref_se']:.3f}" if d["ref_se"] is not None else "")
            rho_cg = _fmt(d["cg_mean"], ".3f") + (f" \u00b1 {d['cg_se']:.3f}" if d["cg_se"] is not None else "")
            err = _fmt(None if d["relative_error"] is None else 100 * d["relative_error"], "+.2f")
            if d["relative_error_se"] is not None:
                err += f" \u00b1 {100 * d['relative_error_se']:.2f}"
        rows.append("| " + " | ".join([
            s["label"], s["state"]["ensemble"], "yes" if s["in_training"] else "no", s["status"].replace("_", " "),
            _with_se(r["mad"], r.get("mad_se"), ".4f"), _floor_cell(r, "mad", ".4f"),
            _with_se(r["max_abs_dev"], r.get("max_abs_dev_se"), ".3f"),
            _with_se(r["peak_position_error"], r.get("peak_position_error_se"), "+.4f"),
            _with_se(r["peak_height_error"], r.get("peak_height_error_se"), "+.3f"),
            _with_se(a["l1"], a.get("l1_se"), ".3f"), _floor_cell(a, "l1", ".3f"), rho_aa, rho_cg, err,
            _pressure_cell(s, "ref"), _pressure_cell(s, "cg")]) + " |")
    return "\n".join(rows) + "\n"


def _by_type_markdown(report: dict[str, Any]) -> list[str]:
    """Composition, partial RDFs and per-centre ADFs, for models with several bead types."""
    rows = []
    for sp in report["state_points"]:
        bt = sp.get("by_type") or {}
        if not bt.get("rdf") and not bt.get("adf"):
            continue
        comp = ", ".join(f"{k} {v}" for k, v in (bt.get("composition") or {}).items())
        rdfs = ", ".join(f"{k} {_with_se(v.get('mad'), v.get('mad_se'), '.3f')}"
                         + (f" (floor {v['mad_noise_floor']:.3f})" if v.get("mad_noise_floor") is not None else "")
                         for k, v in bt["rdf"].items())
        adfs = ", ".join(f"{k} {_with_se(v.get('l1'), v.get('l1_se'), '.3f')}"
                         + (f" (floor {v['l1_noise_floor']:.3f})" if v.get("l1_noise_floor") is not None else "")
                         for k, v in bt.get("adf", {}).items())
        rows.append(f"| {sp['label']} | {comp} | {rdfs} | {adfs or _fmt(None, '')} |")
    if not rows:
        return []
    return ["## By bead type", "", "| state point | composition (beads) | partial RDF MAD | ADF L1 by centre type |",
            "| --- | --- | --- | --- |", *rows, ""]


def _pressure_cell(s: dict[str, Any], side: str) -> str:
    p = s.get("pressure") or {}
    mean, se = p.get(f"{side}_mean"), p.get(f"{side}_se")
    return _fmt(mean, ".0f") + (f" \u00b1 {se:.0f}" if se is not None and mean is not None else "")


def _setting(config: dict[str, Any], part: str, key: str) -> Any:
    """A run setting of a report's ``config``: ``config[part][key]``, or the flat ``aa_``/``cg_`` key of
    reports written before the harness configuration was composed."""
    if isinstance(config.get(part), dict):
        return config[part][key]
    return config[("aa_" if part == "reference" else "cg_") + key]


def harness_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    trained = ", ".join(StatePoint(s["temperature_K"], s.get("density_g_cm3") if s.get("pressure_bar") is None
                                   else None, s.get("pressure_bar")).label()
                        for s in m.get("training_state_points") or [] if s.get("temperature_K"))
    cfg = report["config"]
    kind = (f"{m.get('network_class')}, tensor order {m.get('tensor_order')}" if m.get("kind") != "pair"
            else "pair force field, MS-CG")
    lines = [
        "# CG model vs all-atom reference", "",
        f"Model `{m['file']}` ({kind}, cutoff {m.get('cutoff_nm')} nm, bead types "
        f"{', '.join(m.get('type_names') or [])}), trained at "
        f"{trained or 'unknown state points'}. Platform {report['platform']} ({report['device']}), settings "
        f"`{cfg['name']}`: all-atom {_setting(cfg, 'reference', 'production'):g} ps, CG "
        f"{_setting(cfg, 'cg', 'production'):g} ps per state point. "
        f"Created {report['created']}.", "",
        "## Summary", "", *[f"- {line}" for line in report["summary"]["lines"]], "",
        "## Metrics", "", metrics_table_markdown(report),
        "RDF MAD: mean |g_CG(r) - g_AA(r)| over the r grid (0 = identical); max |\u0394g|: the largest deviation; "
        "peak \u0394r / \u0394g: CG minus all-atom position (nm) and height of the first RDF peak. ADF L1: "
        "distance between the first-shell angle distributions (0 = identical, 2 = disjoint). Density: "
        "block-averaged mean \u00b1 standard error of NPT runs; NVT densities are imposed. P: instantaneous "
        "pressure (OpenMM's finite-difference estimator, molecular for all-atom), block-averaged mean \u00b1 "
        "standard error.", "",
        "Error bars: \u00b1 is the standard error of the metric from a block bootstrap over both trajectories "
        "(blocks a few autocorrelation times long). Floor: the same metric between the first and the second "
        "half of the all-atom run, scaled to the length of this comparison \u2014 what a perfect CG model "
        "would score from sampling noise alone. An error is real only where it exceeds its floor by more than "
        "2 combined standard errors; a difference between two models counts only where it exceeds 2 "
        "sqrt(SE_a\u00b2 + SE_b\u00b2).", "",
    ]
    lines += _by_type_markdown(report)
    problems = [s for s in report["state_points"] if s["status"] != "complete"]
    if problems:
        lines += ["## Problems", ""] + [f"- **{s['label']}** ({s['status'].replace('_', ' ')}): {s['message']}"
                                        for s in problems] + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["## Radial distribution functions", "", "![RDF](rdf.png)", "",
              "## Angular distribution functions", "", "![ADF](adf.png)", "",
              "## Density", "", "![density](density.png)", ""]
    for k, v in report["files"].items():
        if k.startswith("density_plot_"):
            lines += [f"![density]({v})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the transferability study
# ---------------------------------------------------------------------------------------------
def write_study_plots(rows: list[dict[str, Any]], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nvt = [r for r in rows if r["ensemble"] == "NVT" and r["status"] == "complete"]
    specs = [("rdf_mad", "RDF mean |g_CG - g_AA|", "rdf_mad_vs_T.png"),
             ("adf_l1", "ADF L1 distance", "adf_l1_vs_T.png"),
             ("rdf_mad_relative_to_training", "RDF MAD / MAD at training point", "relative_error.png")]
    for key, ylabel, fname in specs:
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot(111)
        _floor_band(ax, nvt, key)
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["temperature_K"], r[key], r.get(f"{key}_se")) for r in nvt
                         if r["model"] == name and r[key] is not None)
            if pts:
                t, y, se = zip(*pts)
                bars = [2 * e if e is not None else 0.0 for e in se]
                ax.errorbar(t, y, yerr=bars if any(bars) else None, marker="o", capsize=3, label=name,
                            linestyle="--" if name == "pair-fm" else "-")
        trained = sorted({r["temperature_K"] for r in rows if r["in_training"]})
        for t in trained:
            ax.axvline(t, color="0.8", zorder=0)
        ax.set_xlabel("temperature (K)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} across temperature (NVT; grey: training)"
                     + ("\nbars: \u00b12 standard errors" if any(r.get(f"{key}_se") is not None for r in nvt) else ""),
                     fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(out / fname, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def _floor_band(ax, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """The noise floor of metric ``key`` against temperature (mean over models of ``<key>_noise_floor``), as a
    dotted line in a grey band of \u00b12 standard errors; nothing for a metric without floors."""
    by_t: dict[float, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get(f"{key}_noise_floor") is not None:
            by_t.setdefault(r["temperature_K"], []).append(
                (r[f"{key}_noise_floor"], r.get(f"{key}_noise_floor_se") or 0.0))
    if not by_t:
        return
    t = sorted(by_t)
    floor = np.array([np.mean([f for f, _ in by_t[x]]) for x in t])
    se = np.array([np.mean([e for _, e in by_t[x]]) for x in t])
    ax.fill_between(t, np.maximum(floor - 2 * se, 0.0), floor + 2 * se, color="0.85", zorder=0, lw=0)
    ax.plot(t, floor, color="0.45", ls=":", lw=1.2, zorder=1, label="noise floor (\u00b12 SE)")


def _above_floor_cell(r: Mapping[str, Any], key: str) -> str:
    from .analysis import significant_difference

    verdict = significant_difference(r.get(key), r.get(f"{key}_se"), r.get(f"{key}_noise_floor"),
                                     r.get(f"{key}_noise_floor_se"))
    return {1: "yes", 0: "no (noise)", -1: "no (below)", None: "\u2014"}[verdict]


def study_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = ["# Transferability study", "",
             f"Preset `{result['config']['preset']}`, {result['config']['n_molecules']} molecules, "
             f"{result['seconds'] / 60:.1f} min.", "", "## Conclusion", ""]
    lines += [f"- {line}" for line in result["conclusion"]["lines"]]
    trained_at = {r["model"]: r.get("trained_at") or [] for r in rows}
    lines += ["", "Models (trained at): " + "; ".join(f"{m} ({', '.join(t)})" for m, t in trained_at.items()) + "."]
    lines += ["", "![RDF MAD vs T](rdf_mad_vs_T.png)", "", "![ADF L1 vs T](adf_l1_vs_T.png)", "",
              "![relative error](relative_error.png)", "", "## Every model at every state point", "",
              "| model | state | trained here | status | RDF MAD | RDF MAD floor | above floor (2\u03c3) | "
              "RDF MAD / training | peak height err | ADF L1 | ADF L1 floor | density rel. err |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        dens = "—" if r["density_relative_error"] is None else \
            f"{r['density_relative_error']:+.3f} ± {r['density_relative_error_se'] or 0:.3f}"
        relative = _with_se(r["rdf_mad_relative_to_training"], r.get("rdf_mad_relative_to_training_se"), ".2f")
        lines.append(f"| {r['model']} | {r['state']} | {'yes' if r['in_training'] else ''} | {r['status']} | "
                     f"{_with_se(r['rdf_mad'], r.get('rdf_mad_se'), '.4f')} | "
                     f"{_with_se(r.get('rdf_mad_noise_floor'), r.get('rdf_mad_noise_floor_se'), '.4f')} | "
                     f"{_above_floor_cell(r, 'rdf_mad')} | {relative} | {_fmt(r['rdf_peak_height_error'], '+.3f')} | "
                     f"{_with_se(r['adf_l1'], r.get('adf_l1_se'), '.4f')} | "
                     f"{_with_se(r.get('adf_l1_noise_floor'), r.get('adf_l1_noise_floor_se'), '.4f')} | {dens} |")
    lines += ["", "RDF MAD: mean |g_CG(r) - g_AA(r)| over bins where either is non-zero. ADF L1: "
              "integral of |P_CG - P_AA| over angle (0 same, 2 disjoint). Density relative error: "
              "rho_CG / rho_AA - 1 for NPT state points, with its standard error.", "",
              "\u00b1: standard error from a block bootstrap of the all-atom and the CG run (sampling noise only, "
              "not the spread between networks trained again). Floor: the same metric between the two halves of "
              "the all-atom run, scaled to the comparison: what a perfect model would score. 'above floor': the "
              "error exceeds the floor by more than 2 sqrt(SE\u00b2 + SE_floor\u00b2); 'no (noise)': the data "
              "cannot tell it from sampling noise. The conclusion states a difference between two models only "
              "beyond 2 sqrt(SE_a\u00b2 + SE_b\u00b2).", ""]
    return "\n".join(lines)
