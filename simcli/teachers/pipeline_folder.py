"""A diffusers pipeline folder on disk (written by `save_pretrained`, or a Hub snapshot): its small JSON files, the
check that it is a pipeline simcli supports, and a fingerprint of its parts.

Reads JSON only; imports neither torch nor diffusers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.teachers.pipeline_families import FAMILIES, PipelineFamily, pipeline_family

LOCAL_HINT = ("pass a folder written by a diffusers pipeline's save_pretrained (model_index.json, transformer/ or "
              f"unet/, ...) of one of: {', '.join(FAMILIES)}")


def read_json(path: Path, hint: str = LOCAL_HINT) -> dict[str, Any]:
    """A JSON object from a file; a one-line UsageError when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}",
                         hint=hint) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object", hint=hint)
    return data


def folder_family(folder: Path) -> PipelineFamily:
    """The family named by folder/model_index.json's _class_name (UsageError when unsupported)."""
    index = folder / "model_index.json"
    return pipeline_family(read_json(index).get("_class_name"), str(index))


def check_pipeline_folder(folder: Path) -> PipelineFamily:
    """The family of a local pipeline folder, refusing (one line) a folder that is not a pipeline simcli supports or
    lacks the network's config or a text encoder, tokenizer or VAE folder. Reads small JSON files; loads nothing."""
    if not folder.is_dir():
        raise UsageError(f"diffusers pipeline folder not found: {folder}", hint=LOCAL_HINT)
    if not (folder / "model_index.json").is_file():
        raise UsageError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json", hint=LOCAL_HINT)
    family = folder_family(folder)
    config = folder / family.network / "config.json"
    if not config.is_file():
        raise UsageError(f"{folder / family.network} has no config.json (a {family.pipeline_class} needs its "
                         f"{family.network_class})", hint=LOCAL_HINT)
    class_name = read_json(config).get("_class_name")
    if class_name not in (None, *family.network_configs):
        raise UsageError(f"{config} is a {class_name}, not the {family.network_class} of a {family.pipeline_class}",
                         hint=LOCAL_HINT)
    missing = [name for name in family.components[1:] if not (folder / name).is_dir()]
    if missing:
        raise UsageError(f"{folder} lacks the {', '.join(f'{name}/' for name in missing)} folder(s) of a "
                         f"{family.pipeline_class}", hint=LOCAL_HINT)
    return family


def folder_fingerprint(folders: list[Path], head_bytes: int = 1 << 20) -> str:
    """sha256 over file names, sizes and contents (whole small files; first and last MiB of large ones)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            digest.update(f"{path.relative_to(folder.parent).as_posix()}\0{size}\0".encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(head_bytes))
                if size > 2 * head_bytes:
                    fh.seek(size - head_bytes)
                    digest.update(fh.read(head_bytes))
    return digest.hexdigest()
