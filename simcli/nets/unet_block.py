"""The residual UNet block shared by SongUNet (DDPM++/NCSN++) and DhariwalUNet (ADM), with optional attention.

Re-implemented from edm-spec.md section 3.1 (Karras et al. 2022, NVlabs/edm `training/networks.py`;
Song et al. 2021 for DDPM++/NCSN++; Dhariwal & Nichol 2021 for ADM). Also holds the activation-checkpointing
switch both UNets share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from simcli.nets.layers import Conv2d, GroupNorm, Linear, attention_weights


class UNetBlock(nn.Module):
    """GN-SiLU-conv, embedding injection (additive or adaptive scale/shift), GN-SiLU-dropout-conv, skip, attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = (
            0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        )
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Registration order = state_dict order: norm0, conv0, affine, norm1, conv1, skip, norm2, qkv, proj.
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
        )
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init
            )
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(
                out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init)
            )
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x  # [N, Cin, H, W]
        x = self.conv0(F.silu(self.norm0(x)))  # [N, Cout, H', W']
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)  # [N, Cout or 2 Cout, 1, 1]
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)  # scale is the first half
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            n, c = x.shape[0], x.shape[1]
            # qkv channels are interleaved per channel: head h, channel c, slot j (q, k, v) at h*3d + 3c + j.
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            w = attention_weights(q, k)  # [N*heads, HW, HW]
            a = torch.einsum("nqk,nck->ncq", w, v)  # [N*heads, d, HW]
            x = self.proj(a.reshape(*x.shape)) + x
            x = x * self.skip_scale  # the second skip_scale of attention blocks
        return x


class CheckpointableUNet(nn.Module):
    """Base class of the UNets: run UNetBlocks under torch.utils.checkpoint when activation checkpointing is on."""

    activation_checkpointing: bool = False

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each UNetBlock's activations in backward instead of storing them (off by default)."""
        self.activation_checkpointing = bool(enabled)

    def discriminate(self, features: torch.Tensor) -> torch.Tensor:
        """Discriminator logits from the encoder's last feature map [N, C, h, w]: SiDA's channel mean [N, 1, h, w]
        (sida_networks.py), or the attached head's (DMD2's classifier branch: ImagePrecond.attach_discriminator_head)."""
        head = self._modules.get("discriminator_head")
        return features.mean(dim=1, keepdim=True) if head is None else head(features)

    def run_block(self, block: UNetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """block(x, emb), checkpointed when enabled and gradients are being recorded."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)
