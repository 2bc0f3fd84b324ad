"""A cheap lower bound of the memory a run needs, checked against what the machine has before the run directory is
touched, so a spec whose sizes cannot fit (a batch of 10^12, an MLP of 10^11 parameters) is refused in one line
instead of failing after config.json is written.

The estimate counts only what certainly exists at once during an iteration, in float32 (weights, gradients and the
optimiser state stay float32 in every precision):

- the network copies: the generator, the online model and the generator EMA (parameters and buffers), the gradients
  of the two trained ones and Adam's two moments for each (3 + 2 + 4 = 9 parameter-sized tensors); on CUDA also the
  teacher's network, which moves there (on the CPU it is already loaded, so what is available already excludes it);
- the largest of the batches the run computes at once (they come one after the other, beside the weights):
  - one micro-batch (training.batch_gpu, else training.batch_size shared out over the processes) of SAMPLE_TENSORS
    sample-sized tensors: the generated sample, the noisy sample and the two networks' outputs, alive together until
    the generator loss is formed; for an analytic teacher's MLP also MLP_ACTIVATIONS values per hidden unit of every
    layer (the generator's forward, kept for its backward); the same for the teacher fit's batch;
  - with in-training evaluation, the evaluation's samples, all kept until they are scored (evaluation.num_samples:
    float32 vectors of a mixture, or uint8 pixels of an image);
  - image teachers: the samples of the grid PNGs (logging.grid_samples, float32).

Everything else (a network's activations, the feature extractor, the allocator's slack) comes on top, so a spec that
passes may still not fit; one that is refused certainly does not. The MLP's parameters are computed from the spec
(mlp_parameters; a test checks the count against a built MLP), a network teacher's from its loaded network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from simcli.config.key_errors import SpecKeyError
from simcli.config.spec import NetworkSpec, RunSpec
from simcli.nets.registry import MAX_PARAMETERS, available_memory
from simcli.teachers.registry import Teacher
from simcli.world import World, environment_world

FLOAT32 = 4
"""Bytes per value of the weights, their gradients, Adam's moments and the samples."""
GRADIENT_TENSORS, ADAM_TENSORS = 2, 4
"""The gradients of the two trained networks; Adam's two moments of each (the copies are counted per network)."""
SAMPLE_TENSORS = 4
"""Sample-sized tensors of a micro-batch alive together in the generator update (x0, x0 + sigma eps, the online
model's and the teacher's outputs)."""
MLP_ACTIVATIONS = 2
"""Values per hidden unit and layer that the MLP's forward keeps for the backward (a Linear's output, the SiLU's)."""


BATCH_HINTS = {
    "training.batch_size": "a smaller --batch-size, or --batch-gpu N to compute each batch in micro-batches of N samples",
    "training.batch_gpu": "a smaller --batch-gpu (the batch is accumulated over more micro-batches)",
    "teacher_fit.batch_size": "a smaller teacher_fit.batch_size",
    "evaluation.num_samples": "a smaller --fid-n",
    "logging.grid_samples": "a smaller logging.grid_samples (0: no grids)",
}

