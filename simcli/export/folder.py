"""The exported folder: the weights (one safetensors file, or a diffusers pipeline), the model card, the sample grid,
the run spec and a summary, written whole or not at all.

Everything is written into a temporary folder beside --out (`.<name>.tmp-<pid>`), each file atomically, and the folder
is renamed into place at the end; with --force an existing --out is moved aside first and removed once the new one is
in place. A failure removes the temporary folder and leaves --out as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from simcli.errors import UsageError, WriteFailed
from simcli.export.edm_file import EXPORT_FORMAT, EdmExport, export_file_bytes
from simcli.export.model_card import SPEC_FILE, eval_records, render_model_card
from simcli.rundir.atomic import write_bytes_atomic, write_json_atomic
from simcli.rundir.layout import grid_path, images_seen_of, list_grids

CARD_FILE = "README.md"
SUMMARY_FILE = "simcli-export.json"
T = TypeVar("T")


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse, before anything is written, an --out that is a file, has no parent folder, or is a non-empty folder
    (unless force)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file", hint="--out names the folder to write the export into")
    if not out.absolute().parent.is_dir():
        raise UsageError(f"directory {out.absolute().parent} does not exist", hint="create it, or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} exists and is not empty",
                         hint="choose another --out, or add --force to replace it")


def check_out_apart(out: Path, source: Path) -> None:
    """Refuse an --out that holds the generator exported (its run directory, or a folder above it): --force would
    replace it."""
    out, folder = Path(out).absolute().resolve(), Path(source).absolute().resolve().parent
    if out == folder or out in folder.parents:
        raise UsageError(f"--out {out} holds the generator being exported ({Path(source).name})",
                         hint="choose a new folder for the export, outside the run directory")


def weights_file_name(out: Path) -> str:
    """`<name>.safetensors` after the export folder's name (characters other than letters, digits, '.', '_', '-'
    become '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(out).absolute().name).strip(".-") or "generator"
    return f"{name}.safetensors"


def chosen_grid(export: EdmExport) -> tuple[Path | None, str]:
    """The run's grid of the exported snapshot (same images seen), else its newest grid, and a caption; (None, '')
    when the run wrote none."""
    if export.run_dir is None:
        return None, ""
    seen = export.metadata.get("images_seen")
    same = grid_path(export.run_dir, seen) if isinstance(seen, int) else None
    if same is not None and same.is_file():
        grid = same
    else:
        grids = list_grids(export.run_dir)
        if not grids:
            return None, ""
        grid = grids[-1]
    kimg = images_seen_of(grid) / 1000
    which = "these weights" if grid == same else f"the EMA generator at {kimg:g} kimg (the run's newest grid)"
    return grid, (f"Samples of {which}, drawn by simcli during the run (`{grid.name}`, seeds from 0, one image per "
                  "seed, each from its own random stream).")


def export_summary(export: EdmExport, out: Path, files: list[str]) -> dict[str, Any]:
    """The simcli-export.json document (and the command's --json output, with the hub push added there)."""
    meta = export.metadata
    return {"format": EXPORT_FORMAT, "out": str(out), "files": files, "weights": files[0], "source": str(export.source),
            "run_dir": str(export.run_dir) if export.run_dir is not None else None,
            **{k: meta.get(k) for k in ("teacher", "method", "images_seen", "sigma_init", "generator_sigmas", "steps",
                                        "spec_sha256")},
            "class_name": meta["architecture"].get("class_name"), "tensors": len(export.tensors),
            **{k: meta[k] for k in ("nvidia_code", "family", "layout", "t_init") if k in meta}}


def write_export_folder(export: EdmExport, out: Path, force: bool = False,
                        usage: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Write the export folder at `out` (checked with check_out_folder first); returns its summary. usage: for a
    text-to-image single-file export, the card's usage text given the weights file's name (render_model_card's
    diffusers_usage)."""
    out = Path(out).absolute()
    check_out_folder(out, force)
    check_out_apart(out, export.source)
    weights = weights_file_name(out)
    grid, caption = chosen_grid(export)
    records = eval_records(export.run_dir)
    files = [weights, CARD_FILE, *([grid.name] if grid else []), *([SPEC_FILE] if export.spec else []), SUMMARY_FILE]
    summary = export_summary(export, out, files)

    def write(tmp: Path) -> None:
        write_bytes_atomic(tmp / weights, export_file_bytes(export))
        card = render_model_card(export, weights, records, grid.name if grid else None, caption,
                                 diffusers_usage=usage(weights) if usage is not None else None)
        write_run_files(export, tmp, grid, card)
        write_json_atomic(tmp / SUMMARY_FILE, summary)

    build_into_place(out, write)
    return summary


def write_run_files(export: EdmExport, folder: Path, grid: Path | None, card: str) -> None:
    """The files every export folder holds besides its weights and summary: the grid, the run spec, the card."""
    if grid is not None:
        write_bytes_atomic(folder / grid.name, grid.read_bytes())
    if export.spec is not None:
        write_json_atomic(folder / SPEC_FILE, export.spec)
    write_bytes_atomic(folder / CARD_FILE, card.encode())


def build_into_place(out: Path, write: Callable[[Path], T]) -> T:
    """Make a temporary folder beside `out` (`.<name>.tmp-<pid>`), `write(folder)` into it, and rename it to `out` (an
    existing `out` is moved aside first and removed once the new one is in place); returns what `write` returns. A
    failure removes the temporary folder and leaves `out` as it was; an OSError is a WriteFailed naming `out`."""
    out = Path(out).absolute()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        result = write(tmp)
        _move_into_place(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, WriteFailed):
            raise
        raise WriteFailed(out, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to `out`; an existing `out` is moved aside first and removed after."""
    aside = None
    if out.exists():
        aside = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(aside)
    try:
        tmp.rename(out)
    except OSError:
        if aside is not None:
            aside.rename(out)  # put the old folder back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
