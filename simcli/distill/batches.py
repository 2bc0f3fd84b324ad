"""How an update's batch is cut into micro-batches and shared out over the processes of a run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simcli.distill.conditions import ClassLabels, Conditions
from simcli.errors import UsageError
from simcli.world import World


@dataclass(frozen=True)
class BatchPlan:
    """How an update's batch is drawn: its size over all processes, the micro-batch, shapes, labels, device, and
    which micro-batches this process computes (all of them in a one-process run)."""

    sigma_init: float
    batch_size: int
    micro_batch: int
    sample_shape: tuple[int, ...]
    label_dim: int
    device: torch.device
    indices: tuple[int, ...] | None = None
    condition_source: Conditions | None = None
    """What samples are conditioned on; None: class labels of label_dim classes (none when 0)."""
    step_sigmas: tuple[float, ...] = ()
    """A few-step generator's noise levels after sigma_init (generator.steps > 1; simcli.nets.few_step)."""

    def __post_init__(self) -> None:
        if self.micro_batch <= 0 or self.batch_size % self.micro_batch:
            raise ValueError(f"micro-batch {self.micro_batch} does not divide the batch {self.batch_size}")

    @property
    def generator_sigmas(self) -> tuple[float, ...]:
        """The generator's noise levels, sigma_init first (one for a one-step generator)."""
        return (self.sigma_init, *self.step_sigmas)

    @property
    def conditions(self) -> Conditions:
        return self.condition_source if self.condition_source is not None else ClassLabels(self.label_dim)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per update, over all processes."""
        return self.batch_size // self.micro_batch

    @property
    def mine(self) -> tuple[int, ...]:
        """The micro-batches this process computes."""
        return tuple(range(self.micro_batches)) if self.indices is None else self.indices


def share_micro_batches(micro_batches: int, world: World) -> tuple[int, ...]:
    """The contiguous share of the micro-batches 0..micro_batches-1 that this process computes."""
    if micro_batches % world.size:
        raise ValueError(f"{micro_batches} micro-batches cannot be shared by {world.size} processes")
    per = micro_batches // world.size
    return tuple(range(world.rank * per, (world.rank + 1) * per))


def resolve_micro_batch(batch_size: int, batch_gpu: int | None, world_size: int, saved: int | None) -> tuple[int, list[str]]:
    """The micro-batch of a run and warnings: training.batch_gpu when set; else the micro-batch the run used before
    (saved) when the processes can share its micro-batches; else batch_size / world_size.

    The random streams belong to micro-batches (simcli.distill.streams), so keeping the micro-batch keeps the run
    the same for any number of processes; the number of micro-batches must be a multiple of the process count.
    """
    how = "pass --batch-gpu (training.batch_gpu) so that the number of processes divides batch_size / batch_gpu"
    if batch_gpu is not None:
        if (batch_size // batch_gpu) % world_size:
            raise UsageError(f"batch_size {batch_size} / batch_gpu {batch_gpu} = {batch_size // batch_gpu} micro-batches "
                             f"cannot be shared by {world_size} processes", hint=how)
        if saved is not None and saved != batch_gpu:
            return batch_gpu, [f"the run used micro-batches of {saved} images and goes on with {batch_gpu} "
                               "(--batch-gpu): its random draws differ from here on"]
        return batch_gpu, []
    if saved is not None and batch_size % saved == 0 and (batch_size // saved) % world_size == 0:
        return saved, []
    if batch_size % world_size:
        raise UsageError(f"batch_size {batch_size} cannot be shared by {world_size} processes",
                         hint="choose a batch size that the number of processes divides")
    micro_batch = batch_size // world_size
    warnings = []
    if saved is not None and saved != micro_batch:
        warnings.append(f"the run used micro-batches of {saved} images, which {world_size} processes cannot share; "
                        f"going on with {micro_batch} (random draws differ from the run's so far; "
                        f"pass --batch-gpu {saved} with a process count that divides {batch_size // saved} to keep them)")
    return micro_batch, warnings
