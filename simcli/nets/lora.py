"""Low-rank adapters (LoRA, Hu et al. 2021) for any simcli denoiser, on top of one shared frozen teacher.

SIM trains two copies of the teacher (the generator and the online model) and keeps an EMA of the generator. With
LoRA the copies hold the teacher's weight tensors themselves (the same Parameter objects: the memory of one teacher)
and each trains only its own low-rank adapters:

    W' = W + (alpha / rank) * (B @ A).reshape(W.shape)      A [r, fan_in], B [out, r], fan_in = prod(W.shape[1:])

Two forms, the same function:
- torch's own nn.Linear and nn.Conv2d (groups 1, zero padding: the layers of diffusers networks) get a branch, as
  peft adds one: y = layer(x) + scale * B(A(x)), a forward hook on the layer with the adapter as its submodule
  `lora_adapter`. The merged weight is never formed, so a pass keeps x and A(x) for the backward, not a copy of
  every weight (which at FLUX's size is tens of GB per pass);
- other layers, EDM's (simcli.nets.layers.Linear / Conv2d: not torch layer types, with resampling fused into the
  convolution), get a weight parametrization (torch.nn.utils.parametrize): every layer that reads `self.weight` in
  its forward gets W' without any change to its code, at the cost of forming W' in every pass (EDM's networks are
  small). A ~ kaiming-uniform(a=sqrt(5)) (nn.Linear's default init) and B = 0, as in the
paper and peft, so an adapted network computes exactly what its base does until B moves.

Typical use:

    generator = add_lora(shared_copy(teacher), rank=16)
    online = add_lora(shared_copy(teacher), rank=16)
    ema = shared_copy(generator)             # the base shared, the adapters cloned
    optimizer = torch.optim.Adam(trainable_parameters(generator))
    set_trainable(generator, True)            # not generator.requires_grad_(True): that would unfreeze the base

What parametrize changes, worth knowing:
- the base weight moves to `<layer>.parametrizations.weight.original` and the adapters live at
  `<layer>.parametrizations.weight.0.lora_A` / `lora_B` in `state_dict()`; `lora_state_dict` (adapters under
  `<layer>.lora_A`) and `merged_state_dict` (a plain network's keys) are the two forms to save;
- an adapted layer's class is a generated subclass (`ParametrizedConv2d`): isinstance checks still hold, pickling
  the module (torch.save(net)) is refused by torch, copy.deepcopy works;
- every read of `layer.weight` recomputes W'; wrap repeated reads in `torch.nn.utils.parametrize.cached()`.
A branch-adapted layer keeps its `weight` and holds the adapter at `<layer>.lora_adapter.lora_A` / `lora_B`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from simcli.errors import UsageError
from simcli.nets.layers import GroupNorm

LORA_TARGET_NDIMS = (2, 4)
"""Weight ranks LoRA adapts: linear layers [out, in] and 2-D convolutions [out, in, kh, kw]."""

MAX_LORA_RANK = 65_536
"""Sanity bound on a recorded rank (records are untrusted input); each layer clamps it to its own size anyway."""

ADAPTER_NAMES = ("lora_A", "lora_B")
"""The names of the trainable tensors (peft's), the last part of every `lora_state_dict` key."""

# Modules never adapted even when their weight has a target rank: an embedding is a lookup table, not a matmul
# (peft adapts it differently), and normalisation scales are per-channel (1-D in every torch and simcli norm).
_SKIPPED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Embedding, nn.EmbeddingBag, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase, GroupNorm,
)


# ---------------------------------------------------------------------------------------------- the adapter


def _matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """A weight's shape seen as the matrix LoRA updates: (out, fan_in) = (shape[0], prod(shape[1:]))."""
    return int(shape[0]), math.prod(int(s) for s in shape[1:])


def _layer_rank(shape: Sequence[int], rank: int) -> int:
    """The rank of one layer's adapter: `rank`, clamped to min(out, fan_in) (a larger rank adds nothing)."""
    return min(rank, *_matrix_shape(shape))


