"""The architecture record of a teacher's network found without loading its weights, for `distill --dry-run`.

- official EDM and EDM2 names: the record simcli builds once the checkpoint is loaded, from the catalog
  (simcli.teachers.edm_catalog.edm_network_record, edm2_catalog.edm2_network_record), so nothing is downloaded;
- simcli teacher files (`digits`, `PATH.safetensors`): the `architecture` in the safetensors metadata, read from the
  file's header alone (no tensor data).

Local EDM pickles (`PATH.pkl`) have none: the root network's `_init_kwargs` follow its whole module tree in the
pickle stream, so the restricted unpickler (simcli.teachers.edm_unpickler) reads, keeps (pickle's memo) and parses
every tensor blob before it gets there; that is the cost of loading the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.rundir.network_file import TEACHER_FORMAT, check_metadata, short_repr
from simcli.teachers.edm2_catalog import edm2_network_record, get_edm2_network, is_edm2_name
from simcli.teachers.edm_catalog import EDM_TEACHERS, edm_network_record


def native_file_architecture(path: str | Path) -> dict[str, Any]:
    """The `architecture` recorded in a simcli teacher file's metadata, from its header only (the tensors are not
    read); the same one-line UsageErrors as loading it (simcli.teachers.native) for a file that is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"teacher file not found: {path}", hint="pass a simcli-teacher .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:  # parses the header; tensors are only mapped, never read
            raw = f.metadata() or {}
    except MemoryError:
        raise
    except Exception as exc:  # SafetensorError, OSError: a damaged or foreign file
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UsageError(f"{path} is not a readable teacher file ({why})") from None
    if raw.get("format") != TEACHER_FORMAT:
        raise UsageError(f"{path} is not a simcli teacher file (format {short_repr(raw.get('format'))})")
    try:
        meta = {"architecture": json.loads(raw["architecture"])} if "architecture" in raw else {}
    except (ValueError, RecursionError):
        raise UsageError(f"{path} has corrupt metadata: 'architecture' is not JSON simcli can read",
                         hint="the file is damaged or was edited by hand") from None
    check_metadata(meta, path)
    if "architecture" not in meta:
        raise UsageError(f"{path} records no architecture", hint="save teachers with simcli.rundir.network_file")
    return meta["architecture"]


def teacher_architecture_record(name: str) -> dict[str, Any] | None:
    """The architecture record of an EDM or simcli-file teacher without loading (or downloading) its weights; None
    for local EDM pickles (module docstring) and for names of other kinds."""
    if name in EDM_TEACHERS:
        return edm_network_record(EDM_TEACHERS[name])
    if is_edm2_name(name):
        return edm2_network_record(get_edm2_network(name))
    from simcli.teachers.registry import DIGITS_FILE, DIGITS_TEACHER

    if name == DIGITS_TEACHER:
        from simcli.assets import asset_path

        return native_file_architecture(asset_path(DIGITS_FILE))
    if name.endswith(".safetensors"):
        return native_file_architecture(name)
    return None
