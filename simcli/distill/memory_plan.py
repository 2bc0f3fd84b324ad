"""The memory plan of a run, per process, from its network built on the meta device (no weights, no memory).

Parts (bytes, per process), as simcli's training holds them at the peak of an iteration, the generator update:

- teacher      the teacher's network, float32 (simcli keeps it float32 in every precision: bf16/fp16 are autocast,
               simcli.distill.precision), parameters and buffers;
- copies       the generator, the online model and the generator's EMA, float32, parameters and buffers;
- gradients    the gradients of one trained network, float32: each update zeroes its gradients with
               set_to_none after its step (simcli.distill.steps.finish_update), so the generator's and the online
               model's are never alive together;
- optimizer    Adam's two moments of each trained network (generator and online model), float32;
- activations  the tensors autograd saves for the backward of one micro-batch, traced (trace_saved_bytes): in the
               generator update of SIM and SiD three passes are alive at once until the loss's backward, the
               generator's forward (trainable weights) and the online model's and teacher's forwards, whose weights
               are frozen but whose input x = G(z) + sigma eps carries the generator's gradient
               (simcli.distill.steps.generator_update, grad_through_networks); Diff-Instruct runs the two score
               passes without a graph, so only the generator's pass counts.

The activations are traced at micro-batches of 1 and 2 and extended linearly (every layer's saved tensors grow
linearly with the batch; what does not grow, such as weight casts under autocast, is the fixed part). bf16 and fp16
are traced under an emulation of CUDA autocast (_AsOnCuda: matmuls and convolutions in the autocast dtype, norms
and softmax in float32), since autocast does not act on meta tensors, and attention as the memory-efficient CUDA
kernel keeps it.

training.sharding fsdp over N processes divides the teacher, the copies, the gradients and Adam's moments by N
(simcli.distill.sharding), leaves the activations as they are, and adds `gathered`: the parameters of the blocks
FSDP gathers at once, in the compute dtype (the root's own, the block that runs and the one prefetched). LoRA
(generator.lora_rank, online.lora_rank) keeps one teacher: a LoRA network's copy, gradients and Adam's moments are
those of its adapters (simcli.nets.lora).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from simcli.config.spec import RunSpec
from simcli.distill.memory_estimate import micro_batch, size_text
from simcli.nets.denoiser import Denoiser
from simcli.nets.discriminator_head import head_parameter_count
from simcli.nets.lora import lora_parameter_count, set_trainable
from simcli.nets.registry import meta_network
from simcli.nets.text_condition import TextCondition

FLOAT32 = 4
"""Bytes per value of the weights, the gradients and Adam's moments in every precision."""
ADAM_MOMENTS = 2
"""Adam's exp_avg and exp_avg_sq."""
FROZEN_PASSES_WITH_GRAD = {"sim": 2, "sid": 2, "di": 0, "dmd2": 0}
"""Score passes (online model, teacher) of the generator update whose graphs stay alive, by loss.method; with real
data, Diff-Instruct and DMD2 add one, the discriminator's pass of the samples (simcli.distill.steps)."""
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TEXT_TOKENS = 77
"""Prompt tokens a text-conditioned network is traced with when the caller gives none (the CLIP length)."""

_LOW_PRECISION_OPS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, torch.matmul,
                      torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.baddbmm, torch.addmm, torch.mm,
                      torch.einsum, F.scaled_dot_product_attention}
_FLOAT32_OPS = {F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, F.layer_norm, F.group_norm}


