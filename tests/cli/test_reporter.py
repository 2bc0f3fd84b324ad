"""The distill reporter: plain status lines carry progress, elapsed time, ETA and the latest evaluation, each with
a UTC timestamp; heartbeats and teacher-fit lines come at most every few seconds; a terminal gets a progress bar."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from simcli.cli.output import DistillReporter, utc_timestamp
from simcli.distill.events import Evaluated, Heartbeat, RunStarted, Status, TeacherFitProgress

NOON = 1796056812  # 2026-11-30T16:40:12Z
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def plain(**kwargs) -> tuple[DistillReporter, io.StringIO]:
    buf = io.StringIO()
    reporter = DistillReporter(console=Console(file=buf, width=400, soft_wrap=True), live=False, wall=lambda: NOON, **kwargs)
    return reporter, buf


def unstamped(buf: io.StringIO) -> list[str]:
    lines = buf.getvalue().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def test_status_lines_show_done_eta_and_the_latest_fid():
    reporter, buf = plain()
    reporter(RunStarted(Path("run"), "cpu", 0, 100, 10, None, 1234))
    reporter(Status({"kind": "status", "step": 25, "kimg": 0.25, "sec_per_kimg": 40.0, "loss_online": 1.0}))
    reporter(Evaluated({"kind": "eval", "kimg": 0.25, "n": 500, "backend": "torch-fidelity", "fid": 12.5, "best": True}))
    reporter(Status({"kind": "status", "step": 50, "kimg": 0.5, "sec_per_kimg": 40.0, "loss_online": 0.9}))
    lines = unstamped(buf)  # records without elapsed_s: the ETA falls back to the window's sec_per_kimg
    assert lines[1].startswith("done 25%  eta 0m30s  kimg 0.25") and "FID" not in lines[1]  # 0.75 kimg x 40 s
    assert "eval at 0.25 kimg (500 samples, torch-fidelity): fid 12.5  (best so far)" == lines[2]
    assert lines[3].startswith("done 50%  eta 0m20s") and lines[3].endswith("FID 12.5")


def test_plain_lines_carry_an_iso_8601_utc_timestamp():
    assert utc_timestamp(NOON) == "2026-11-30T16:40:12Z"
    reporter, buf = plain()
    reporter(RunStarted(Path("run"), "cpu", 0, 100, 10, None, 1234))
    reporter.line("done: 100 iterations")
    assert buf.getvalue().splitlines() == [
        "2026-11-30T16:40:12Z starting at iteration 0 of 100 (batch 10, device cpu, fp32, generator 1,234 parameters) in run",
        "2026-11-30T16:40:12Z done: 100 iterations",
    ]


def test_eta_comes_from_the_mean_rate_since_the_resume_not_the_last_window():
    reporter, buf = plain()
    # resumed at iteration 40 of 100 (batch 10) after 100 s of earlier wall time
    reporter(RunStarted(Path("run"), "cpu", 40, 100, 10, Path("state-0000000.400.pt"), 1234, [], 100.0))
    # 200 images in 40 s since the resume: 400 images left take 80 s (the window's 1000 s/kimg would say 400 s)
    reporter(Status({"kind": "status", "step": 60, "kimg": 0.6, "sec_per_kimg": 1000.0, "elapsed_s": 140.0, "loss_online": 0.5}))
    # a heartbeat: 300 images in 50 s, 300 left: 50 s; no losses, nothing else
    reporter(Heartbeat(step=70, total_steps=100, images_seen=700, elapsed_s=150.0))
    lines = unstamped(buf)
    assert lines[1].startswith("done 60%  elapsed 2m20s  eta 1m20s  kimg 0.6  step 60  loss_online 0.5")
    assert lines[2] == "done 70%  elapsed 2m30s  eta 0m50s  kimg 0.7  step 70"
    assert reporter.rows[-1]["eta"] == "1m20s"  # heartbeats add no table row


def test_teacher_fit_lines_come_at_most_every_few_seconds_and_at_the_end():
    now = [0.0]
    reporter, buf = plain(clock=lambda: now[0], fit_every_s=5.0)
    for i in range(14):  # one event a second, steps 10..140 of 140
        now[0] = float(i)
        reporter(TeacherFitProgress(10 * (i + 1), 140, 0.5))
    steps = [re.search(r"step (\d+)/140", line).group(1) for line in unstamped(buf)]
    assert steps == ["10", "60", "110", "140"]  # at 0 s, 5 s, 10 s, and the last


def test_terminal_shows_a_live_table_with_elapsed_and_a_progress_bar_without_timestamps():
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=True, color_system=None, soft_wrap=True)
    reporter = DistillReporter(console=console, wall=lambda: NOON)
    assert reporter.live_enabled and not reporter.timestamps
    reporter(RunStarted(Path("run"), "cpu", 0, 100, 10, None, 1234))
    reporter(Status({"kind": "status", "step": 25, "kimg": 0.25, "elapsed_s": 10.0, "loss_online": 1.0, "loss_generator": 2.0}))
    reporter(Heartbeat(step=50, total_steps=100, images_seen=500, elapsed_s=20.0))
    reporter.close()
    out = buf.getvalue()
    assert "2026-11-30" not in out and "elapsed" in out and "0m10s" in out
    assert "━" in out and "50%  iteration 50/100  kimg 0.5  elapsed 0m20s  eta 0m20s" in out


def _live_table_text(width: int, statuses: list[dict], evaluation: dict | None = None) -> str:
    """What the live display shows last on a terminal `width` columns wide (rich's recorded text)."""
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=True, color_system=None)
    reporter = DistillReporter(console=console, live=True, wall=lambda: NOON)
    reporter(RunStarted(Path("runs/ring8"), "cpu", 0, 2000, 256, None, 1234))
    for i, record in enumerate(statuses):
        reporter(Status(record))
        if evaluation is not None and i == 0:
            reporter(Evaluated(evaluation))
    console.export_text()  # drop what was drawn before the last frame
    reporter.close()  # the last frame, printed once more as Live stops
    return console.export_text()


