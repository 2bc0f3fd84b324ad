"""Where output goes: human text and live tables on stderr, one JSON document on stdout with --json."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from simcli.distill.events import (
    DownloadProgress,
    Evaluated,
    GridSaved,
    NonFiniteStep,
    RunStarted,
    SnapshotSaved,
    Status,
    TeacherFitProgress,
)


def stderr_console() -> Console:
    """A console on stderr that honours NO_COLOR and TERM=dumb and never wraps lines in logs."""
    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """A console on stdout, for a command's main text output (for example --dry-run)."""
    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    """The one JSON document a --json command prints on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


STATUS_COLUMNS = (
    ("done", "done"),
    ("eta", "eta"),
    ("kimg", "kimg"),
    ("step", "step"),
    ("loss_online", "loss online"),
    ("loss_generator", "loss generator"),
    ("sec_per_kimg", "sec/kimg"),
    ("cpu_mem_gib", "cpu GiB"),
    ("gpu_mem_gib", "gpu GiB"),
    ("nonfinite_total", "non-finite"),
    ("fid", "FID"),
    ("is_mean", "IS"),
    ("mode_weight_l1", "mode L1"),
    ("mmd", "MMD"),
)
LATEST_EVAL_KEYS = ("fid", "is_mean", "mode_weight_l1", "mmd")


def status_line(record: dict[str, Any]) -> str:
    """A plain status line for logs (cluster jobs, pipes)."""
    parts = [f"{label.replace(' ', '_')} {_fmt(record.get(key))}" for key, label in STATUS_COLUMNS if key in record]
    return "  ".join(parts)


EVAL_KEYS = ("fid", "is_mean", "mode_weight_l1", "precision", "mmd", "sw2")


def evaluation_line(record: dict[str, Any]) -> str:
    """One line per evaluation: where, what, and whether it is the best so far."""
    values = "  ".join(f"{k} {_fmt(record[k])}" for k in EVAL_KEYS if record.get(k) is not None)
    best = "  (best so far)" if record.get("best") else ""
    return f"eval at {_fmt(record['kimg'])} kimg ({record.get('n')} samples, {record.get('backend')}): {values}{best}"


class DistillReporter:
    """Renders distillation events: a live table in a terminal, plain lines otherwise."""

    def __init__(self, console: Console | None = None, live: bool | None = None, max_rows: int = 12):
        self.console = console or stderr_console()
        self.live_enabled = self.console.is_terminal if live is None else live
        self.max_rows = max_rows
        self.rows: list[dict[str, Any]] = []
        self.live: Live | None = None
        self._fit_line_shown = False
        self._download_mark = -1
        self.latest_eval: dict[str, Any] = {}  # the last evaluation, shown in every later status row
        self.total_steps: int | None = None
        self.batch_size: int | None = None

    def _with_progress(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add 'done' and 'eta' (human-only columns) from the run's length and the current speed."""
        latest = {k: self.latest_eval[k] for k in LATEST_EVAL_KEYS if self.latest_eval.get(k) is not None}
        if not self.total_steps:
            return {**record, **latest}
        row = dict(record, done=f"{record['step'] / self.total_steps:.0%}", **latest)
        if record.get("sec_per_kimg") is not None:
            remaining_kimg = (self.total_steps - record["step"]) * self.batch_size / 1000
            row["eta"] = _duration(remaining_kimg * record["sec_per_kimg"])
        return row

    def _table(self) -> Table:
        table = Table(title="simcli distill", expand=False)
        cols = [c for c in STATUS_COLUMNS if any(c[0] in r for r in self.rows)] or list(STATUS_COLUMNS[:5])
        for _, label in cols:
            table.add_column(label, justify="right")
        for r in self.rows[-self.max_rows :]:
            table.add_row(*[_fmt(r.get(key)) for key, _ in cols])
        return table

    def __call__(self, event: object) -> None:
        if isinstance(event, DownloadProgress):
            self._download(event)
        elif isinstance(event, TeacherFitProgress):
            if event.step == event.total_steps or not self._fit_line_shown:
                self.console.print(f"fitting the network to the analytic teacher: step {event.step}/{event.total_steps}, loss {_fmt(event.loss)}")
                self._fit_line_shown = True
        elif isinstance(event, RunStarted):
            self.total_steps, self.batch_size = event.total_steps, event.batch_size
            origin = f"resuming from {event.resumed_from.name}" if event.resumed_from else "starting"
            self.console.print(
                f"{origin} at iteration {event.start_step} of {event.total_steps} (batch {event.batch_size}, "
                f"device {event.device}, generator {event.generator_parameters:,} parameters) in {event.run_dir}"
            )
            for w in event.warnings:
                self.console.print(f"warning: {w}")
        elif isinstance(event, Status):
            self.rows.append(self._with_progress(event.record))
            if self.live_enabled:
                if self.live is None:
                    self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
                    self.live.start()
                self.live.update(self._table())
            else:
                self.console.print(status_line(self.rows[-1]), soft_wrap=True)
        elif isinstance(event, Evaluated):
            self.latest_eval = event.record
            if self.rows:  # show it at once in the newest row, too
                self.rows[-1] = self._with_progress(self.rows[-1])
                if self.live is not None:
                    self.live.update(self._table())
            self.console.print(evaluation_line(event.record))
        elif isinstance(event, GridSaved):
            self.console.print(f"sample grid of {event.what}: {event.path}", soft_wrap=True)
        elif isinstance(event, NonFiniteStep):
            self.console.print(f"warning: non-finite {event.phase} loss or gradient at iteration {event.step}, update skipped ({event.consecutive} in a row)")
        elif isinstance(event, SnapshotSaved):
            if not self.live_enabled:
                self.console.print(f"saved {event.generator_path.name} and {event.state_path.name}")

    def _download(self, event: DownloadProgress) -> None:
        """One line at the start, then every 10% (or every 100 MiB when the size is unknown), then the end."""
        mib = event.done_bytes / 2**20
        if event.total_bytes:
            tenth = int(10 * event.done_bytes / event.total_bytes)
            if tenth != self._download_mark or event.done_bytes in (0, event.total_bytes):
                self._download_mark = tenth
                self.console.print(f"downloading the teacher: {mib:.0f} of {event.total_bytes / 2**20:.0f} MiB")
        elif int(mib // 100) != self._download_mark:
            self._download_mark = int(mib // 100)
            self.console.print(f"downloading the teacher: {mib:.0f} MiB")

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