class _AsOnCuda(TorchFunctionMode):
    """What a CUDA device changes in the saved tensors, at the torch-function level (above autograd, so autograd saves
    what it would save there): scaled_dot_product_attention runs the memory-efficient kernel (it keeps q, k, v, the
    output and the log-sum-exp, not the attention matrix the meta device's math path keeps), and with `dtype`,
    autocast's casts of the ops that matter to memory (matmuls and convolutions in dtype, norms and softmax in
    float32)."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = None
        if self.dtype is not None:
            target = self.dtype if func in _LOW_PRECISION_OPS else torch.float32 if func in _FLOAT32_OPS else None
        if target is not None:
            def cast(t: Any) -> Any:
                return t.to(target) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            args, kwargs = tree_map(cast, (args, kwargs))
        if func is F.scaled_dot_product_attention:
            return _efficient_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                         scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention through the memory-efficient kernel's op (a boolean mask as an additive one)."""
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        attn_mask = attn_mask.to(query.dtype).expand(*query.shape[:-2], query.shape[-2], key.shape[-2])
    out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p,
                                                                 is_causal, scale=scale)
    return out[0]


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _inputs(net: Denoiser, batch: int, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """x, sigma and the condition of a batch on the meta device."""
    meta = torch.device("meta")
    x = torch.zeros(batch, *net.sample_shape, device=meta)
    cond = net.conditioning
    condition: Any = None
    if cond.takes_text:
        pooled = torch.zeros(batch, cond.pooled_dim, device=meta) if cond.pooled_dim else None
        condition = TextCondition(torch.zeros(batch, text_tokens, cond.text_dim, device=meta),
                                  torch.ones(batch, text_tokens, device=meta, dtype=torch.long), pooled)
    elif cond.label_dim:
        condition = torch.zeros(batch, cond.label_dim, device=meta)
    return x, torch.ones(batch, device=meta), condition


def trace_saved_bytes(net: Denoiser, batch: int, *, trainable: bool, precision: str = "fp32",
                      checkpointing: bool = False, text_tokens: int = DEFAULT_TEXT_TOKENS) -> int:
    """Bytes of the tensors autograd saves for the backward of one forward of the meta network `net` at `batch`.

    trainable: the weights take gradients and the input does not (the generator); otherwise the weights are frozen
    and the input carries a gradient (the online model and the teacher in the generator update). Tensors sharing a
    storage count once; the network's own parameters and buffers are not counted (they are weights).
    """
    net = net.to("meta")
    if net.supports_activation_checkpointing:
        net.set_activation_checkpointing(checkpointing)
    net.train(trainable).requires_grad_(False)
    set_trainable(net, trainable)  # a LoRA network: its adapters only
    own = {_storage_key(t) for t in net.state_dict(keep_vars=True).values()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in own:
            saved[key] = t.untyped_storage().nbytes()
        return t

    x, sigma, condition = _inputs(net, batch, text_tokens)
    x.requires_grad_(not trainable)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _AsOnCuda(AUTOCAST_DTYPES.get(precision)), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's notes on the emulated dtypes (no fused kernel on meta)
        out = net(x, sigma, condition)
    del out
    return sum(saved.values())


@dataclass(frozen=True)
class LinearBytes:
    """Bytes of a micro-batch of b samples: fixed + per_sample * b."""

    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        return self.fixed + self.per_sample * batch


def activation_model(net: Denoiser, precision: str, checkpointing: bool, frozen_passes: int,
                     text_tokens: int, lora_ranks: tuple[int | None, int | None] = (None, None)) -> LinearBytes:
    """The generator update's saved bytes as a function of the micro-batch, from traces at batches 1 and 2. With
    LoRA (ranks of the generator and the online model) those networks are traced with their adapters (a
    parametrized layer keeps its merged weight for the backward, a branch its low-rank input)."""
    from simcli.nets.lora import add_lora, shared_copy

    def adapted(rank: int | None) -> Denoiser:
        return net if rank is None else add_lora(shared_copy(net.to("meta")), rank)

    generator_net, online_net = adapted(lora_ranks[0]), adapted(lora_ranks[1])

    def trace(which: Denoiser, batch: int, trainable: bool) -> int:
        return trace_saved_bytes(which, batch, trainable=trainable, precision=precision, checkpointing=checkpointing,
                                 text_tokens=text_tokens)

    def update(batch: int) -> int:
        generator = trace(generator_net, batch, True)
        if not frozen_passes:
            return generator
        teacher = trace(net, batch, False)  # the teacher, and the online model when it trains all its weights
        online = teacher if online_net is net else trace(online_net, batch, False)
        return generator + (frozen_passes - 1) * teacher + online

    one, two = update(1), update(2)
    return LinearBytes(fixed=max(0, 2 * one - two), per_sample=two - one)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per process of each part (module docstring), the sizes behind them and what would make it fit."""

    parameters: int
    buffers: int
    micro_batch: int
    processes: int
    passes: int
    precision: str
    checkpointing: bool
    teacher: int
    copies: int
    gradients: int
    optimizer: int
    activations: int
    device_bytes: int | None
    suggestions: tuple[str, ...] = ()

    gathered: int = 0
    sharded: bool = False
    lora_ranks: tuple[int | None, int | None] = (None, None)

    PARTS = ("teacher", "copies", "gradients", "optimizer", "gathered", "activations")

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in self.PARTS)

    @property
    def fits(self) -> bool | None:
        """Whether the total fits the device; None when its size is unknown."""
        return None if self.device_bytes is None else self.total <= self.device_bytes

    def as_json(self) -> dict[str, Any]:
        gib = {part: getattr(self, part) / 2**30 for part in self.PARTS}
        return {"per_process_gib": {**gib, "total": self.total / 2**30},
                "device_gib": None if self.device_bytes is None else self.device_bytes / 2**30,
                "fits": self.fits, "parameters": self.parameters, "buffers": self.buffers,
                "micro_batch": self.micro_batch, "processes": self.processes, "passes": self.passes,
                "precision": self.precision, "activation_checkpointing": self.checkpointing,
                "sharding": "fsdp" if self.sharded else "none",
                "lora_rank": {"generator": self.lora_ranks[0], "online": self.lora_ranks[1]},
                "suggestions": list(self.suggestions)}


def weight_parts(parameters: int, buffers: int, shards: int = 1,
                 adapters: tuple[int | None, int | None] = (None, None), head: int = 0) -> dict[str, int]:
    """teacher, copies, gradients and optimizer bytes, divided over `shards` processes (FSDP). `adapters`: the LoRA
    parameters of the generator (and so its EMA) and of the online model; None: that network trains all weights.
    `head`: the parameters of DMD2's classifier head, which the online model trains beside its own."""
    state = parameters + buffers
    copy = [FLOAT32 * (state if a is None else a) for a in adapters]
    copy[1] += FLOAT32 * head
    trained = [parameters if a is None else a for a in adapters]
    trained[1] += head
    parts = {"teacher": FLOAT32 * state, "copies": 2 * copy[0] + copy[1], "gradients": FLOAT32 * max(trained),
             "optimizer": ADAM_MOMENTS * FLOAT32 * sum(trained)}
    return {k: math.ceil(v / shards) for k, v in parts.items()}


def gathered_bytes(net: torch.nn.Module, precision: str) -> int:
    """What FSDP holds gathered at once per network pass: the root's own parameters and the two largest blocks (the
    one that runs and the next, prefetched), in the compute dtype."""
    from simcli.distill.sharding import shard_units

    units = shard_units(net)
    in_units = {id(p) for u in units for p in u.parameters()}
    root = sum(p.numel() for p in net.parameters() if id(p) not in in_units)
    largest = sorted((sum(p.numel() for p in u.parameters()) for u in units), reverse=True)[:2]
    dtype = AUTOCAST_DTYPES.get(precision, torch.float32)
    return (root + sum(largest)) * torch.finfo(dtype).bits // 8


def _suggest(weights: Callable[[int], int], acts: LinearBytes, acts_checkpointed: LinearBytes | None, batch: int,
             processes: int, device: int) -> list[str]:
    """The single changes that make weights + activations fit `device`, each with the total it gives."""
    out = []
    smaller = batch // 2
    while smaller >= 1 and weights(1) + acts.at(smaller) > device:
        smaller //= 2
    if smaller >= 1:
        out.append(f"--batch-gpu {smaller}: {size_text(weights(1) + acts.at(smaller))}")
    if acts_checkpointed is not None and weights(1) + acts_checkpointed.at(batch) <= device:
        out.append(f"--set training.activation_checkpointing=true: {size_text(weights(1) + acts_checkpointed.at(batch))}")
    sharded_fits = processes > 1 and weights(processes) + acts.at(batch) <= device
    if sharded_fits:
        out.append(f"--sharding fsdp over the {processes} processes: {size_text(weights(processes) + acts.at(batch))}")
    best = acts_checkpointed if acts_checkpointed is not None else acts
    spare = device - best.at(1)
    if not sharded_fits and spare > 0:
        needed = max(2, processes, math.ceil(weights(1) / spare))
        if weights(needed) + best.at(1) <= device:
            extra = " with activation checkpointing and" if acts_checkpointed is not None else " with"
            out.append(f"--sharding fsdp over {needed} processes{extra} --batch-gpu 1: "
                       f"{size_text(weights(needed) + best.at(1))}")
    return out


def plan_memory(architecture: dict[str, Any], spec: RunSpec, processes: int, device_bytes: int | None, *,
                text_tokens: int = DEFAULT_TEXT_TOKENS) -> MemoryPlan:
    """The plan (module docstring) of a run of `spec` over `processes` processes whose networks are the recorded
    `architecture`, against a device of `device_bytes` (None: unknown; then it does not decide `fits`)."""
    net = meta_network(architecture, "the teacher's architecture")
    parameters = sum(p.numel() for p in net.parameters())
    buffers = sum(t.numel() for t in net.state_dict().values()) - parameters
    batch, _ = micro_batch(spec, processes)
    tr = spec.training
    checkpointing = tr.activation_checkpointing and net.supports_activation_checkpointing
    frozen = FROZEN_PASSES_WITH_GRAD[spec.loss.method]
    if spec.data.source is not None and frozen == 0:
        frozen = 1
    head = discriminator_head_parameters(architecture) if spec.loss.method == "dmd2" and spec.data.source else 0
    ranks = (spec.generator.lora_rank, spec.online.lora_rank)
    acts = activation_model(net, tr.precision, checkpointing, frozen, text_tokens, ranks)
    adapters = tuple(None if r is None else lora_parameter_count(net, r) for r in ranks)
    sharded = tr.sharding == "fsdp" and processes > 1 and ranks == (None, None)
    parts = weight_parts(parameters, buffers, processes if sharded else 1, adapters, head)
    parts["gathered"] = gathered_bytes(net, tr.precision) if sharded else 0
    suggestions: list[str] = []
    if device_bytes is not None and sum(parts.values()) + acts.at(batch) > device_bytes:
        checkpointed = None
        if not checkpointing and net.supports_activation_checkpointing:
            checkpointed = activation_model(net, tr.precision, True, frozen, text_tokens, ranks)
        extra = gathered_bytes(net, tr.precision)

        def weights(n: int) -> int:  # over n processes (LoRA runs are not sharded)
            if n > 1 and ranks != (None, None):
                return 2**62
            return sum(weight_parts(parameters, buffers, n, adapters, head).values()) + (extra if n > 1 else 0)

        suggestions = _suggest(weights, acts, checkpointed, batch, processes, device_bytes)
        if ranks == (None, None):
            lora = sum(weight_parts(parameters, buffers, 1, (lora_parameter_count(net, 64),) * 2).values())
            if lora + acts.at(batch) <= device_bytes:
                suggestions.append(f"--lora-rank 64: {size_text(lora + acts.at(batch))}")
        if not suggestions:
            suggestions = ["none of --batch-gpu, activation checkpointing, sharding or LoRA alone makes it fit"]
    return MemoryPlan(parameters, buffers, batch, processes, 1 + frozen, tr.precision, checkpointing,
                      activations=acts.at(batch), device_bytes=device_bytes, suggestions=tuple(suggestions),
                      sharded=sharded, lora_ranks=ranks, **parts)


def discriminator_head_parameters(architecture: dict[str, Any]) -> int:
    """The parameters of DMD2's classifier head on an EDM UNet's encoder (simcli.nets.discriminator_head): its last
    feature map has model_channels * channel_mult[-1] channels at the resolution halved once per level; 0 for networks
    without that record (no head: the run refuses them)."""
    kwargs = architecture.get("init_kwargs") or {}
    model = kwargs.get("model_kwargs") or kwargs
    mult, channels, resolution = model.get("channel_mult"), model.get("model_channels"), kwargs.get("img_resolution")
    if not (isinstance(mult, list | tuple) and mult and isinstance(channels, int) and isinstance(resolution, int)):
        return 0
    return head_parameter_count(channels * mult[-1], max(1, resolution >> (len(mult) - 1)))


def shipped_architecture(name: str) -> tuple[dict[str, Any], int] | None:
    """(the architecture record, prompt tokens) of an official text-to-image teacher from the network config shipped
    in simcli/assets/network_configs (no weights, no download); None when simcli ships none for the name."""
    import json
    from importlib.resources import files

    from simcli.nets.train_schedule import training_schedule

    path = files("simcli.assets").joinpath(f"network_configs/{name}.json")
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {"kind": "diffusers", "class_name": record["class_name"], "config": record["config"],
            "schedule": training_schedule(record["scheduler_config"]), "guidance_scale": 1.0,
            "vae_scale_factor": record["vae_scale_factor"], "sample_shape": record["sample_shape"]}, record["text_tokens"]


def dry_run_architecture(spec: RunSpec) -> tuple[dict[str, Any], int] | None:
    """(the record, prompt tokens) of the networks a run of `spec` trains, found without loading any weights: an
    analytic mixture's MLP from the spec, an official EDM teacher's from the catalog (nothing downloaded), a simcli
    teacher file's (`digits`, PATH.safetensors) from its metadata (simcli.teachers.architecture_records; with
    training.dropout set, an EDM record's dropout as the run sets it), a local diffusers pipeline from its JSON files,
    an official text-to-image teacher from its shipped config (both at text.resolution when set); None for local EDM
    pickles (their kwargs come after every tensor of the file) and official names without a shipped config."""
    from simcli.distill.teacher_fit import mlp_architecture
    from simcli.nets.registry import with_dropout
    from simcli.teachers.architecture_records import teacher_architecture_record
    from simcli.teachers.diffusers_teacher import (
        DIFFUSERS_PREFIX,
        architecture_at_resolution,
        local_architecture,
        pipeline_source,
    )
    from simcli.teachers.registry import load_teacher, teacher_kind

    name = spec.teacher
    kind = teacher_kind(name).name
    if kind == "mixture":  # analytic: loading it loads no network
        return mlp_architecture(math.prod(load_teacher(name).denoiser.sample_shape), spec.network), DEFAULT_TEXT_TOKENS
    if kind in ("edm", "digits", "native"):  # the record without the weights (None: a local EDM pickle)
        record = teacher_architecture_record(name)
        if record is None:
            return None
        if spec.training.dropout is not None and record.get("kind") == "edm":  # as build_networks copies it
            record = with_dropout(record, spec.training.dropout)
        return record, DEFAULT_TEXT_TOKENS
    if name.startswith(DIFFUSERS_PREFIX):  # a local pipeline folder: its JSON files say it all
        source = pipeline_source(name)
        record, tokens = local_architecture(name), source.family.sequence_length(source.max_tokens)
    else:
        shipped = shipped_architecture(name)
        if shipped is None:
            return None
        record, tokens = shipped
    if spec.text.resolution is not None:
        record = architecture_at_resolution(record, spec.text.resolution)
    return record, tokens


def visible_gpu_bytes() -> int | None:
    """Total memory of the visible CUDA device, None without one."""
    try:
        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    except RuntimeError:
        return None