MLP_HINT = "a smaller network.hidden_dim, network.num_layers or network.embedding_dim"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs at least: `weights` (copies, gradients, optimiser state) and `batch` (the largest batch's
    tensors); `batch_key` the spec key that sets that batch, `samples` its size; `network` the network in words."""

    weights: int
    batch: int
    batch_key: str
    samples: int
    network: str

    @property
    def total(self) -> int:
        return self.weights + self.batch


def mlp_parameters(dim: int, network: NetworkSpec) -> int:
    """Parameters and buffers of simcli.nets.mlp.MLPDenoiser(dim, **network), from the spec alone (nothing built)."""
    h, layers = network.hidden_dim, network.num_layers
    first = (dim + network.embedding_dim) * h + h
    return first + (layers - 1) * (h * h + h) + h * dim + dim + network.embedding_dim // 2


def check_mlp_size(spec: RunSpec, dim: int) -> None:
    """Refuse an MLP larger than simcli reads network files of (nets.registry.MAX_PARAMETERS): its generator
    snapshots could not be sampled or evaluated, whatever the machine."""
    count = mlp_parameters(dim, spec.network)
    if count > MAX_PARAMETERS:
        key = _mlp_key(spec)
        raise SpecKeyError(key, f" ({getattr(spec.network, key.split('.')[1]):,}) makes an MLP of {count:,} parameters, "
                           f"more than the {MAX_PARAMETERS:,} that simcli reads network files of",
                           hint=MLP_HINT)


def _mlp_key(spec: RunSpec) -> str:
    """The key that makes an MLP large: its width, unless that is the default and the depth is not."""
    return "network.num_layers" if spec.network.hidden_dim <= NetworkSpec().hidden_dim else "network.hidden_dim"


def micro_batch(spec: RunSpec, processes: int) -> tuple[int, str]:
    """The micro-batch of an iteration and the key that sets it (the batch shared out when batch_gpu is unset)."""
    tr = spec.training
    if tr.batch_gpu is not None:
        return tr.batch_gpu, "training.batch_gpu"
    return max(1, tr.batch_size // max(1, processes)), "training.batch_size"


def batches(spec: RunSpec, teacher: Teacher, processes: int) -> list[tuple[int, int, str]]:
    """(samples, bytes per sample, the key that sets the count) of each batch the run holds at once."""
    numel = math.prod(teacher.denoiser.sample_shape)
    training = FLOAT32 * SAMPLE_TENSORS * numel
    if teacher.architecture is None:  # the fitted MLP keeps its activations for the backward
        training += FLOAT32 * MLP_ACTIVATIONS * spec.network.hidden_dim * spec.network.num_layers
    micro, key = micro_batch(spec, processes)
    out = [(micro, training, key)]
    if teacher.architecture is None:
        out.append((spec.teacher_fit.batch_size, training, "teacher_fit.batch_size"))
    if spec.logging.eval_every_kimg is not None:
        out.append((spec.evaluation.num_samples, numel * (FLOAT32 if teacher.mixture is not None else 1),
                    "evaluation.num_samples"))
    if len(teacher.denoiser.sample_shape) == 3 and spec.logging.grid_samples:
        out.append((spec.logging.grid_samples, FLOAT32 * numel, "logging.grid_samples"))
    return out


def estimate_memory(spec: RunSpec, teacher: Teacher, on_cuda: bool, processes: int = 1) -> MemoryEstimate:
    """The lower bound described in the module's docstring, for one process."""
    if teacher.architecture is None:  # an analytic teacher: its copies are an MLP fitted to it
        params = state = mlp_parameters(math.prod(teacher.denoiser.sample_shape), spec.network)
        teacher_weights, what = 0, f"an MLP of {params:,} parameters"
    else:
        params = sum(p.numel() for p in teacher.denoiser.parameters())
        state = sum(t.numel() for t in teacher.denoiser.state_dict().values())
        teacher_weights, what = (state if on_cuda else 0), f"the teacher's network ({params:,} parameters)"
    # LoRA networks share the teacher's tensors (their adapters are left out of a lower bound); sharding divides.
    whole = [spec.generator.lora_rank is None, spec.online.lora_rank is None]  # generator (and its EMA), online
    copies, trained = 2 * whole[0] + whole[1], whole[0] + whole[1]
    weights = FLOAT32 * (copies * state + trained * (GRADIENT_TENSORS + ADAM_TENSORS) // 2 * params + teacher_weights)
    if spec.training.sharding == "fsdp" and processes > 1:
        weights //= processes
    samples, per_sample, key = max(batches(spec, teacher, processes), key=lambda b: b[0] * b[1])
    return MemoryEstimate(weights, samples * per_sample, key, samples, what)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for the run on `device`: a CUDA device's free memory, or the host's available memory (MemAvailable,
    or less under a cgroup limit); None when it cannot be told."""
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except RuntimeError:
            return None
    return available_memory()


def size_text(nbytes: float) -> str:
    """Bytes in MiB, GiB or TiB with one decimal."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes / 2**20:,.1f} MiB"


def check_memory(spec: RunSpec, teacher: Teacher) -> None:
    """Refuse (one-line SpecKeyError naming the key that sets the larger part) a spec whose lower-bound memory
    estimate exceeds what its device has free; on the CPU, torchrun's processes on this host share the memory. An
    analytic teacher's MLP is also held to the size simcli reads network files of (check_mlp_size)."""
    found = environment_world()
    world = World(*found) if found is not None else World()
    device = world.device(spec.device)
    on_cuda = device.type == "cuda"
    local = 1 if on_cuda else max(1, _int_env("LOCAL_WORLD_SIZE", 1))
    est = estimate_memory(spec, teacher, on_cuda, world.size)
    available = available_bytes(device)
    if available is not None and local * est.total > available:
        where = f"memory on {device}" if on_cuda else "host memory" + (f" for {local} processes" if local > 1 else "")
        need = (f"needs at least {size_text(local * est.total)} of {where}, more than the {size_text(available)} "
                f"available (a lower bound: {size_text(est.batch)} for one batch of {est.samples:,} samples, "
                f"{size_text(est.weights)} for 3 copies of {est.network} with gradients and Adam state)")
        if est.batch >= est.weights:
            value = spec.training.batch_size if est.batch_key == "training.batch_size" else est.samples
            raise SpecKeyError(est.batch_key, f" ({value:,}) {need}", hint=BATCH_HINTS[est.batch_key])
        if teacher.architecture is None:
            key = _mlp_key(spec)
            raise SpecKeyError(key, f" ({getattr(spec.network, key.split('.')[1]):,}) {need}", hint=MLP_HINT)
        raise SpecKeyError("teacher", f" ({teacher.display_name}) {need}",
                           hint="a device with more free memory (--device), or a smaller teacher")
    if teacher.architecture is None:
        check_mlp_size(spec, math.prod(teacher.denoiser.sample_shape))


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
