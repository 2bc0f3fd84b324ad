"""simcli's network files: safetensors weights with JSON-encoded metadata under a format tag.

Generator snapshots (`simcli-generator/1`), shipped or exported teachers (`simcli-teacher/1`) and the digits
feature network (`simcli-classifier/1`) share this layout: every metadata value is JSON, `format` names the kind of file, `architecture` (when present) is the
record `simcli.nets.registry.build_network` rebuilds the network from. Writes are atomic, and byte-reproducible:
safetensors writes its header's metadata map in an arbitrary order, so simcli rewrites the header canonically
(keys sorted, compact JSON), and equal weights with equal metadata give equal bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
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
    """Read a network file of format `fmt`: (state_dict, decoded metadata); UsageError for anything else."""
    what = _WHAT.get(fmt, fmt)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable {what} ({exc})") from None
    if raw_meta.get("format") != fmt:
        raise UsageError(f"{path} is not a simcli {what} (format {raw_meta.get('format')!r})")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError:
        raise UsageError(f"{path} has corrupt metadata") from None
    return tensors, meta
