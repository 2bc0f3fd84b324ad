"""One PNG comparing runs: FID, IS and the two losses against kimg, in a 2x2 grid (matplotlib, Agg).

Runs of mixture teachers log exact metrics instead of FID and IS; when no run has an FID or IS value and some
have exact metrics, the top row shows mode-weight L1 and MMD^2 (the unbiased squared MMD, as `simcli eval
--teacher` reports it) instead.

Takes the runs that simcli.compare.runs.load_runs returns. The figure is built on an Agg canvas without
pyplot, so nothing global (backend, open figures) is touched; the file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from simcli.compare.runs import record_kimg

# Distinguishable colours, one per run in the order given; cycled when there are more runs.
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
LOSS_STYLES = {"loss_online": "-", "loss_generator": "--"}


def _points(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    """(kimg, value, record) for the records whose value is a finite number."""
    xs, ys, kept = [], [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(record_kimg(r))
            ys.append(float(v))
            kept.append(r)
    return xs, ys, kept


def wants_log_scale(values: list[float], ratio: float = 10.0) -> bool:
    """Log y when every value is positive and they span more than `ratio` times."""
    return bool(values) and min(values) > 0 and max(values) > ratio * min(values)


def _minor_label(value: float, decades: float) -> str:
    """Label minor log ticks 2, 3 and 5 (times a power of ten) on short axes, none on long ones."""
    if value <= 0 or decades > 2:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa) in (2, 3, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _no_data(ax, note: str) -> None:
    ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.45", fontsize=11, style="italic")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(ax, title: str, ylabel: str, values: list[float], note: str, kimg_max: float, log_ok: bool = True) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_title(title)
    ax.set_xlabel("kimg (thousands of generator images)")
    ax.set_ylabel(ylabel)
    if not values:
        _no_data(ax, note)
        return
    ax.set_xlim(0, kimg_max * 1.03 if kimg_max > 0 else 1)  # the same kimg axis in every panel
    if log_ok and wants_log_scale(values):
        ax.set_yscale("log")
        ax.set_ylabel(f"{ylabel} (log scale)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, not 10^1
        decades = math.log10(max(values) / min(values))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(v, decades)))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="best", framealpha=0.8)


def _best_panel(ax, runs: list[dict[str, Any]], kimg_max: float, key: str = "fid", title: str = "FID (lower is better; * = best)",
                ylabel: str = "FID", note: str = "no FID evaluations yet") -> None:
    """One lower-is-better metric of the eval records per run, its best value starred."""
    values: list[float] = []
    for i, run in enumerate(runs):
        xs, ys, kept = _points(run["eval"], key)
        if not xs:
            continue
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, color=colour, label=run["name"])
        b = min(range(len(ys)), key=ys.__getitem__)
        ax.plot([xs[b]], [ys[b]], marker="*", markersize=13, color=colour, markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        values += ys
    _finish(ax, title, ylabel, values, note, kimg_max)


def _is_panel(ax, runs: list[dict[str, Any]], kimg_max: float) -> None:
    values: list[float] = []
    for i, run in enumerate(runs):
        xs, ys, kept = _points(run["eval"], "is_mean")
        if not xs:
            continue
        errs = [r.get("is_std") if isinstance(r.get("is_std"), (int, float)) and math.isfinite(r["is_std"]) else 0.0 for r in kept]
        ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=4, linewidth=1.5, capsize=3, color=COLOURS[i % len(COLOURS)], label=run["name"])
        values += ys
    _finish(ax, "Inception Score (higher is better; bars = std)", "IS", values, "no IS evaluations yet", kimg_max, log_ok=False)


def _loss_panel(ax, runs: list[dict[str, Any]], key: str, title: str, kimg_max: float) -> None:
    values: list[float] = []
    for i, run in enumerate(runs):
        xs, ys, _ = _points(run["status"], key)
        if not xs:
            continue
        marker = "o" if len(xs) <= 30 else None  # short runs: show the points; long runs: just the curve
        ax.plot(xs, ys, linestyle=LOSS_STYLES[key], marker=marker, markersize=3, linewidth=1.5, color=COLOURS[i % len(COLOURS)], label=run["name"])
        values += ys
    _finish(ax, title, "loss", values, "no status records yet", kimg_max)


def _has_any(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
    return any(_points(run["eval"], key)[0] for run in runs for key in keys)


def render_comparison(runs: list[dict[str, Any]]):
    """The 2x2 matplotlib Figure (FID, IS, or for mixture runs mode-weight L1, MMD^2 / loss online, loss generator)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_fid, ax_is), (ax_online, ax_gen) = fig.subplots(2, 2)
    kimg_max = max((record_kimg(r) for run in runs for r in run["status"] + run["eval"]), default=0.0)
    if _has_any(runs, ("mmd", "mode_weight_l1")) and not _has_any(runs, ("fid", "is_mean")):  # mixture runs
        _best_panel(ax_fid, runs, kimg_max, "mode_weight_l1", "mode-weight L1 (exact; lower is better; * = best)",
                    "sum_k |w_k - pi_k|", "no mode-weight evaluations yet")
        _best_panel(ax_is, runs, kimg_max, "mmd", "MMD^2 to the mixture (exact; lower is better; * = best)",
                    "MMD^2", "no MMD^2 evaluations yet")
    else:
        _best_panel(ax_fid, runs, kimg_max)
        _is_panel(ax_is, runs, kimg_max)
    _loss_panel(ax_online, runs, "loss_online", "online model loss (solid)", kimg_max)
    _loss_panel(ax_gen, runs, "loss_generator", "generator loss (dashed)", kimg_max)
    names = ", ".join(r["name"] for r in runs)
    fig.suptitle(f"simcli compare: {names if len(names) <= 110 else f'{len(runs)} runs'}", fontsize=13)
    return fig


def write_comparison_png(runs: list[dict[str, Any]], path: Path) -> Path:
    """Render the comparison and write it atomically to `path` (PNG); returns the path."""
    from simcli.rundir.atomic import atomic_write

    path = Path(path)
    fig = render_comparison(runs)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
