"""Magnitude-preserving layers of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models"): normalisation, resampling, MP-SiLU, MP-sum, MP-concatenation, MP-Fourier features, MP-conv.

Each function performs the same float operations, in the same order and dtypes, as NVlabs/edm2
(training/networks_edm2.py), so an official state_dict gives bitwise-equal float32 outputs
(tests/unit/test_edm2_nets.py checks this against reference outputs of the official classes).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SILU_MAGNITUDE = 0.596
"""E[silu(x)^2]^(1/2) for x ~ N(0, 1), the divisor that makes SiLU magnitude-preserving (EDM2 eq. 81)."""


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x divided by eps + its RMS over `dim` (all but the first dimension by default): unit-magnitude rows.

    The norm is taken in float32 and scaled by sqrt(size of the reduced result / size of x), i.e. the L2 norm over
    `dim` divided by sqrt(number of reduced elements) (EDM2 section 3.1, the `normalize` of eqs. 47 and 66)."""
    dims = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    rms_scale = math.sqrt(norm.numel() / x.numel())
    norm = torch.add(eps, norm, alpha=rms_scale)  # eps + rms_scale * norm
    return x / norm.to(x.dtype)


@functools.lru_cache(maxsize=64)
def _resample_kernel(taps: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The separable 2-D filter [1, 1, k, k] of a 1-D filter normalised to unit sum, built in float32 (numpy) and
    then cast to `dtype`; cached per (filter, dtype, device) so that CUDA runs copy it to the device once."""
    f = np.float32(taps)
    f = f / f.sum()
    outer = np.outer(f, f)[np.newaxis, np.newaxis, :, :]
    return torch.as_tensor(outer.copy(), dtype=dtype, device=device)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2x down- ('down') or up-sampling ('up') with the normalised separable filter f, or x itself ('keep').

    Depthwise (one filter per channel), stride 2; the transposed convolution's filter is multiplied by 4 so that
    upsampling keeps the magnitude (EDM2 Figure 21, "Down"/"Up" of the encoder and decoder blocks)."""
    if mode == "keep":
        return x
    if len(f) % 2 != 0:
        raise ValueError(f"the resampling filter needs an even number of taps, got {list(f)}")
    kernel = _resample_kernel(tuple(float(t) for t in f), x.dtype, x.device)
    pad = (len(f) - 1) // 2
    channels = x.shape[1]
    if mode == "down":
        return F.conv2d(x, kernel.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))
    if mode != "up":
        raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")
    return F.conv_transpose2d(x, (kernel * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU: silu(x) / 0.596 (EDM2 eq. 81)."""
    return F.silu(x) / SILU_MAGNITUDE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving weighted sum ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) (EDM2 eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation along `dim` with balance t (EDM2 eq. 103).

    With Na and Nb channels, a is scaled by (1 - t) C / sqrt(Na) and b by t C / sqrt(Nb), where
    C = sqrt((Na + Nb) / ((1 - t)^2 + t^2)), so unit-magnitude inputs give a unit-magnitude result."""
    na, nb = a.shape[dim], b.shape[dim]
    total = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    scale_a = total / math.sqrt(na) * (1 - t)
    scale_b = total / math.sqrt(nb) * t
    return torch.cat([scale_a * a, scale_b * b], dim=dim)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features sqrt(2) cos(2 pi (f x + p)) (EDM2 eq. 75).

    `freqs` (2 pi f, f ~ N(0, bandwidth^2)) and `phases` (2 pi p, p ~ U(0, 1)) are random persistent buffers:
    a trained network must load them, never draw them anew. Computed in float32, returned in x's dtype."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", math.tau * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", math.tau * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N] -> features [N, num_channels]."""
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        y = y.cos() * math.sqrt(2)
        return y.to(x.dtype)


_FORCING_SUSPENDED: ContextVar[bool] = ContextVar("edm2_forced_normalization_suspended", default=False)


@contextlib.contextmanager
def forced_normalization_suspended() -> Iterator[None]:
    """Within this context no MPConv overwrites its weight (used when a checkpointed block is recomputed in the
    backward pass, so that the weights are normalised once per forward, as without checkpointing)."""
    token = _FORCING_SUSPENDED.set(True)
    try:
        yield
    finally:
        _FORCING_SUSPENDED.reset(token)


UNCERTAINTY_LAYER = "logvar_linear"  # EDM2Precond's u(sigma) layer: used by a forward only with return_logvar


def normalize_weights_(net: nn.Module, uncertainty: bool) -> None:
    """Forced weight normalisation of every MPConv of net that uses it, now, for a sharded network before its update
    (where upstream's first train-mode forward does it). Upstream forces only the layers a forward runs: the
    uncertainty layer only when the update computes u (uncertainty). A no-op for networks without MPConv layers."""
    for name, module in net.named_modules():
        if isinstance(module, MPConv) and module.force_normalization:
            if uncertainty or name.rsplit(".", 1)[-1] != UNCERTAINTY_LAYER:
                module.force_now()


def force_in_forward(net: nn.Module, enabled: bool) -> None:
    """Whether net's MPConv layers force their weights in the forward pass (off for sharded networks, whose forward
    sees gathered copies of the weights: normalize_weights_ forces their shards before each update instead)."""
    for module in net.modules():
        if isinstance(module, MPConv):
            module.forced_in_forward = enabled


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel [k, k]) or fully-connected layer (kernel []), no bias (EDM2 eq. 47).

    The weight is used as normalize(w) * gain / sqrt(fan_in). In training mode, with `force_normalization` on (the
    default, as upstream), the stored weight is first overwritten in place by normalize(w) under no_grad: forced
    weight normalisation (EDM2 eq. 66, section 3.2), so the weights keep unit magnitude under the optimizer. As
    upstream, a float32 weight is normalised again after being overwritten. SiDA's EDM2 branch switches the
    overwrite off for some networks; set `force_normalization = False` for that.

    The overwrite happens once per change of the weight (its version counter): a network run twice before one
    backward pass (SiDA's discriminator pass on real images beside the fake ones) does not overwrite the weight
    autograd saved from the first pass; upstream, which trains with one pass per backward, is matched exactly."""

    force_normalization: bool = True
    forced_in_forward: bool = True
    """False for a sharded weight: the forward sees a gathered copy, so `normalize_weights_` forces the shards."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self._normalized_version: int | None = None  # the weight's version counter after the last overwrite

    def force_now(self) -> None:
        """Overwrite the weight by normalize(w) (forced weight normalisation, eq. 66), row by row: on the rows this
        process holds when the weight is sharded (FSDP2 shards dimension 0, so every row is whole somewhere)."""
        with torch.no_grad():
            weight = self.weight.to_local() if hasattr(self.weight, "to_local") else self.weight  # a DTensor's shard
            if weight.numel():  # a shard may hold no rows (a 1-row weight over 2 processes)
                weight.copy_(normalize(weight.to(torch.float32)))
        self._normalized_version = self.weight._version

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        """x [N, in] (fully connected) or [N, in, H, W] (convolution, 'same' padding); gain scales the weight."""
        if (self.training and self.force_normalization and self.forced_in_forward and not _FORCING_SUSPENDED.get()
                and self.weight._version != self._normalized_version):
            self.force_now()
        w = self.weight.to(torch.float32)  # the parameter itself when it is float32
        w = normalize(w)
        w = w * (gain / math.sqrt(w[0].numel()))  # magnitude-preserving fan-in scaling (eq. 47)
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        if w.ndim != 4:
            raise ValueError(f"MPConv weight must have 2 or 4 dimensions, got shape {tuple(w.shape)}")
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))
