"""metrics.jsonl: one JSON record per line (status and evaluation records), append-only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcli.errors import WriteFailed
from simcli.rundir.atomic import write_bytes_atomic
from simcli.rundir.layout import METRICS_FILE


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it; an OSError (disk full, ...) is raised as WriteFailed."""
    path = run_dir / METRICS_FILE
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise WriteFailed(path, exc) from exc


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


@dataclass(frozen=True)
class Truncation:
    """What truncate_after dropped from metrics.jsonl."""

    unreadable_lines: tuple[int, ...] = ()
    """1-based numbers of the lines that held no JSON record (garbage, a half-written last line)."""
    later_records: int = 0
    """Records of iterations after the one the run resumes from (written after its state was saved)."""

    def describe(self, last_step: int) -> str | None:
        """A one-line warning naming how many lines were dropped and why; None when nothing was."""
        parts = []
        if self.unreadable_lines:
            lines = self.unreadable_lines
            shown = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
            plural = "s" if len(lines) != 1 else ""
            parts.append(f"{len(lines)} unreadable line{plural} (line{plural} {shown}: no JSON record, as a killed writer "
                         "or a damaged file leaves)")
        if self.later_records:
            n = self.later_records
            parts.append(f"{n} record{'s' if n != 1 else ''} after iteration {last_step} (written after the state it "
                         "resumes from)")
        return f"{METRICS_FILE}: dropped " + " and ".join(parts) if parts else None


def truncate_after(run_dir: Path, last_step: int) -> Truncation:
    """Drop records written after the state a run resumes from, and lines that hold no record; says what went.

    The file is rewritten atomically (an interrupted rewrite leaves it as it was), and only when something is
    dropped or its last line lacks its newline.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return Truncation()
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last record
    kept, unreadable, later = [], [], 0
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
            unreadable.append(number)
        elif record.get("step", 0) > last_step:
            later += 1
        else:
            kept.append(line)
    if unreadable or later or (text and not text.endswith("\n")):
        write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())
    return Truncation(tuple(unreadable), later)
