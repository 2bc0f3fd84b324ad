"""When a run reports, and what its status records hold: the clock, the due reports, memory and timing figures."""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from simcli.config.spec import LoggingSpec
from simcli.distill.state import Progress
from simcli.runtime import oversubscribed, usable_cores


def _now() -> float:
    """The loop's time source (seconds; tests replace it with a fake clock)."""
    return time.perf_counter()


class Clock:
    """The run's wall time; a resumed run continues from the time saved in its state."""

    def __init__(self, elapsed_before: float = 0.0):
        self.origin = _now() - elapsed_before

    def elapsed(self) -> float:
        return _now() - self.origin


@dataclass
class Durations:
    """The last measured seconds of an iteration, a snapshot (or the first grids) and an evaluation."""

    iteration: float = 0.0
    snapshot: float = 0.0
    evaluation: float = 0.0

    def needed(self, safety: float = 1.5) -> float:
        """What a time budget must still hold to run one more iteration (and an evaluation it may trigger) and then
        save: the safety factor covers jitter, a slower snapshot than the last one, and the process's exit."""
        return safety * (2 * self.iteration + self.snapshot + self.evaluation)


@dataclass(frozen=True)
class Due:
    """What an iteration's end calls for."""

    status: bool
    evaluate: bool
    snapshot: bool


def due_reports(logging: LoggingSpec, images_before: int, images_now: int, at_end: bool, evaluating: bool) -> Due:
    """Which reports the images seen in the last iteration crossed (all of them at the end of the run)."""

    def crossed(every_kimg: float | None) -> bool:
        if every_kimg is None:
            return False
        return math.floor(images_now / (every_kimg * 1000)) > math.floor(images_before / (every_kimg * 1000))

    evaluate = evaluating and (at_end or crossed(logging.eval_every_kimg))
    return Due(at_end or crossed(logging.status_every_kimg), evaluate, at_end or evaluate or crossed(logging.snapshot_every_kimg))


def memory_record(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: CPU resident set, and on CUDA the peak allocated GPU memory (GiB)."""
    rec = {"cpu_mem_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        rec["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return rec


MACHINE_KEYS = ("sec_per_kimg", "elapsed_s", "cpu_mem_gib", "gpu_mem_gib", "load_avg", "cpu_cores", "cpu_threads",
                "cpu_busy")
"""Keys of a status record that describe the machine and the moment, not the run: equal runs differ in them."""


def cpu_load_record(device: torch.device) -> dict[str, Any]:
    """CPU runs: the machine's 1-minute load average, the cores this process may use, its torch threads, and
    'cpu_busy' when the load says more threads want to run than the cores serve (simcli.runtime.oversubscribed)."""
    if device.type != "cpu":
        return {}
    load, cores = os.getloadavg()[0], usable_cores()
    return {"load_avg": round(load, 2), "cpu_cores": cores, "cpu_threads": torch.get_num_threads(),
            "cpu_busy": oversubscribed(load, cores)}


def status_record(
    progress: Progress, batch_size: int, window_seconds: float, window_start_step: int, device: torch.device,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A 'status' record of metrics.jsonl: the losses averaged over the window since the last one, throughput,
    non-finite counts and memory (of rank 0)."""
    p, n = progress, progress.window["n"]
    images_seen = p.step * batch_size
    kimg = (p.step - window_start_step) * batch_size / 1000
    return {
        "kind": "status",
        "step": p.step,
        "images_seen": images_seen,
        "kimg": images_seen / 1000,
        # null (JSON's NaN) when no iteration of the interval was finite; simcli compare skips it
        "loss_online": p.window["loss_online"] / n if n else None,
        "loss_generator": p.window["loss_generator"] / n if n else None,
        "nonfinite_in_interval": int(p.window["nonfinite"]),
        "nonfinite_total": p.nonfinite_total,
        "sec_per_kimg": window_seconds / kimg if kimg else None,
        "elapsed_s": round(p.elapsed_s, 3),
        **extra,
        **memory_record(device),
        **cpu_load_record(device),
    }
