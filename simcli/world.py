"""The distributed world of a run: this process's place among the processes torchrun started, and the few
collectives the loop needs (a gradient all-reduce per update, sums of scalars, broadcasts, gathers).

A single process is a world of size 1 whose collectives return their inputs, so a one-process run goes
through exactly the same code as a many-process one. torch.distributed is used directly (NCCL on GPUs, gloo on
the CPU): gradients are summed with one flattened all-reduce per network update, after the last micro-batch.

torch is imported inside the functions (this module is a leaf the CLI imports early).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from simcli.errors import SimcliError, UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
BUCKET_BYTES = 256 * 2**20
"""Gradients are all-reduced in flattened buckets of at most this many bytes (one extra copy of a bucket in memory)."""


class PeerFailed(SimcliError):
    """Another process of the run (rank 0) failed at a step all of them take together; that process reports why.

    Carries the failing process's exit code; the CLI exits with it without printing a second message."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes (and its rank on its node); backend None: not distributed."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory, holds its lock and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, name: str) -> torch.device:
        """The device this process runs on: `name` resolved (auto, cpu, cuda); in a CUDA world, cuda:LOCAL_RANK."""
        import torch

        from simcli.runtime import resolve_device

        device = resolve_device(name)
        if not self.distributed or device.type != "cuda":
            return device
        if device.index is not None and name != "auto":
            raise UsageError(f"--device {name} names one GPU, but torchrun started {self.size} processes",
                             hint="use --device cuda (or auto): each process takes the GPU of its LOCAL_RANK")
        return torch.device("cuda", self.local_rank)

    # ------------------------------------------------------------------ collectives (identities in a world of 1)

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum the tensors over all processes, in place, in flattened buckets (one collective per bucket)."""
        if not self.distributed or not tensors:
            return
        import torch
        import torch.distributed as dist

        buckets: list[list[torch.Tensor]] = []
        size = 0
        for t in tensors:
            if not buckets or size + t.numel() * t.element_size() > BUCKET_BYTES or buckets[-1][0].dtype != t.dtype:
                buckets.append([])
                size = 0
            buckets[-1].append(t)
            size += t.numel() * t.element_size()
        for bucket in buckets:
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum_floats(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over all processes (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest of the processes' values."""
        if not self.distributed:
            return int(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast(self, obj: T, patient: bool = False) -> T:
        """Rank 0's obj, on every process (picklable objects). patient: through the set-up group, whose timeout
        allows rank 0 hours of work alone first (embedding a prompt file, fitting a network, scoring)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=_patient_group() if patient else None)
        return box[0]

    def gather_to_main(self, obj: T) -> list[T] | None:
        """Every process's obj, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, action: Callable[[], T]) -> T:
        """Run action on rank 0 and hand its (small, picklable) result to every process; if it raises, rank 0
        re-raises and the others raise PeerFailed with its exit code, instead of waiting in a collective rank 0
        never reaches."""
        if not self.distributed:
            return action()
        return self._main_then_tell(action)[1]

    def main_first(self, action: Callable[[], T]) -> T:
        """Run action on rank 0 first (to fill a cache, write a file), then on the other processes; each returns its
        own result. A failure on rank 0 ends the others as on_main does."""
        if not self.distributed:
            return action()
        result, _ = self._main_then_tell(action, share=False)
        return result if self.is_main else action()

    def _main_then_tell(self, action: Callable[[], T], share: bool = True) -> tuple[Any, Any]:
        """(rank 0's result or None, the result broadcast when share) once rank 0 ran action and told the others."""
        result: Any = None
        told: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                result = action()
                told = ("ok", result if share else None)
            except BaseException as exc:  # handed on, then re-raised below
                error = exc
                told = ("error", (str(getattr(exc, "message", exc)), int(getattr(exc, "exit_code", 1))))
        status, value = self.broadcast(told, patient=True)
        if error is not None:
            raise error
        if status == "error":
            message, code = value
            raise PeerFailed(f"rank 0 failed: {message}", code)
        return result, value


PATIENT_TIMEOUT_HOURS = 24.0
"""How long the other processes wait for rank 0's work alone (SIMCLI_SETUP_TIMEOUT_HOURS overrides): torch's
default collective timeout (10 minutes with NCCL) would end them while rank 0 embeds a large prompt file."""
_PATIENT_GROUP: list[Any] = []


def _patient_group() -> Any:
    """A gloo group over all processes with a long timeout, made on first use (every process reaches its first
    patient broadcast at the same point of the run, so they make it together)."""
    if not _PATIENT_GROUP:
        import datetime

        import torch.distributed as dist

        hours = float(os.environ.get("SIMCLI_SETUP_TIMEOUT_HOURS") or PATIENT_TIMEOUT_HOURS)
        _PATIENT_GROUP.append(dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours)))
    return _PATIENT_GROUP[0]


def environment_world(env: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables; None when this process was not started by it."""
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    try:
        rank, size = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers",
                         hint="start simcli with torchrun, which sets them") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise UsageError(f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local_rank}",
                         hint="start simcli with torchrun, which sets them")
    return rank, size, local_rank


def join_world(device_name: str) -> World:
    """This process's World: of size 1 outside torchrun, otherwise the torchrun process group joined through its
    environment (env://: NCCL when the run is on CUDA, gloo on the CPU); in a CUDA world each process's current
    device becomes cuda:LOCAL_RANK."""
    env = os.environ
    found = environment_world(env)
    if found is None or found[1] == 1:
        return World()
    rank, size, local_rank = found
    import torch
    import torch.distributed as dist

    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise UsageError("WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not",
                         hint="start simcli with torchrun (python -m torch.distributed.run), which sets them")
    on_cuda = device_name != "cpu" and torch.cuda.is_available() and not device_name.startswith("cpu")
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible",
                             hint="start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if on_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
    _patient_group()  # made by every process here, together
    _JOINED[0] = True
    return World(rank, size, local_rank, backend)


_JOINED = [False]


def joined() -> bool:
    """Whether this process joined a world of several processes in its life (errors from then on may be its own
    alone)."""
    return _JOINED[0]


def leave_world(world: World) -> None:
    """Tear the process group down (after the run, on every process)."""
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            _PATIENT_GROUP.clear()  # (joined() stays true: errors after the run are still this process's)
            dist.destroy_process_group()
