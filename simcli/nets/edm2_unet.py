"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", config G: Figure 21 and Appendix B).

Constructor arguments, submodule names and registration order follow NVlabs/edm2 (training/networks_edm2.py:
`Block`, `UNet`), so the `_init_kwargs` of an official pickle build the same network and its state_dict loads
strictly with the same keys in the same order; random initialisation draws in the same order too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from simcli.nets.edm2_layers import (
    MPConv,
    MPFourier,
    forced_normalization_suspended,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)
from simcli.nets.unet_block import CheckpointableUNet


class EDM2Block(nn.Module):
    """Encoder ('enc') or decoder ('dec') block with optional self-attention (EDM2 Figure 21).

    Main branch: resample; for 'enc' also the 1x1 skip projection and pixel norm. Residual branch:
    MP-SiLU -> 3x3 conv -> scale by (1 + emb_linear(emb) * emb_gain) -> MP-SiLU -> dropout -> 3x3 conv, joined with
    MP-sum at res_balance ('dec' projects the main branch with the 1x1 skip only here). Attention: cosine attention
    on pixel-normed q, k, v per head, joined with MP-sum at attn_balance. Outputs are clipped to +-clip_act.
    Defaults are upstream's; resample_filter is a tuple here (upstream writes the list [1, 1])."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        resample_filter: Sequence[float] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"EDM2 block flavor must be 'enc' or 'dec', got {flavor!r}")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # Registration order = state_dict order = order of the random draws: as upstream.
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [N, in, H, W], emb [N or 1, emb_channels] -> [N, out, H', W']."""
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm

        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1  # [N, out]
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the H*W positions; q, k, v are pixel-normed per head (cosine attention)."""
        qkv = self.attn_qkv(x)  # [N, 3C, H, W]; per head: d channels, each as (q, k, v)
        qkv = qkv.reshape(qkv.shape[0], self.num_heads, -1, 3, qkv.shape[2] * qkv.shape[3])  # [N, h, d, 3, HW]
        q, k, v = normalize(qkv, dim=2).unbind(3)  # each [N, h, d, HW]
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        out = torch.einsum("nhqk,nhck->nhcq", weights, v)  # [N, h, d, HW]
        return self.attn_proj(out.reshape(*x.shape))


class EDM2UNet(CheckpointableUNet):
    """The EDM2 U-Net F(x; c_noise, class_labels) (EDM2 Figure 21), at any size (XS..XXL differ in model_channels).

    Embedding: MP-Fourier features of c_noise -> MPConv, MP-summed with the class embedding at label_balance, then
    MP-SiLU. Encoder: a constant ones channel is appended, a 3x3 conv, then per resolution a downsampling block
    (except the first) and num_blocks blocks. Decoder: two bottleneck blocks (the first with attention), then per
    resolution an upsampling block (except the lowest) and num_blocks + 1 blocks that MP-concatenate a skip at
    concat_balance. Output: MPConv with the learned gain out_gain (zero at init). Defaults are upstream's;
    channel_mult and attn_resolutions are tuples here (upstream writes lists).

    Module names follow upstream ('enc.64x64_conv', 'enc.32x32_down', 'dec.8x8_in0', ...). With
    `set_activation_checkpointing(True)` each block runs under torch.utils.checkpoint while gradients are on."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs: Any,
    ):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # the appended ones channel
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, kernel=[3, 3])
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = EDM2Block(
                    cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs
                )
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = EDM2Block(
                    cout, channels, cemb, flavor="enc", attention=res in attn_resolutions, **block_kwargs
                )
                cout = channels
        self.encoder_channels = cout
        """Channels of the encoder's last feature map (what the discriminator sees)."""
        self.encoder_resolution = img_resolution >> (len(cblock) - 1)
        """Side of the encoder's last feature map."""

        self.dec = nn.ModuleDict()
        skips = [module.out_channels for module in self.enc.values()]
        for level in reversed(range(len(cblock))):
            channels = cblock[level]
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = EDM2Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = EDM2Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = EDM2Block(
                    cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs
                )
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = EDM2Block(
                    cout + skips.pop(), channels, cemb, flavor="dec", attention=res in attn_resolutions,
                    **block_kwargs,
                )
                cout = channels
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The block embedding [N or 1, cemb] from c_noise [N or 1] and one-hot labels [N or 1, label_dim]."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError("this EDM2 UNet is class-conditional: class_labels are required")
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb, t=self.label_balance)
        return mp_silu(emb)

    def run_block(self, block: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """block(x, emb), checkpointed when enabled and gradients are being recorded.

        Under checkpointing the block runs twice; the recomputation in backward leaves the weights alone (forced
        weight normalisation happened in the forward), so outputs and gradients equal the unchecked run's."""
        if not (self.activation_checkpointing and torch.is_grad_enabled()):
            return block(x, emb)
        calls = []

        def run(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            calls.append(None)
            if len(calls) == 1:
                return block(x, emb)
            with forced_normalization_suspended():
                return block(x, emb)

        return checkpoint(run, x, emb, use_reentrant=False)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        return_logits: bool = False,
        decode: bool = True,
    ) -> Any:
        """x [N, img_channels, R, R] -> F [N, img_channels, R, R]; with return_logits, (F, logits), or the logits
        alone when not decode (the decoder is then not run). The logits are SiDA's discriminator: the channel mean
        of the encoder's last feature map [N, 1, r, r] (SiD@sida sida_training_edm2/sida_networks_edm2.py,
        UNet_EncoderDecoder), or an attached head's (CheckpointableUNet.discriminate)."""
        emb = self.embed(noise_labels, class_labels)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for block in self.enc.values():
            x = self.run_block(block, x, emb) if isinstance(block, EDM2Block) else block(x)
            skips.append(x)

        logits = self.discriminate(x) if return_logits else None
        if logits is not None and not decode:
            return logits

        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = self.run_block(block, x, emb)
        x = self.out_conv(x, gain=self.out_gain)
        return x if logits is None else (x, logits)
