"""DhariwalUNet: the ADM architecture as configured by EDM (ImageNet-64 teacher).

From Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", in the form of Karras et al.
2022 (EDM, NVlabs/edm `training/networks.py`); re-implemented from edm-spec.md 3.3. Adaptive scale/shift
blocks, 64 channels per attention head, kaiming-uniform init with exact-zero output layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from simcli.nets.layers import Conv2d, GroupNorm, Linear, PositionalEmbedding
from simcli.nets.unet_block import CheckpointableUNet, UNetBlock


class DhariwalUNet(CheckpointableUNet):
    """F(x; c_noise, class_labels, augment_labels) of ADM; returns [N, out_channels, R, R]."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(
            emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero
        )

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            if label_dim
            else None
        )

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """The block embedding from c_noise [N], one-hot labels [N, label_dim] and augment labels [N, A]."""
        emb = self.map_noise(noise_labels)  # [N, mc], cos first, no swap
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)  # no SiLU before the label is added
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([batch_size, 1], device=tmp.device) >= self.label_dropout
                tmp = tmp * keep.to(tmp.dtype)
            emb = emb + self.map_label(tmp)  # labels are not scaled here
        return F.silu(emb)  # [N, emb_ch]

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
        return_logits: bool = False,
        decode: bool = True,
    ) -> Any:
        """The network's output; with return_logits, (output, logits), or the logits alone when not decode: the
        channel mean of the encoder's last feature map [N, 1, h, w], SiDA's discriminator (Zhou et al. 2025,
        sida_networks.py, the `encoder_decoder` forward), or an attached head's of that map (CheckpointableUNet.discriminate);
        the decoder is then not run."""
        emb = self.embed(noise_labels, class_labels, augment_labels, x.shape[0])

        # Encoder.
        skips = []
        for block in self.enc.values():
            x = self.run_block(block, x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        logits = self.discriminate(x) if return_logits else None
        if logits is not None and not decode:
            return logits

        # Decoder.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self.run_block(block, x, emb)
        out = self.out_conv(F.silu(self.out_norm(x)))  # [N, out_channels, R, R]
        return out if logits is None else (out, logits)
