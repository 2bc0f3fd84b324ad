"""Load a generator snapshot back into a network (all that sample and eval need), and say which one it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.registry import NATIVE_DTYPE_HINT, network_with_weights
from simcli.rundir.layout import BEST_GENERATOR_FILE
from simcli.rundir.snapshots import read_generator


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[Denoiser, dict[str, Any], Path]:
    """(network in eval mode, snapshot metadata, resolved file) from a run directory or a snapshot file.

    Refused with a one-line UsageError naming the file: metadata of the wrong type (sigma_init not a finite positive
    number, among others: simcli.rundir.network_file.check_metadata), weights holding NaN or Inf, an architecture
    record that is hostile or disagrees with the weights (simcli.nets.registry.network_with_weights)."""
    tensors, meta, file = read_generator(path)
    if "architecture" not in meta or "sigma_init" not in meta:
        raise UsageError(f"{file} lacks the architecture or sigma_init record", hint="is it a teacher-fit file?")
    net = network_with_weights(meta["architecture"], tensors, str(file), dtypes=True, dtype_hint=NATIVE_DTYPE_HINT)
    return net.to(device).eval().requires_grad_(False), meta, file


def generator_choice(given: str | Path, file: Path) -> dict[str, Any]:
    """Which file a --generator argument chose: `generator` (the file), `generator_chosen` ('the file given', or 'the
    newest snapshot' of a run directory) and `best_generator` (generator-best.safetensors beside a chosen newest
    snapshot, which scores differ from; None when there is none)."""
    newest = Path(given).is_dir()
    best = Path(given) / BEST_GENERATOR_FILE if newest else None
    return {"generator": str(file), "generator_chosen": "the newest snapshot" if newest else "the file given",
            "best_generator": str(best) if best is not None and best.is_file() else None}