RING8_STATUS = [  # as a ring8 run on a GPU logs them: every column the table has
    {"kind": "status", "step": 100 * (i + 1), "images_seen": 25600 * (i + 1), "kimg": 25.6 * (i + 1),
     "loss_online": 2.5636566734313964 - 0.01 * i, "loss_generator": -0.006458362338598818, "nonfinite_in_interval": 0,
     "nonfinite_total": 0, "sec_per_kimg": 0.8938526773046895, "elapsed_s": 22.883 * (i + 1), "cpu_mem_gib": 0.693,
     "gpu_mem_gib": 1.234}
    for i in range(4)
]
RING8_EVAL = {"kind": "eval", "kimg": 25.6, "n": 10000, "backend": "exact", "mode_weight_l1": 0.03451,
              "precision": 0.8731, "mmd": 0.000669123, "sw2": 0.028}


def test_live_table_fits_80_columns_with_the_losses_and_the_exact_metrics():
    text = _live_table_text(80, RING8_STATUS, RING8_EVAL)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text  # nothing cut short
    header = "\n".join(line for line in lines if line.startswith("┃"))
    for label in ("loss", "online", "gen.", "kimg", "mode", "L1", "MMD^2", "elapsed"):
        assert label in header, (label, text)
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 4
    # the last row: kimg 102.4, loss online 2.5337 -> 2.53, loss generator -0.006458 -> -0.00646, the latest
    # evaluation's mode-weight L1 and MMD^2 to three digits
    cells = [c.strip() for c in rows[-1].strip("│").split("│")]
    assert cells[cells.index("102.4") + 1 : cells.index("102.4") + 3] == ["2.53", "-0.00646"]
    assert cells[-2:] == ["0.0345", "0.000669"]
    # dropped first at 80 columns: memory, step and done (the bar under the table shows done and the iteration)
    assert "GiB" not in header and "step" not in header and "done" not in header
    assert "iteration 400/2000  kimg 102.4  elapsed 1m32s" in text  # the bar line does not wrap


def test_wide_live_table_keeps_every_column():
    text = _live_table_text(200, RING8_STATUS, RING8_EVAL)
    header = "\n".join(line for line in text.splitlines() if line.startswith("┃"))
    for label in ("done", "elapsed", "eta", "kimg", "step", "online", "gen.", "sec/", "cpu", "gpu", "GiB", "non-",
                  "finite", "mode", "MMD^2"):
        assert label in header, (label, text)


def test_narrow_live_table_keeps_a_non_zero_non_finite_count():
    statuses = [dict(r) for r in RING8_STATUS]
    statuses[-1]["nonfinite_total"] = 3
    text = _live_table_text(80, statuses, RING8_EVAL)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    header = "\n".join(line for line in text.splitlines() if line.startswith("┃"))
    assert "finite" in header and "online" in header and "MMD^2" in header
    last = [c.strip() for c in [line for line in text.splitlines() if line.startswith("│")][-1].strip("│").split("│")]
    assert "3" in last


def test_an_oversubscribed_machine_is_named_in_the_status_line_and_the_live_title():
    busy = {**RING8_STATUS[0], "load_avg": 6.14, "cpu_cores": 2, "cpu_threads": 2, "cpu_busy": True}
    quiet = {**RING8_STATUS[1], "load_avg": 2.1, "cpu_cores": 2, "cpu_threads": 2, "cpu_busy": False}
    reporter, buf = plain()
    reporter(RunStarted(Path("run"), "cpu", 0, 2000, 256, None, 1234))
    reporter(Status(busy))
    reporter(Status(quiet))
    lines = unstamped(buf)
    assert lines[1].endswith("  busy: load 6.1 on 2 cores") and "busy" not in lines[2]
    text = _live_table_text(80, [busy])
    assert "simcli distill · busy: load 6.1 on 2 cores" in text and max(map(len, text.splitlines())) <= 80
    assert "busy" not in _live_table_text(80, [busy, quiet])
