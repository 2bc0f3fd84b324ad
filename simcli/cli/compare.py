"""`simcli compare`: a table (and optionally a PNG) comparing run directories: FID, IS, losses, time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.measure import Measurement
from rich.table import Table

from simcli.cli.errors import reported_errors
from simcli.cli.options import JsonOpt
from simcli.cli.output import _duration, _fmt, print_json, stderr_console, stdout_console
from simcli.rundir.atomic import check_png_path

EPILOG = """Examples:

  simcli compare runs/ring8-sim runs/ring8-sid

  simcli compare runs/* --sort fid --plot compare.png

  simcli compare runs/cifar10-sim runs/cifar10-sid --json > compare.json

The table goes to stdout (so 'simcli compare ... > table.txt' works); with --json, one document
{"runs": [...], "plot": ...} goes there instead. Runs still training can be compared: a half-written
last line of metrics.jsonl is ignored, and runs without evaluations show '-' for FID and IS. Runs of mixture
teachers show their exact metrics instead (best and last MMD^2, the unbiased squared MMD to exact mixture
samples that 'simcli eval --teacher' reports, JSON keys best_mmd and last_mmd; best and last mode-weight L1), and
--plot draws them in place of FID and IS when no run has an FID.
"""

COLUMNS = (
    ("run", "left"),
    ("method", "left"),
    ("distance", "left"),
    ("teacher", "left"),
    ("kimg", "right"),
    ("wall", "right"),
    ("best FID", "right"),
    ("@ kimg", "right"),
    ("last FID", "right"),
    ("last IS", "right"),
    ("status", "right"),
    ("evals", "right"),
)
FID_COLUMNS = ("best FID", "@ kimg", "last FID", "last IS")
EXACT_COLUMNS = (("best MMD^2", "right"), ("@ kimg ", "right"), ("last MMD^2", "right"), ("best mode L1", "right"),
                 ("last mode L1", "right"))  # mixture runs; '@ kimg ' differs from the FID one only by a space
EXACT_KEYS = ("best_mmd", "last_mmd", "best_mode_weight_l1", "last_mode_weight_l1")


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else _duration(seconds)


def _is_text(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{_fmt(mean)} ± {_fmt(std)}" if std is not None else _fmt(mean)


def _row(s: dict[str, Any], fid: bool = True, exact: bool = False) -> list[str]:
    cells = [
        s["name"],
        _fmt(s["method"]),
        _fmt(s["distance"]),
        s["teacher"],
        _fmt(s["kimg"]),
        _wall(s["wall_time_s"]),
        _fmt(s["best_fid"]),
        _fmt(s["best_fid_kimg"]),
        _fmt(s["last_fid"]),
        _is_text(s["last_is_mean"], s["last_is_std"]),
        str(s["status_records"]),
        str(s["eval_records"]),
    ]
    if not fid:
        del cells[6:10]
    if exact:
        cells[-2:-2] = [_fmt(s["best_mmd"]), _fmt(s["best_mmd_kimg"]), _fmt(s["last_mmd"]),
                        _fmt(s["best_mode_weight_l1"]), _fmt(s["last_mode_weight_l1"])]
    return cells


def _column_groups(summaries: list[dict[str, Any]]) -> tuple[bool, bool]:
    """(show the FID/IS columns, show the exact-metric columns): exact ones when a run has them, FID ones
    unless every evaluated value is an exact metric."""
    exact = any(s[k] is not None for s in summaries for k in EXACT_KEYS)
    fid = not exact or any(s["best_fid"] is not None or s["last_is_mean"] is not None for s in summaries)
    return fid, exact


def _print_table(summaries: list[dict[str, Any]]) -> None:
    table = Table(title="simcli compare", expand=False)
    fid, exact = _column_groups(summaries)
    columns = [c for c in COLUMNS if fid or c[0] not in FID_COLUMNS]
    if exact:
        columns[-2:-2] = EXACT_COLUMNS
    for label, justify in columns:
        table.add_column(label, justify=justify, no_wrap=label in ("kimg", "wall", "best FID", "last FID", "last IS"))
    for s in summaries:
        table.add_row(*_row(s, fid, exact))
    console = stdout_console()
    if not console.is_terminal:  # a file or a pipe: never squeeze the table into 80 columns
        natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
        console.width = max(console.width, natural)
    console.print(table)


def _warn_mixed_references(summaries: list[dict[str, Any]]) -> None:
    """FIDs against different reference statistics (or backends) are not comparable; say so."""
    pairs = {(s["eval_backend"], s["eval_reference"]) for s in summaries if s["eval_records"]}
    if len(pairs) > 1:
        shown = "; ".join(f"{b} vs {r}" for b, r in sorted(pairs, key=str))
        stderr_console().print(f"warning: the runs were evaluated with different backends or references ({shown}); their scores are not comparable")


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories written by 'simcli distill --out'.", show_default=False)],
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write FID, IS and loss curves to this PNG (replaced if it exists).")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Order rows: fid (best FID first, then mixture runs by best MMD^2; runs without either last) or name. Default: as given.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare run directories: method, teacher, images seen, wall time, best and last FID, last IS (mixture
    runs: best and last MMD^2 and mode-weight L1)."""
    with reported_errors():
        from simcli.compare.runs import compare_runs

        if plot is not None:
            check_png_path(plot)
        runs, summaries = compare_runs(run_dirs, sort=sort)
        if plot is not None:
            from simcli.compare.plot import write_comparison_png

            write_comparison_png(runs, plot)
        _warn_mixed_references(summaries)
        if json_out:
            print_json({"runs": summaries, "plot": str(plot) if plot is not None else None})
            return
        _print_table(summaries)
        if plot is not None:
            stderr_console().print(f"wrote {plot}", soft_wrap=True)
