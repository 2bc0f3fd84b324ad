"""`simcli export`, composed: every check first (the output folder, the generator, the Hub), then the folder written
whole, then the push. Returns the command's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.export.diffusers_pipeline import check_components, prepare_diffusers, write_diffusers_folder
from simcli.export.edm_file import edm_export
from simcli.export.folder import check_out_apart, check_out_folder, write_export_folder
from simcli.export.hub import check_hub_push, push_folder
from simcli.export.single_file import holds_diffusers_network, single_file_export, usage_text

EXPORT_FORMATS = ("safetensors", "diffusers")
"""What `--format` takes: safetensors, one file in the teacher family's key layout (EDM-type generators: NVIDIA's;
generators of PixArt, SD3, FLUX and SD/SDXL UNet teachers: the original single-file checkpoint's,
simcli.export.single_file);
diffusers, a pipeline folder diffusers loads (generators of diffusers teachers: PixArt, SD3, FLUX, SANA)."""


def export_generator(source: str | Path, fmt: str, out: Path, *, force: bool = False,
                     push_to_hub: str | None = None, components: str | None = None) -> dict[str, Any]:
    """Export a generator (a run directory: its newest snapshot) as `fmt` into the folder `out`, and push the folder to
    the Hub repository `push_to_hub` when given. components: reference or copy (default reference), diffusers only.
    Bad input is a one-line UsageError before anything is written."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}", hint=f"choose one of: {', '.join(EXPORT_FORMATS)}")
    if components is not None and fmt != "diffusers":
        raise UsageError(f"--components applies to --format diffusers only, not --format {fmt}",
                         hint="leave --components out, or export with --format diffusers")
    if fmt == "diffusers":
        check_components(components or "reference")
    check_out_folder(out, force)
    token = check_hub_push(push_to_hub) if push_to_hub is not None else None  # before a LoRA snapshot loads its teacher
    if fmt == "diffusers":
        export = prepare_diffusers(source, components or "reference")
        check_out_apart(out, export.file)
        summary = write_diffusers_folder(export, out, force)
        file = export.file
    else:
        text_to_image = holds_diffusers_network(source)
        edm = single_file_export(source) if text_to_image else edm_export(source)
        check_out_apart(out, edm.source)
        summary = write_export_folder(edm, out, force, usage_text(edm) if text_to_image else None)
        file = edm.source
    summary["hub"] = None
    if push_to_hub is not None:
        message = f"simcli export of {file.name} ({summary.get('teacher')}, {summary.get('method')})"
        summary["hub"] = push_folder(Path(summary["out"]), push_to_hub, token, message)
    return summary
