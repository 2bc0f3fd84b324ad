"""The distill reporter: plain status lines carry progress, ETA and the latest evaluation."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from simcli.cli.output import DistillReporter
from simcli.distill.events import Evaluated, RunStarted, Status


def test_status_lines_show_done_eta_and_the_latest_fid():
    buf = io.StringIO()
    reporter = DistillReporter(console=Console(file=buf, width=400, soft_wrap=True), live=False)
    reporter(RunStarted(Path("run"), "cpu", 0, 100, 10, None, 1234))
    reporter(Status({"kind": "status", "step": 25, "kimg": 0.25, "sec_per_kimg": 40.0, "loss_online": 1.0}))
    reporter(Evaluated({"kind": "eval", "kimg": 0.25, "n": 500, "backend": "torch-fidelity", "fid": 12.5, "best": True}))
    reporter(Status({"kind": "status", "step": 50, "kimg": 0.5, "sec_per_kimg": 40.0, "loss_online": 0.9}))
    lines = buf.getvalue().splitlines()
    assert lines[1].startswith("done 25%  eta 0m30s  kimg 0.25") and "FID" not in lines[1]  # 0.75 kimg x 40 s
    assert "eval at 0.25 kimg (500 samples, torch-fidelity): fid 12.5  (best so far)" == lines[2]
    assert lines[3].startswith("done 50%  eta 0m20s") and lines[3].endswith("FID 12.5")
