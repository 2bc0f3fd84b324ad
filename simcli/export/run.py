"""`simcli export`, composed: every check first (the output folder, the generator, the Hub), then the folder written
whole, then the push. Returns the command's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.export.edm_file import edm_export
from simcli.export.folder import check_out_apart, check_out_folder, write_export_folder
from simcli.export.hub import check_hub_push, push_folder

EXPORT_FORMATS = ("safetensors",)
"""What `--format` takes: safetensors, one file in the teacher family's key layout (EDM-type generators)."""


def export_generator(source: str | Path, fmt: str, out: Path, *, force: bool = False,
                     push_to_hub: str | None = None) -> dict[str, Any]:
    """Export a generator (a run directory: its newest snapshot) as `fmt` into the folder `out`, and push the folder to
    the Hub repository `push_to_hub` when given. Bad input is a one-line UsageError before anything is written."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}", hint=f"choose one of: {', '.join(EXPORT_FORMATS)}")
    check_out_folder(out, force)
    token = check_hub_push(push_to_hub) if push_to_hub is not None else None  # before a LoRA snapshot loads its teacher
    export = edm_export(source)
    check_out_apart(out, export.source)
    summary = write_export_folder(export, out, force)
    summary["hub"] = None
    if push_to_hub is not None:
        meta = export.metadata
        message = f"simcli export of {export.source.name} ({meta.get('teacher')}, {meta.get('method')})"
        summary["hub"] = push_folder(Path(summary["out"]), push_to_hub, token, message)
    return summary
