"""simcli's network files: safetensors weights with JSON-encoded metadata under a format tag.

Generator snapshots (`simcli-generator/1`), shipped or exported teachers (`simcli-teacher/1`) and the digits
feature network (`simcli-classifier/1`) share this layout: every metadata value is JSON, `format` names the kind of file, `architecture` (when present) is the
record `simcli.nets.registry.build_network` rebuilds the network from. Writes are atomic, and byte-reproducible:
safetensors writes its header's metadata map in an arbitrary order, so simcli rewrites the header canonically
(keys sorted, compact JSON), and equal weights with equal metadata give equal bytes.

A file is untrusted input: reading one checks the types of the values simcli uses (`check_metadata`), so a
hand-edited or hostile header is one line naming the file and the key, never an error deep in a loader.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from simcli.errors import UsageError
from simcli.rundir.atomic import write_bytes_atomic

GENERATOR_FORMAT = "simcli-generator/1"
TEACHER_FORMAT = "simcli-teacher/1"
CLASSIFIER_FORMAT = "simcli-classifier/1"
_WHAT = {GENERATOR_FORMAT: "generator snapshot", TEACHER_FORMAT: "teacher file", CLASSIFIER_FORMAT: "classifier file"}


def canonical_safetensors(raw: bytes) -> bytes:
    """The same safetensors file with its header rewritten canonically: keys sorted, compact ASCII JSON.

    The layout is an 8-byte little-endian header length, the JSON header (padded with spaces so the data
    stays 8-byte aligned), then the data, which is left as it is.
    """
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def network_file_bytes(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], fmt: str) -> bytes:
    """The bytes of a network file: weights (moved to the CPU, contiguous), `format` = fmt, every other value JSON."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {"format": fmt, **{k: json.dumps(v) for k, v in metadata.items()}}
    return canonical_safetensors(save(tensors, metadata=meta))


def save_network_file(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], fmt: str) -> None:
    """Atomically write a network file (see network_file_bytes); identical inputs give identical bytes."""
    write_bytes_atomic(Path(path), network_file_bytes(state_dict, metadata, fmt))


def load_network_file(path: Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a network file of format `fmt`: (state_dict, decoded and type-checked metadata); UsageError for anything
    else (a file that vanished while read too: callers that race a writer check `path.exists()` and list again)."""
    what = _WHAT.get(fmt, fmt)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # SafetensorError, OSError, and whatever else a damaged file makes the reader raise
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UsageError(f"{path} is not a readable {what} ({why})") from None
    if raw_meta.get("format") != fmt:
        raise UsageError(f"{path} is not a simcli {what} (format {short_repr(raw_meta.get('format'))})")
    meta = {}
    for key, value in raw_meta.items():
        if key == "format":
            continue
        try:
            meta[key] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, an integer over Python's digit limit, nesting beyond its stack
            raise UsageError(f"{path} has corrupt metadata: {short_repr(key)} is not JSON simcli can read",
                             hint="the file is damaged or was edited by hand") from None
    check_metadata(meta, path)
    return tensors, meta


FLOAT32_MAX = 3.4028234663852886e38  # networks compute in float32: a larger sigma overflows there


def _positive_number(value: Any) -> bool:
    if type(value) not in (int, float):  # bool is an int, but not a noise level
        return False
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return False
    return math.isfinite(value) and 0 < value <= FLOAT32_MAX


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


# The metadata values simcli reads, whichever format records them, and what each must be.
METADATA_TYPES = {
    "architecture": (lambda v: isinstance(v, dict), "a mapping"),
    "spec": (lambda v: isinstance(v, dict), "a mapping"),
    "sigma_init": (_positive_number, "a positive number within float32's range"),
    "images_seen": (_count, "a non-negative integer"),
    "step": (_count, "a non-negative integer"),
}


def check_metadata(meta: dict[str, Any], path: Path) -> None:
    """One-line UsageError naming the file and the key when a value simcli uses has the wrong type or range."""
    for key, (ok, expected) in METADATA_TYPES.items():
        if key in meta and not ok(meta[key]):
            raise UsageError(f"{path}: metadata {key} must be {expected}, got {short_repr(meta[key])}",
                             hint="the file is damaged or was edited by hand")


def short_repr(value: Any) -> str:
    """A bounded repr of a value (a hostile one can be megabytes long or nested thousands deep)."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
