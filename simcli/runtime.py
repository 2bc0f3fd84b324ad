"""Process-wide runtime settings that do not change results: CPU threads."""

from __future__ import annotations

import torch

from simcli.errors import UsageError


def set_cpu_threads(threads: int | None) -> None:
    """Use this many CPU threads for torch (None keeps torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
