"""metrics.jsonl records without the keys that describe the machine (timing, memory, load): what two runs that
compute the same numbers agree on exactly."""

from __future__ import annotations

import json
from pathlib import Path

from simcli.distill.reports import MACHINE_KEYS


def run_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The records of run_dir/metrics.jsonl (of one kind, when given), without MACHINE_KEYS."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k not in MACHINE_KEYS} for r in map(json.loads, lines)
            if kind is None or r["kind"] == kind]
