"""metrics.jsonl: one JSON record per line (status and evaluation records), append-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete record; a half-written last line (a killed writer) is skipped."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_after(run_dir: Path, last_step: int) -> None:
    """Drop records written after the state a run resumes from (and any half-written line)."""
    path = run_dir / METRICS_FILE
    if path.is_file():
        kept = [r for r in read_records(run_dir) if r.get("step", 0) <= last_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