class LoRADelta(nn.Module):
    """The parametrization W -> W + scale * (lora_B @ lora_A).reshape(W.shape), scale = alpha / rank.

    `rank` and `alpha` are the settings asked for; the adapter's own rank (`lora_A.shape[0]`) is `rank` clamped to
    min(out, fan_in), while the scale stays alpha / rank, one value for every layer of a network. The adapters take
    the weight's dtype and device (meta included, where nothing is drawn)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        out, fan_in = _matrix_shape(weight.shape)
        r = _layer_rank(weight.shape, rank)
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        like = {"dtype": weight.dtype, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, fan_in, **like))
        self.lora_B = nn.Parameter(torch.zeros(out, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)

    def delta(self) -> torch.Tensor:
        """The low-rank update scale * B @ A as a [out, fan_in] matrix."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().reshape(weight.shape).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scale={self.scale:g}"


BRANCH = "lora_adapter"
"""The submodule name of a branch-adapted layer's adapter."""


def takes_branch(layer: nn.Module) -> bool:
    """Whether a layer is adapted by a branch (torch's own Linear, or Conv2d with groups 1 and zero padding) rather
    than by a weight parametrization."""
    if type(layer) is nn.Linear:
        return True
    return type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"


def _branch(layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """The forward hook of a branch-adapted layer: output + scale * B(A(x)), as W' = W + scale * B @ A would give."""
    delta: LoRADelta = getattr(layer, BRANCH)
    x = args[0]
    a, b = delta.lora_A, delta.lora_B
    if isinstance(layer, nn.Linear):
        low = F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))
    else:
        kernel = a.reshape(a.shape[0], *layer.weight.shape[1:]).to(x.dtype)
        h = F.conv2d(x, kernel, None, layer.stride, layer.padding, layer.dilation)
        low = F.conv2d(h, b.reshape(*b.shape, 1, 1).to(x.dtype))
    return output + (delta.scale * low).to(output.dtype)


# ---------------------------------------------------------------------------------------------- finding layers


