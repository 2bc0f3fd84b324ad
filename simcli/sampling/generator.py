"""Load a generator snapshot back into a network (all that sample and eval need)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.registry import network_with_weights
from simcli.rundir.snapshots import load_generator_file, resolve_generator_path


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[Denoiser, dict[str, Any], Path]:
    """(network in eval mode, snapshot metadata, resolved file) from a run directory or a snapshot file."""
    file = resolve_generator_path(path)
    tensors, meta = load_generator_file(file)
    if "architecture" not in meta or "sigma_init" not in meta:
        raise UsageError(f"{file} lacks the architecture or sigma_init record", hint="is it a teacher-fit file?")
    net = network_with_weights(meta["architecture"], tensors, str(file))
    return net.to(device).eval().requires_grad_(False), meta, file
