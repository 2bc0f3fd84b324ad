"""Building blocks of the EDM UNets: init modes, Linear, Conv2d, GroupNorm, embeddings, attention weights.

Re-implemented from edm-spec.md section 3.1 (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", NVlabs/edm `training/networks.py`). Parameter and buffer names match
upstream so that the official state_dicts load strictly; the layers cast their weights to the input dtype
per call so that an fp16 trunk works with float32 weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """A fresh tensor of `shape` drawn with one of the upstream init modes (unscaled by init_weight):
    init_bound times U(-1, 1) for the uniform modes, times N(0, 1) for the normal ones."""
    scale = init_bound(mode, fan_in, fan_out)
    if mode.endswith("_uniform"):
        return scale * (torch.rand(*shape) * 2 - 1)
    return scale * torch.randn(*shape)


def init_bound(mode: str, fan_in: int, fan_out: int) -> float:
    """The scale of an init mode: the bound of U(-a, a) for uniform modes, the std for normal ones."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out))
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out))
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in)
    raise ValueError(f"invalid init mode {mode!r}; expected one of {', '.join(INIT_MODES)}")


class Linear(nn.Module):
    """y = x W^T + b with W [out, in]; weight drawn by init_mode times init_weight, bias times init_bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()  # [..., out]
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


def resample_kernel(resample_filter: Sequence[float]) -> torch.Tensor:
    """The separable 2-D FIR filter outer(r, r) / sum(r)^2, shape [1, 1, L, L]."""
    f = torch.as_tensor(resample_filter, dtype=torch.float32)
    return torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()


class Conv2d(nn.Module):
    """2-D convolution with optional x2 up/down resampling by a fixed FIR filter (kernel 0: resampler only)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (
            nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
            if kernel
            else None
        )
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None  # [out, in, k, k]
        b = self.bias.to(x.dtype) if self.bias is not None else None  # [out]
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None  # [1, 1, L, L]
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            # Upsample first, then convolve; the paddings are shared between the two (unused by official configs).
            x = F.conv_transpose2d(
                x,
                f.mul(4).tile([self.in_channels, 1, 1, 1]),
                groups=self.in_channels,
                stride=2,
                padding=max(f_pad - w_pad, 0),
            )
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            # Convolve with the combined padding, then blur and stride (NCSN++ aux_residual).
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:  # [N, C, H, W] -> [N, C, 2H, 2W]
                x = F.conv_transpose2d(
                    x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad
                )
            if self.down:  # [N, C, H, W] -> [N, C, H/2, W/2]
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups and an affine map."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x, num_groups=self.num_groups, weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps
        )


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_k(q . k / sqrt(d)) in float32, cast back to q.dtype; q, k [N*heads, d, HW] -> [N*heads, HW, HW].

    k is divided by sqrt(d) before the float32 cast and the einsum (edm-spec 3.9: this order is bit-exact).
    """
    scaled_k = k / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), scaled_k.to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding [cos(x f), sin(x f)] with f_i = (1/max_positions)^(i/(C/2 - e))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs  # [C/2]
        x = torch.outer(x, freqs.to(x.dtype))  # [N, C/2]
        return torch.cat([x.cos(), x.sin()], dim=1)  # [N, C]


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f x), sin(2 pi f x)] with f ~ N(0, scale^2) stored as buffer `freqs`."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))  # [N, C/2]
        return torch.cat([x.cos(), x.sin()], dim=1)  # [N, C]