def lora_targets(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer LoRA adapts: modules that directly own a `weight` nn.Parameter of
    rank 2 or 4 (linear and conv weights) with at least one output and one input element, in module order.

    Embeddings and normalisation layers are skipped, as are layers adapted already (their weight has moved into
    the parametrization). The trunk's matmuls and convolutions hold nearly all of a denoiser's parameters and all
    of its mixing across channels and tokens; biases, norm scales and embedding tables are a small share and stay
    the teacher's."""
    found = []
    for name, module in net.named_modules():
        weight = module._parameters.get("weight")
        if not isinstance(weight, nn.Parameter) or isinstance(module, _SKIPPED_TYPES) or hasattr(module, BRANCH):
            continue
        if weight.ndim in LORA_TARGET_NDIMS and min(_matrix_shape(weight.shape)) >= 1:
            found.append((name, module))
    return found


def _key(layer_name: str, tensor_name: str) -> str:
    """The qualified name of a layer's tensor (no leading dot for the root module)."""
    return f"{layer_name}.{tensor_name}" if layer_name else tensor_name


def _adapted_layers(net: nn.Module) -> list[tuple[str, nn.Module, LoRADelta]]:
    """(qualified name, layer, its LoRADelta) of every layer of `net` whose weight carries an adapter."""
    found = []
    for name, module in net.named_modules():
        if isinstance(getattr(module, BRANCH, None), LoRADelta):
            found.append((name, module, getattr(module, BRANCH)))
        elif parametrize.is_parametrized(module, "weight"):
            found += [(name, module, p) for p in module.parametrizations.weight if isinstance(p, LoRADelta)]
    return found


def _adapters(net: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter tensor of `net` under its `lora_state_dict` key, sorted by key."""
    named = {_key(name, attr): getattr(delta, attr)
             for name, _, delta in _adapted_layers(net) for attr in ADAPTER_NAMES}
    return dict(sorted(named.items()))


# ---------------------------------------------------------------------------------------------- building


def shared_copy(net: nn.Module, share_adapters: bool = False) -> nn.Module:
    """A structural deep copy of `net` whose parameters and buffers are net's own tensor objects (no memory).

    Everything else (modules, plain attributes, tensors that are neither parameters nor buffers) is copied. A
    LoRA network's adapters are cloned unless `share_adapters`: the copy then shares the frozen base and trains (or
    averages, as the EMA of a LoRA generator) its own adapters. Anything that changes a shared tensor in place
    (`.to()`, `.half()`, `load_state_dict`, an optimiser step) changes it for every network that shares it."""
    own = set() if share_adapters else {id(p) for p in _adapters(net).values()}
    memo: dict[int, Any] = {id(t): t for t in chain(net.parameters(), net.buffers()) if id(t) not in own}
    return copy.deepcopy(net, memo)


def _check_settings(rank: Any, alpha: Any) -> str | None:
    """What is wrong with a (rank, alpha) pair, or None: rank an int in [1, MAX_LORA_RANK], alpha finite and > 0."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_LORA_RANK:
        return f"the LoRA rank must be an integer from 1 to {MAX_LORA_RANK} (got {rank!r})"
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
        return f"the LoRA alpha must be a finite number > 0 (got {alpha!r})"
    return None


def add_lora(net: nn.Module, rank: int, alpha: float | None = None, generator: torch.Generator | None = None
             ) -> nn.Module:
    """Adapt every `lora_targets` layer of `net` in place with a LoRADelta parametrization; returns net.

    alpha defaults to rank (scale alpha / rank = 1). A rank larger than a layer's min(out, fan_in) is clamped for
    that layer (the scale stays alpha / rank). Every parameter `net` had before (the base weights, biases, norm
    scales: the teacher's, when net is a `shared_copy`) keeps its object and is frozen (requires_grad False, which
    holds for every network that shares it): only the adapters train. A ~ kaiming-uniform(a=sqrt(5)) drawn from
    `generator` (on the weights' device) or torch's default one, B = 0: the outputs are the base's exactly.
    Raises ValueError for bad settings, for a network that has adapters already and for one without targets."""
    alpha = rank if alpha is None else alpha
    problem = _check_settings(rank, alpha)
    if problem:
        raise ValueError(problem)
    if is_lora(net):
        raise ValueError(f"{type(net).__name__} has LoRA adapters already")
    targets = lora_targets(net)
    if not targets:
        raise ValueError(f"{type(net).__name__} has no linear or conv layer to adapt")
    for p in net.parameters():
        p.requires_grad_(False)
    for _, layer in targets:
        delta = LoRADelta(layer.weight, rank, alpha, generator)
        if takes_branch(layer):
            layer.add_module(BRANCH, delta)
            layer.register_forward_hook(_branch)
        else:
            parametrize.register_parametrization(layer, "weight", delta)
    return net


# ---------------------------------------------------------------------------------------------- training


def is_lora(net: nn.Module) -> bool:
    """Whether any layer of `net` carries a LoRA adapter."""
    return any(isinstance(m, LoRADelta) for m in net.modules())


def lora_config(net: nn.Module) -> tuple[int, float] | None:
    """The (rank, alpha) `add_lora` was given for `net` (None without adapters), to record beside its weights."""
    layers = _adapted_layers(net)
    return (layers[0][2].rank, layers[0][2].alpha) if layers else None


def lora_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The adapter tensors of `net` (nothing of the base), sorted by their `lora_state_dict` key."""
    return list(_adapters(net).values())


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """What an optimiser of `net` trains: its adapters when it has LoRA, otherwise all of its parameters."""
    return lora_parameters(net) if is_lora(net) else list(net.parameters())


def set_trainable(net: nn.Module, flag: bool) -> nn.Module:
    """Set requires_grad of exactly `trainable_parameters(net)`; returns net. Use instead of
    `net.requires_grad_(flag)`, which on a LoRA network would unfreeze the base weights it shares."""
    for p in trainable_parameters(net):
        p.requires_grad_(flag)
    return net


# ---------------------------------------------------------------------------------------------- saving and loading


def lora_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of `net` as detached clones under `<layer>.lora_A` / `<layer>.lora_B`, sorted by key."""
    return {key: p.detach().clone() for key, p in _adapters(net).items()}


def load_lora_state_dict(net: nn.Module, state: Mapping[str, Any], strict: bool = True
                         ) -> tuple[list[str], list[str]]:
    """Copy adapters saved by `lora_state_dict` into `net`'s (converted to their dtype and device).

    Returns (missing keys, unexpected keys). Raises ValueError naming the first bad key (in sorted order), before
    anything is copied: a value that is not a floating-point tensor or whose shape differs (always), a missing or
    an unexpected key (when strict), and any non-empty state for a network without adapters."""
    adapters = _adapters(net)
    if state and not adapters:
        raise ValueError(f"{type(net).__name__} has no LoRA adapters to load {next(iter(sorted(state)))!r} into")
    missing = [k for k in adapters if k not in state]
    unexpected = sorted(k for k in state if k not in adapters)
    if strict and (missing or unexpected):
        kind, key = ("missing", missing[0]) if missing else ("unexpected", unexpected[0])
        raise ValueError(f"LoRA state: {kind} key {key!r} ({len(missing)} missing, {len(unexpected)} unexpected)")
    present = [k for k in adapters if k in state]
    for key in present:
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"LoRA state: {key!r} is not a floating-point tensor ({type(value).__name__})")
        if value.shape != adapters[key].shape:
            raise ValueError(f"LoRA state: {key!r} has shape {list(value.shape)}, the network's adapter "
                             f"{list(adapters[key].shape)}")
    with torch.no_grad():
        for key in present:
            adapters[key].copy_(state[key])
    return missing, unexpected


