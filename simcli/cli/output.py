"""Where output goes: human text and live tables on stderr, one JSON document on stdout with --json."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table

from simcli.distill.events import (
    DownloadProgress,
    EmbeddingProgress,
    EmbeddingStoreReady,
    EmbeddingWait,
    Evaluated,
    GridSaved,
    Heartbeat,
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


def _table_cell(key: str, value: Any) -> str:
    """A value as the live table shows it: kimg to 4 significant digits (whole kimg from 1,000 on), the rest to
    TABLE_DIGITS significant digits (4 where not listed)."""
    if key == "kimg" and isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.0f}" if value >= 1000 else _fmt(float(value), 4)
    return _fmt(value, TABLE_DIGITS.get(key, 4))


def embedding_wait_line(event: EmbeddingWait) -> str:
    """A run waiting for another process's build of the embedding store: whose, and how far it is."""
    return (f"waiting for {event.holder}, which is building the embedding store {event.store}: "
            f"{event.stored:,}/{event.total:,} prompts stored so far (waited {_duration(event.waited_s)})")


def _size(n: float) -> str:
    """Bytes in B, KiB, MiB or GiB: '24.6 MiB'."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def embedding_store_line(event: EmbeddingStoreReady) -> str:
    """The embedding store's size: in all, per prompt on average, and per prompt at most (L x C x bytes + P x bytes)."""
    pooled = f" + {event.pooled_dim:,} x {event.element_bytes} B" if event.pooled_dim else ""
    return (f"embedding store: {event.prompts:,} prompts, {_size(event.total_bytes)} ({_size(event.bytes_per_prompt)} "
            f"per prompt; at most {event.max_tokens:,} x {event.dim:,} x {event.element_bytes} B{pooled} = "
            f"{_size(event.max_bytes_per_prompt)}) in {event.store}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def utc_timestamp(seconds: float) -> str:
    """ISO-8601 UTC time to the second, e.g. 2026-11-30T16:40:12Z (the prefix of plain log lines)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


STATUS_COLUMNS = (
    ("done", "done"),
    ("elapsed", "elapsed"),
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
    ("mmd", "MMD^2"),
)
LATEST_EVAL_KEYS = ("fid", "is_mean", "mode_weight_l1", "mmd")

# The live table: short headers (two lines where it helps) and fewer digits than the plain lines, so that it fits
# an 80-column terminal. TABLE_DROP_ORDER: the columns left out first when it still does not fit, least useful
# first (the bar under the table shows done, elapsed and ETA; memory rarely changes; the step follows from kimg).
# The losses, kimg and the evaluation columns are never dropped; non-finite only while it is all zero.
TABLE_HEADERS = {
    "loss_online": "loss\nonline", "loss_generator": "loss\ngen.", "sec_per_kimg": "sec/\nkimg",
    "cpu_mem_gib": "cpu\nGiB", "gpu_mem_gib": "gpu\nGiB", "nonfinite_total": "non-\nfinite", "mode_weight_l1": "mode\nL1",
}
TABLE_DIGITS = {"loss_online": 3, "loss_generator": 3, "sec_per_kimg": 3, "cpu_mem_gib": 3, "gpu_mem_gib": 3,
                "mode_weight_l1": 3, "mmd": 3}
TABLE_DROP_ORDER = ("nonfinite_total", "gpu_mem_gib", "cpu_mem_gib", "step", "done", "eta", "elapsed", "sec_per_kimg")


def busy_note(record: dict[str, Any]) -> str:
    """'busy: load 6.1 on 2 cores' when the status record says the machine looks oversubscribed, else ''."""
    if not record.get("cpu_busy"):
        return ""
    return f"busy: load {record['load_avg']:.1f} on {record['cpu_cores']} cores"


def status_line(record: dict[str, Any]) -> str:
    """A plain status line for logs (cluster jobs, pipes)."""
    parts = [f"{label.replace(' ', '_')} {_fmt(record.get(key))}" for key, label in STATUS_COLUMNS if key in record]
    return "  ".join(parts + ([busy_note(record)] if busy_note(record) else []))


EVAL_KEYS = ("fid", "is_mean", "mode_weight_l1", "precision", "mmd", "sw2")
EVAL_LABELS = {"mmd": "mmd^2"}  # the record's 'mmd' is the unbiased squared MMD (simcli.eval.gmm_metrics.mmd_rbf)


def evaluation_line(record: dict[str, Any]) -> str:
    """One line per evaluation: where, what, and whether it is the best so far."""
    values = "  ".join(f"{EVAL_LABELS.get(k, k)} {_fmt(record[k])}" for k in EVAL_KEYS if record.get(k) is not None)
    best = "  (best so far)" if record.get("best") else ""
    return f"eval at {_fmt(record['kimg'])} kimg ({record.get('n')} samples, {record.get('backend')}): {values}{best}"


class DistillReporter:
    """Renders distillation events: a live table with a progress bar in a terminal, timestamped plain lines otherwise.

    `wall`: the time source of the timestamps (seconds since the epoch); `clock`: a monotonic one that spaces the
    teacher-fit lines at least `fit_every_s` apart (tests pass fakes). `timestamps`: prefix every line with the
    UTC time (default: in plain output, not in the live display).
    """

    def __init__(self, console: Console | None = None, live: bool | None = None, max_rows: int = 12, *,
                 timestamps: bool | None = None, fit_every_s: float = 5.0,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        self.console = console or stderr_console()
        self.live_enabled = self.console.is_terminal if live is None else live
        self.timestamps = not self.live_enabled if timestamps is None else timestamps
        self.max_rows = max_rows
        self.fit_every_s, self.wall, self.clock = fit_every_s, wall, clock
        self.rows: list[dict[str, Any]] = []
        self.live: Live | None = None
        self._fit_shown_at: float | None = None
        self._download_mark = -1
        self.latest_eval: dict[str, Any] = {}  # the last evaluation, shown in every later status row
        self.total_steps: int | None = None
        self.batch_size: int | None = None
        self.start_step, self.start_elapsed = 0, 0.0  # where this process started (or resumed) the run
        self.current: dict[str, Any] | None = None  # the newest progress (status or heartbeat), for the bar
        self.notes: list[str] = []  # what the CLI chose for the user, shown once the run has started

    def line(self, text: str) -> None:
        """Print one line (with its timestamp in plain output)."""
        self.console.print(f"{utc_timestamp(self.wall())} {text}" if self.timestamps else text, soft_wrap=True)

    def _timing(self, step: int, elapsed_s: float | None, sec_per_kimg: float | None) -> dict[str, Any]:
        """'done', 'elapsed' and 'eta'; the ETA from the mean rate since this process started (or resumed) the run."""
        row: dict[str, Any] = {"done": f"{step / self.total_steps:.0%}"}
        remaining = (self.total_steps - step) * self.batch_size
        if elapsed_s is not None:
            row["elapsed"] = _duration(elapsed_s)
            done, spent = (step - self.start_step) * self.batch_size, elapsed_s - self.start_elapsed
            if done > 0 and spent > 0:
                row["eta"] = _duration(remaining * spent / done)
        elif sec_per_kimg is not None:  # a record without the run's time: the last window's rate
            row["eta"] = _duration(remaining / 1000 * sec_per_kimg)
        return row

    def _with_progress(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add 'done', 'elapsed' and 'eta' (human-only columns) and the latest evaluation to a status record."""
        latest = {k: self.latest_eval[k] for k in LATEST_EVAL_KEYS if self.latest_eval.get(k) is not None}
        if not self.total_steps:
            return {**record, **latest}
        return {**record, **self._timing(record["step"], record.get("elapsed_s"), record.get("sec_per_kimg")), **latest}

    def _table_of(self, keys: list[str]) -> Table:
        busy = busy_note(self.rows[-1]) if self.rows else ""  # in the title: the bar line has no room at 80 columns
        table = Table(title="simcli distill" + (f" · {busy}" if busy else ""), expand=False)
        for key in keys:
            table.add_column(TABLE_HEADERS.get(key, dict(STATUS_COLUMNS)[key]), justify="right", no_wrap=True)
        for r in self.rows[-self.max_rows :]:
            table.add_row(*[_table_cell(key, r.get(key)) for key in keys])
        return table

    def _table(self) -> Table:
        """The status table, without the least useful columns (TABLE_DROP_ORDER) where the console is too narrow."""
        keys = [k for k, _ in STATUS_COLUMNS if any(k in r for r in self.rows)] or [k for k, _ in STATUS_COLUMNS[:5]]
        droppable = [k for k in TABLE_DROP_ORDER if k in keys]
        if "nonfinite_total" in droppable and any(r.get("nonfinite_total") for r in self.rows):
            droppable.remove("nonfinite_total")  # non-finite iterations are worth the room
        table = self._table_of(keys)
        width = self.console.width
        for key in droppable:
            if Measurement.get(self.console, self.console.options.update(width=10_000), table).maximum <= width:
                break
            keys.remove(key)
            table = self._table_of(keys)
        return table

    def _display(self) -> Group:
        """The live display: the status table and a bar of the run's fraction done, with elapsed time and ETA."""
        parts: list[Any] = [self._table()]
        if self.current is not None and self.total_steps:
            c = self.current
            text = (f"{c['done']}  iteration {c['step']}/{self.total_steps}  kimg {_table_cell('kimg', c.get('kimg'))}  "
                    f"elapsed {c.get('elapsed', '-')}  eta {c.get('eta', '-')}")
            bar = Table.grid(padding=(0, 1))
            # the bar takes what the text leaves of the line (at most 40 columns), so that the line does not wrap
            bar.add_row(ProgressBar(total=self.total_steps, completed=c["step"],
                                    width=max(10, min(40, self.console.width - len(text) - 1))), text)
            parts.append(bar)
        return Group(*parts)

    def _show(self) -> None:
        if self.live is None:
            self.live = Live(self._display(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        self.live.update(self._display())

    def __call__(self, event: object) -> None:
        if isinstance(event, DownloadProgress):
            self._download(event)
        elif isinstance(event, TeacherFitProgress):
            now = self.clock()
            if event.step == event.total_steps or self._fit_shown_at is None or now - self._fit_shown_at >= self.fit_every_s:
                self.line(f"fitting the network to the analytic teacher: step {event.step}/{event.total_steps}, loss {_fmt(event.loss)}")
                self._fit_shown_at = now
        elif isinstance(event, EmbeddingProgress):
            now = self.clock()
            if event.done == event.total or self._fit_shown_at is None or now - self._fit_shown_at >= self.fit_every_s:
                self.line(f"embedding prompts once into {event.store}: {event.done:,}/{event.total:,}")
                self._fit_shown_at = now
        elif isinstance(event, EmbeddingWait):
            self.line(embedding_wait_line(event))
        elif isinstance(event, EmbeddingStoreReady):
            self.line(embedding_store_line(event))
        elif isinstance(event, RunStarted):
            self.total_steps, self.batch_size = event.total_steps, event.batch_size
            self.start_step, self.start_elapsed = event.start_step, event.elapsed_s
            origin = f"resuming from {event.resumed_from.name}" if event.resumed_from else "starting"
            shared = f" over {event.processes} processes" if event.processes > 1 else ""
            micro = f" in micro-batches of {event.micro_batch}{shared}" if event.micro_batch not in (None, event.batch_size) or shared else ""
            self.line(
                f"{origin} at iteration {event.start_step} of {event.total_steps} (batch {event.batch_size}{micro}, "
                f"device {event.device}, {event.precision}, generator {event.generator_parameters:,} parameters) in {event.run_dir}"
            )
            for note in self.notes:
                self.line(f"note: {note}")
            for w in event.warnings:
                self.line(f"warning: {w}")
        elif isinstance(event, Status):
            self.rows.append(self._with_progress(event.record))
            self.current = self.rows[-1]
            if self.live_enabled:
                self._show()
            else:
                self.line(status_line(self.rows[-1]))
        elif isinstance(event, Heartbeat):
            self._heartbeat(event)
        elif isinstance(event, Evaluated):
            self.latest_eval = event.record
            if self.rows:  # show it at once in the newest row, too
                self.rows[-1] = self._with_progress(self.rows[-1])
                if self.live is not None:
                    self.live.update(self._display())
            self.line(evaluation_line(event.record))
        elif isinstance(event, GridSaved):
            self.line(f"sample grid of {event.what}: {event.path}")
        elif isinstance(event, NonFiniteStep):
            self.line(f"warning: non-finite {event.phase} loss or gradient at iteration {event.step}, update skipped ({event.consecutive} in a row)")
        elif isinstance(event, SnapshotSaved):
            if not self.live_enabled:
                self.line(f"saved {event.generator_path.name} and {event.state_path.name}")

    def _heartbeat(self, event: Heartbeat) -> None:
        """Progress between status records: the bar in a terminal, a line without losses in plain output."""
        if not self.total_steps:
            return
        self.current = {"step": event.step, "kimg": event.images_seen / 1000,
                        **self._timing(event.step, event.elapsed_s, None)}
        if self.live_enabled:
            self._show()
        else:
            self.line(status_line(self.current))

    def _download(self, event: DownloadProgress) -> None:
        """One line at the start, then every 10% (or every 100 MiB when the size is unknown), then the end."""
        mib = event.done_bytes / 2**20
        if event.total_bytes:
            tenth = int(10 * event.done_bytes / event.total_bytes)
            if tenth != self._download_mark or event.done_bytes in (0, event.total_bytes):
                self._download_mark = tenth
                self.line(f"downloading the teacher: {mib:.0f} of {event.total_bytes / 2**20:.0f} MiB")
        elif int(mib // 100) != self._download_mark:
            self._download_mark = int(mib // 100)
            self.line(f"downloading the teacher: {mib:.0f} MiB")

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def print_memory_plan(console: Console, plan: Any) -> None:
    """The dry run's memory plan per process (simcli.distill.memory_plan.MemoryPlan) as a table, the device size,
    whether it fits and the suggestions; a line saying there is none when `plan` is None."""
    from rich.table import Table

    if plan is None:
        console.print("memory plan: not available for this teacher without loading its weights")
        return
    gib = plan.as_json()["per_process_gib"]
    table = Table(title=f"memory per process ({plan.processes} process(es), micro-batch {plan.micro_batch}, "
                        f"{plan.precision}, {plan.passes} network passes kept for the backward)")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for part, value in gib.items():
        table.add_row(part, f"{value:,.2f}")
    console.print(table)
    if plan.fits is None:
        console.print("device memory unknown (no GPU visible; --gpu-memory GIB sets it): fit not decided")
    else:
        console.print(f"device: {plan.device_bytes / 2**30:,.1f} GiB; {'fits' if plan.fits else 'does NOT fit'}")
    for suggestion in plan.suggestions:
        console.print(f"  would fit: {suggestion}")
