"""Process-wide runtime settings: the device to run on, the CPU threads (their count changes the last bits of CPU
results: reductions split by it) and how OpenMP's threads wait, and whether the machine looks oversubscribed.

torch is imported inside the functions: the CLI imports this module before it validates a spec, and importing
torch takes seconds (tens of seconds on a busy machine) that a mistyped option should not cost.
"""

from __future__ import annotations

import os
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


BUSY_LOAD_PER_CORE = 1.5
"""A machine looks oversubscribed when its 1-minute load average exceeds this many runnable threads per core."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which job schedulers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def oversubscribed(load_avg: float, cores: int, per_core: float = BUSY_LOAD_PER_CORE) -> bool:
    """Whether more threads want to run than `cores` can serve: the load average above `per_core` per core."""
    return load_avg > per_core * cores


def prefer_passive_openmp(environ: dict[str, str] | None = None) -> None:
    """Let torch's OpenMP threads sleep between parallel regions instead of spinning, unless OMP_WAIT_POLICY is set.

    Called before torch is imported (OpenMP reads it once). Spinning threads take the cores that other processes'
    threads need, so on a shared machine every parallel region waits for a descheduled thread: the digits quick start
    ran 2.2x faster at 2 busy-loops per 2 cores and NNN at 6 (benchmarks/results/threads_under_load.md), for 9% on a
    quiet machine."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