def merged_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain copy of `net` would have: every parametrized weight under its plain key
    (`<layer>.weight`) holding its current value W + scale * B @ A (a new tensor), the adapters and the
    `parametrizations.*` keys gone, every other parameter and buffer as `state_dict()` gives it. Loads strictly
    into the network LoRA was added to, as it was before (keys in `state_dict()` order otherwise)."""
    plain: dict[str, str] = {}  # every state_dict key of a parametrization -> the plain key it stands for
    values: dict[str, torch.Tensor] = {}  # plain key -> its current (merged) value
    dropped: set[str] = set()  # a branch's adapter keys
    with torch.no_grad():
        for name, module in net.named_modules():
            delta = getattr(module, BRANCH, None)
            if isinstance(delta, LoRADelta):
                weight = module.weight.detach()
                values[_key(name, "weight")] = weight + delta.delta().reshape(weight.shape).to(weight.dtype)
                dropped |= {_key(name, f"{BRANCH}.{attr}") for attr in ADAPTER_NAMES}
                continue
            if not parametrize.is_parametrized(module):
                continue
            for tensor_name, parametrization in module.parametrizations.items():
                plain_key = _key(name, tensor_name)
                values[plain_key] = getattr(module, tensor_name).detach()
                for key in parametrization.state_dict():
                    plain[_key(name, f"parametrizations.{tensor_name}.{key}")] = plain_key
    merged: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key in plain:
            merged.setdefault(plain[key], values[plain[key]])
        elif key not in dropped:
            merged[key] = values.get(key, value)
    return merged


# ---------------------------------------------------------------------------------------------- records and sizes


def lora_record(rank: int, alpha: float | None = None) -> dict[str, dict[str, int | float]]:
    """The entry an architecture record (a JSON dict) carries for a LoRA network: {"lora": {"rank", "alpha"}};
    merge it in with `{**architecture, **lora_record(r, a)}`. alpha defaults to rank."""
    alpha = rank if alpha is None else alpha
    problem = _check_settings(rank, alpha)
    if problem:
        raise ValueError(problem)
    return {"lora": {"rank": int(rank), "alpha": float(alpha)}}


def lora_settings(record: Mapping[str, Any]) -> tuple[int, float] | None:
    """(rank, alpha) from an architecture record's "lora" entry, None when it has none (or null).

    The record is untrusted input: anything but {"rank": int, "alpha": number} within bounds is a one-line
    UsageError."""
    entry = record.get("lora")
    if entry is None:
        return None
    hint = "the file is damaged or not a network simcli can build"
    if not isinstance(entry, Mapping) or set(entry) != {"rank", "alpha"}:
        shown = sorted(map(str, entry)) if isinstance(entry, Mapping) else type(entry).__name__
        raise UsageError(f"the recorded LoRA settings must be {{'rank', 'alpha'}} (got {shown})", hint=hint)
    problem = _check_settings(entry["rank"], entry["alpha"])
    if problem:
        raise UsageError(f"the recorded architecture: {problem}", hint=hint)
    return int(entry["rank"]), float(entry["alpha"])


def lora_parameter_count(net_or_shapes: nn.Module | Iterable[Sequence[int]], rank: int) -> int:
    """How many adapter parameters `add_lora(net, rank)` adds: sum over its target weights of r * (out + fan_in),
    r the clamped rank. Takes a network (its `lora_targets`, read from shapes only: a meta-device network works,
    nothing is registered) or the target weights' shapes."""
    problem = _check_settings(rank, 1.0)
    if problem:
        raise ValueError(problem)
    if isinstance(net_or_shapes, nn.Module):
        shapes: Iterable[Sequence[int]] = [layer.weight.shape for _, layer in lora_targets(net_or_shapes)]
    else:
        shapes = net_or_shapes
    return sum(_layer_rank(shape, rank) * sum(_matrix_shape(shape)) for shape in shapes)
