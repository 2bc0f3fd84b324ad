"""The distributed world of a run: this process's place among the processes torchrun started, and the few
collectives the loop needs (a gradient all-reduce per update, sums of scalars, broadcasts, gathers).

A single process is a world of size 1 whose collectives return their inputs, so a one-process run goes
through exactly the same code as a many-process one. torch.distributed is used directly (NCCL on GPUs, gloo on
the CPU): gradients are summed with one flattened all-reduce per network update, after the last micro-batch.

Processes that stop answering are simcli.peers': every collective here is waited for through it (`wait_for`), so a
killed or hung process is named and a stop request is served while a collective waits. A world that gave up a
collective is not used again: it is not torn down (that would wait for the abandoned collective), the process just
exits.

torch is imported inside the functions (this module is a leaf the CLI imports early).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from simcli.errors import UsageError
from simcli.peers import COLLECTIVE_TIMEOUT_MIN, STORE_TIMEOUT_S, WATCH, PeerFailed, Watch, wait_for

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
BUCKET_BYTES = 256 * 2**20
"""Gradients are all-reduced in flattened buckets of at most this many bytes (one extra copy of a bucket in memory)."""



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
            wait_for(dist.all_reduce(flat, async_op=True))
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
        wait_for(dist.all_reduce(t, async_op=True))
        return [float(v) for v in t.tolist()]

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest of the processes' values."""
        if not self.distributed:
            return int(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.int64, device=device)
        wait_for(dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True))
        return int(t.item())

    def broadcast(self, obj: T, patient: bool = False) -> T:
        """Rank 0's obj, on every process (picklable objects), through a gloo group. patient: the set-up group, whose
        timeout allows rank 0 hours of work alone first (embedding a prompt file, fitting a network, scoring); a
        silent process still ends the wait after the collective timeout."""
        if not self.distributed:
            return obj
        import torch
        import torch.distributed as dist

        group = _patient_group() if patient else _object_group()
        data = pickle.dumps(obj) if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        wait_for(dist.broadcast(size, src=0, group=group, async_op=True))
        buffer = _bytes_tensor(data) if self.is_main else torch.empty(int(size.item()), dtype=torch.uint8)
        wait_for(dist.broadcast(buffer, src=0, group=group, async_op=True))
        return obj if self.is_main else pickle.loads(buffer.numpy().tobytes())

    def gather_to_main(self, obj: T) -> list[T] | None:
        """Every process's obj, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [obj]
        import torch
        import torch.distributed as dist

        group = _object_group()
        data = pickle.dumps(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        wait_for(dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=group, async_op=True))
        longest = max(int(s.item()) for s in sizes)
        buffer = torch.zeros(longest, dtype=torch.uint8)
        buffer[: len(data)] = _bytes_tensor(data)
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)] if self.is_main else None
        wait_for(dist.gather(buffer, out, dst=0, group=group, async_op=True))
        if out is None:
            return None
        return [pickle.loads(b[: int(s.item())].numpy().tobytes()) for b, s in zip(out, sizes, strict=True)]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            wait_for(dist.barrier(group=_object_group(), async_op=True))

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


def _bytes_tensor(data: bytes) -> torch.Tensor:
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


PATIENT_TIMEOUT_HOURS = 24.0
"""How long the other processes wait for rank 0's work alone (SIMCLI_SETUP_TIMEOUT_HOURS overrides): torch's
default collective timeout (10 minutes with NCCL) would end them while rank 0 embeds a large prompt file."""
_PATIENT_GROUP: list[Any] = []
_OBJECT_GROUP: list[Any] = []


def _patient_group() -> Any:
    """A gloo group over all processes with a long timeout, made on first use (every process reaches its first
    patient broadcast at the same point of the run, so they make it together)."""
    if not _PATIENT_GROUP:
        import datetime

        import torch.distributed as dist

        hours = float(os.environ.get("SIMCLI_SETUP_TIMEOUT_HOURS") or PATIENT_TIMEOUT_HOURS)
        _PATIENT_GROUP.append(dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours)))
    return _PATIENT_GROUP[0]


def _object_group() -> Any:
    """Where pickled objects travel: the default group on the CPU (gloo), else a gloo group made in join_world."""
    import torch.distributed as dist

    return _OBJECT_GROUP[0] if _OBJECT_GROUP else dist.group.WORLD


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


def join_world(device_name: str, collective_timeout_min: float | None = None, stop: Any = None) -> World:
    """This process's World: of size 1 outside torchrun, otherwise the torchrun process group joined through its
    environment (env://: NCCL when the run is on CUDA, gloo on the CPU); in a CUDA world each process's current
    device becomes cuda:LOCAL_RANK.

    `collective_timeout_min` (training.collective_timeout_min; default COLLECTIVE_TIMEOUT_MIN): how long a silent
    process is waited for; `stop`: the run's StopRequest, served while a collective waits (see the module's
    docstring)."""
    env = os.environ
    found = environment_world(env)
    if found is None or found[1] == 1:
        return World()
    rank, size, local_rank = found
    import datetime

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
    timeout_s = 60.0 * (COLLECTIVE_TIMEOUT_MIN if collective_timeout_min is None else float(collective_timeout_min))
    if not dist.is_initialized():
        # The group's own timeout only bounds a wait for a process that beats but never comes (the watch ends waits
        # for silent ones); it is kept above the collective timeout so that NCCL's watchdog never fires first.
        limit = datetime.timedelta(seconds=max(1800.0, 2 * timeout_s))
        dist.init_process_group(backend=backend, rank=rank, world_size=size, timeout=limit)
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
    prefix = f"simcli/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    WATCH.clear()
    WATCH.append(Watch(rank, size, backend, timeout_s, stop, store, prefix))
    _patient_group()  # made by every process here, together
    if backend != "gloo":
        _OBJECT_GROUP.append(dist.new_group(backend="gloo"))
    _JOINED[0] = True
    return World(rank, size, local_rank, backend)


_JOINED = [False]


def joined() -> bool:
    """Whether this process joined a world of several processes in its life (errors from then on may be its own
    alone)."""
    return _JOINED[0]


def leave_world(world: World) -> None:
    """Tear the process group down (after the run, on every process; in a `finally` block, the error that ends the
    run decides the exit code rank 0 publishes to the others). A world that gave up a collective is left as it is:
    the process exits without waiting for the collective."""
    if not world.distributed:
        return
    import sys

    import torch.distributed as dist

    watch = WATCH.pop() if WATCH else None
    broken = watch is not None and watch.broken
    if watch is not None:
        ending = sys.exc_info()[1]  # the error the run ends with, when called while it propagates
        watch.close(None if ending is None else 130 if isinstance(ending, KeyboardInterrupt)
                    else int(getattr(ending, "exit_code", 1) or 1))
    if dist.is_initialized():
        _PATIENT_GROUP.clear()  # (joined() stays true: errors after the run are still this process's)
        _OBJECT_GROUP.clear()
        if not broken:
            dist.destroy_process_group()
