"""metrics.jsonl records without the keys that describe the machine (timing, memory, load): what two runs that
compute the same numbers agree on exactly."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from simcli.distill.reports import MACHINE_KEYS


def run_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The records of run_dir/metrics.jsonl (of one kind, when given), without MACHINE_KEYS."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k not in MACHINE_KEYS} for r in map(json.loads, lines)
            if kind is None or r["kind"] == kind]


def live_status_records(run_dir: Path) -> list[dict]:
    """The status records a running run has written so far (a line being written is skipped), without
    MACHINE_KEYS; none while metrics.jsonl does not exist."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # being written
            continue
        if record.get("kind") == "status":
            out.append({k: v for k, v in record.items() if k not in MACHINE_KEYS})
    return out


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], signum: int, wait_s: float = 240) -> int:
    """Send `signum` to proc once ready() (polled) or after wait_s, and return its exit code; it is killed if it
    does not end within two minutes."""
    try:
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.05)
        proc.send_signal(signum)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
