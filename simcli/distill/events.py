"""Progress events the engine reports to whoever runs it (the CLI renders them; tests collect them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    """The run is set up: where it starts and how far it goes."""

    run_dir: Path
    device: str
    start_step: int
    total_steps: int
    batch_size: int
    resumed_from: Path | None
    generator_parameters: int
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    """The run's wall time before this process (0 for a new run): what Status and Heartbeat's elapsed_s start from."""
    processes: int = 1
    """Processes sharing the run (torchrun's world size)."""
    micro_batch: int | None = None
    """Images per forward pass (the micro-batches are shared out over the processes); None: the whole batch."""
    precision: str = "fp32"
    """The network passes' precision (training.precision)."""


@dataclass(frozen=True)
class DownloadProgress:
    """Bytes of a teacher checkpoint downloaded so far (total None when the server does not say)."""

    done_bytes: int
    total_bytes: int | None


@dataclass(frozen=True)
class EmbeddingProgress:
    """Prompts embedded so far into the store at `store` (text-to-image runs, once per prompt file and encoder)."""

    done: int
    total: int
    store: str


@dataclass(frozen=True)
class EmbeddingStoreReady:
    """The embedding store at `store` is built or found (once per run): its prompts' tokens, pooled embeddings and
    offsets take `total_bytes`, `bytes_per_prompt` on average; a prompt takes at most `max_bytes_per_prompt` =
    (max_tokens x dim + pooled_dim) x element_bytes (L tokens of width C, a pooled embedding of width P)."""

    store: str
    prompts: int
    total_bytes: int
    bytes_per_prompt: float
    max_tokens: int
    dim: int
    pooled_dim: int
    element_bytes: int
    max_bytes_per_prompt: int


@dataclass(frozen=True)
class EmbeddingWait:
    """Another process (`holder`: 'PID 12 on host h (since ...)') is building the embedding store at `store`, which
    this run waits for: sent at once and every 30 s while it waits, with how many prompts that process has stored."""

    store: str
    holder: str
    stored: int
    total: int
    waited_s: float


@dataclass(frozen=True)
class TeacherFitProgress:
    """Progress of the MLP fit to an analytic teacher."""

    step: int
    total_steps: int
    loss: float


@dataclass(frozen=True)
class Status:
    """One metrics.jsonl record (losses averaged since the previous record)."""

    record: dict[str, Any]


@dataclass(frozen=True)
class Heartbeat:
    """Display-only progress between status records, when logging.heartbeat_every_s passed without one.

    Never written to metrics.jsonl (which stays independent of timing, so resumed runs repeat it record for record).
    """

    step: int
    total_steps: int
    images_seen: int
    elapsed_s: float


@dataclass(frozen=True)
class Evaluated:
    """One evaluation record of the EMA generator (FID/IS, or exact metrics for mixtures)."""

    record: dict[str, Any]


@dataclass(frozen=True)
class NonFiniteStep:
    """An iteration whose loss or gradients were not finite; its update was skipped."""

    step: int
    phase: str
    consecutive: int


@dataclass(frozen=True)
class SnapshotSaved:
    """A generator snapshot and a resumable state were written."""

    generator_path: Path
    state_path: Path
    images_seen: int


@dataclass(frozen=True)
class GridSaved:
    """A sample grid PNG was written (of the EMA generator, or of the teacher's own sampler)."""

    path: Path
    what: str


EventHandler = Callable[[object], None]


def ignore_event(event: object) -> None:
    """The default handler: drop every event."""
