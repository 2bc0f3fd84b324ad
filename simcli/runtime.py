"""Process-wide runtime settings: the device to run on and the CPU threads (neither changes results on CPU).

torch is imported inside the functions: the CLI imports this module before it validates a spec, and importing
torch takes seconds (tens of seconds on a busy machine) that a mistyped option should not cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simcli.errors import UsageError

if TYPE_CHECKING:
    import torch


def set_cpu_threads(threads: int | None) -> None:
    """Use this many CPU threads for torch (None keeps torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available, else cpu; anything else must name an available device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'", hint="use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for, but CUDA is not available", hint="use --device cpu")
    return device
