"""SongUNet: the DDPM++ ("vp") and NCSN++ ("ve") architectures as configured by EDM.

From Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations", in the
form of Karras et al. 2022 (EDM, NVlabs/edm `training/networks.py`); re-implemented from edm-spec.md 3.2.
DDPM++: positional embedding, standard encoder/decoder, [1,1] resampling. NCSN++: Fourier embedding,
residual encoder (aux_residual), [1,3,3,1] resampling. Submodule names and order match upstream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from simcli.nets.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding
from simcli.nets.unet_block import CheckpointableUNet, UNetBlock


class SongUNet(CheckpointableUNet):
    """F(x; c_noise, class_labels, augment_labels) of DDPM++ / NCSN++; returns [N, out_channels, R, R]."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ):
        assert embedding_type in ("fourier", "positional")
        assert encoder_type in ("standard", "skip", "residual")
        assert decoder_type in ("standard", "skip")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
        )

        # Mapping.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels  # the stem outputs model_channels, not model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

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
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """The block embedding from c_noise [N], one-hot labels [N, label_dim] and augment labels [N, A]."""
        emb = self.map_noise(noise_labels)  # [N, noise_ch], cos first
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap halves -> [sin, cos]
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([batch_size, 1], device=tmp.device) >= self.label_dropout
                tmp = tmp * keep.to(tmp.dtype)
            emb = emb + self.map_label(tmp * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))  # [N, emb_ch]

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
        aux = x  # the input image, carried along by the skip/residual encoders
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            elif isinstance(block, UNetBlock):
                x = self.run_block(block, x, emb)
                skips.append(x)
            else:
                x = block(x)
                skips.append(x)

        logits = self.discriminate(x) if return_logits else None
        if logits is not None and not decode:
            return logits

        # Decoder.
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = self.run_block(block, x, emb)
        return aux if logits is None else (aux, logits)  # [N, out_channels, R, R]
