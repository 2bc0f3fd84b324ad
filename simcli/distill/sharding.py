"""FSDP2 sharding of a run's networks over its processes (training.sharding = fsdp).

Each network is sharded block by block with torch's own `fully_shard` (torch.distributed.fsdp): the blocks are the
children of the network's module lists and dicts (an EDM UNet's encoder and decoder blocks, a transformer's blocks,
a diffusers UNet's down and up blocks), and the rest of the network is the root's unit. The generator, the online
model and the EMA keep 1/N of their parameters (and the first two of their gradients and Adam states) per process;
the frozen teacher keeps 1/N of its parameters, on the CPU with training.offload_teacher.

What stays as without sharding:
- the sums: simcli sums gradients over micro-batches and processes (each micro-batch's loss is divided by the number
  of micro-batches), so FSDP's reduce-scatter is told to sum (divide factor 1, sum reductions: gloo has no
  pre-multiplied sum) in every unit, not average;
- the precision: under bf16 or fp16 autocast the unsharded parameters are gathered in that dtype, the gradients
  reduced in float32 and the shards (master weights, Adam's moments) stay float32 (FSDP's mixed-precision policy);
  fp32 and tf32 gather float32;
- the EMA: the generator and the EMA are sharded alike, so the EMA's update is local to each shard;
- the EMA's evaluations: its blocks are gathered in float32 in every precision (it is never trained under
  autocast);
- the grids and the evaluations, which rank 0 (or each process, with its share of samples) runs alone: `gathered`
  all-gathers a network's parameters on every process first and keeps them gathered while
  the block runs, so a forward pass needs no collective (memory: one gathered copy, in the compute dtype).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from simcli.config.spec import RunSpec
from simcli.errors import UsageError
from simcli.nets.edm2_layers import force_in_forward, normalize_weights_
from simcli.world import World

SHARDING_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ONE_PROCESS_NOTE = "training.sharding fsdp with one process: there is nothing to shard over, the networks are kept whole"


def shard_units(net: nn.Module) -> list[nn.Module]:
    """The blocks a network is sharded by: the children of its outermost module lists and dicts (not descending
    into a block once found)."""
    units: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                units.extend(c for c in child.children() if any(True for _ in c.parameters()))
            else:
                walk(child)

    walk(net)
    return units


def is_sharded(net: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, FSDPModule)


def fsdp_modules(net: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in net.modules() if isinstance(m, FSDPModule)]


def is_dtensor(tensor: torch.Tensor | None) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view of its storage), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def sharding_mesh(device: torch.device) -> Any:
    """The one-dimensional device mesh of all the run's processes that every network is sharded over; made by every
    process together (a collective), before any network is sharded, so that sharding one needs no collective."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_network(net: nn.Module, precision: str, mesh: Any, offload: bool = False) -> None:
    """fully_shard net's blocks, then net itself, in place, over `mesh` (sharding_mesh); gradients summed. 0-d
    parameters are left whole (scalar_parameters). A network without parameters (an analytic teacher) is left as it
    is."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not any(True for _ in net.parameters()):
        return
    dtype = SHARDING_DTYPES.get(precision)
    # Inputs are not cast: autocast decides the compute dtype, and sigma (the preconditioning's input) stays float32.
    policy = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
              if dtype is not None else MixedPrecisionPolicy())
    where = CPUOffloadPolicy(pin_memory=True) if offload else OffloadPolicy()
    for unit in shard_units(net):
        fully_shard(unit, mesh=mesh, mp_policy=policy, offload_policy=where, ignored_params=scalar_parameters(unit))
    fully_shard(net, mesh=mesh, mp_policy=policy, offload_policy=where, ignored_params=scalar_parameters(net))
    for module in fsdp_modules(net):
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    force_in_forward(net, False)  # EDM2's forced weight normalisation acts on the shards (steps: normalize_weights_)


def force_weight_normalization(net: nn.Module, uncertainty: bool = False) -> None:
    """EDM2's forced weight normalisation of a sharded trained network before its update (simcli.nets.edm2_layers;
    uncertainty: the update computes u(sigma)). An unsharded network forces its weights in its train-mode forward
    passes, exactly as upstream: nothing to do here. A sharded one's forward sees gathered copies, so its shards are
    forced here; the root's parameters may still be gathered after a forward without a backward, and forcing a
    gathered copy would be lost, so every FSDP module is resharded first."""
    modules = fsdp_modules(net)
    if not modules:
        return
    for module in modules:
        module.reshard()
    normalize_weights_(net, uncertainty)


def scalar_parameters(net: nn.Module) -> set[nn.Parameter]:
    """net's 0-d parameters (EDM2's gains), which FSDP2 cannot shard: they stay whole on every process, and their
    gradients are summed over the processes with the unsharded ones' (simcli.distill.steps.finish_update)."""
    return {p for p in net.parameters() if p.ndim == 0}


ROLES = ("teacher", "trained", "ema")


def network_sharder(spec: RunSpec, device: torch.device) -> Callable[[nn.Module, str], None]:
    """What shards each network of a sharded run as soon as it is built (sharder(net, role), role one of ROLES), so
    that at most two whole networks are ever alive (the teacher and the copy being sharded): the teacher's shards on
    the CPU with training.offload_teacher, the EMA gathered in float32. Every process calls this together (it makes
    the mesh)."""
    mesh, tr = sharding_mesh(device), spec.training

    def shard(net: nn.Module, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        precision = "fp32" if role == "ema" else tr.precision
        shard_network(net, precision, mesh, offload=role == "teacher" and tr.offload_teacher)

    return shard


@contextlib.contextmanager
def gathered(net: nn.Module, world: World) -> Iterator[None]:
    """Every process all-gathers net's parameters; while the block runs, forward passes (on any process, any
    number of them) need no collective. Every process must enter and leave it together. A no-op for unsharded nets."""
    modules = fsdp_modules(net)
    if not modules:
        yield
        return
    for module in modules:
        module.set_reshard_after_forward(False)
        module.unshard()
    try:
        yield
    finally:
        world.barrier()  # the processes that ran nothing wait for the others before the parameters are freed
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(True)


def full_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """net's whole state dict on rank 0 (on the CPU), empty on the others; a collective for sharded nets (every
    process calls it). An unsharded net's own state dict."""
    if not is_sharded(net):
        return net.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_sharding(spec: RunSpec, world: World, device: torch.device) -> bool:
    """Whether the run shards its networks (training.sharding fsdp with several processes); refuses, before the run
    directory is touched, the settings sharding does not take."""
    tr = spec.training
    if tr.offload_teacher and tr.sharding != "fsdp":
        raise UsageError("training.offload_teacher offloads the teacher's shards: it needs training.sharding fsdp",
                         hint="add --sharding fsdp (under torchrun), or unset training.offload_teacher")
    if tr.sharding != "fsdp" or not world.distributed:
        return False
    if tr.offload_teacher and device.type != "cuda":
        raise UsageError(f"training.offload_teacher moves the teacher's shards off the GPU, but the run is on {device}",
                         hint="unset training.offload_teacher (on the CPU the teacher is in CPU memory already)")
    if spec.generator.lora_rank is not None or spec.online.lora_rank is not None:
        raise UsageError("LoRA (--lora-rank) with training.sharding fsdp is not supported yet: the LoRA networks share "
                         "the teacher's weights, which FSDP would shard once per network",
                         hint="use LoRA without sharding (it holds one copy of the teacher), or sharding without LoRA")
    for key, on in (("compile", tr.compile), ("channels_last", tr.channels_last)):
        if on:
            raise UsageError(f"training.{key} is not supported with training.sharding fsdp yet",
                             hint=f"unset training.{key}, or use --sharding none")
    return True
