"""simcli's own DINOv2 vision transformer: the network EDM2 measures FD-DINOv2 with, returning the CLS token after
the final layer norm (1024-d for ViT-L/14).

Facts (facebookresearch/dinov2, read at its main branch, which EDM2's calculate_metrics.py loads through torch.hub
as `dinov2_vitl14`; code written here):
- hub/backbones.py `dinov2_vitl14`: vit_large with img_size 518, patch 14, LayerScale init 1.0, the "mlp" FFN,
  block_chunks 0 (blocks are `blocks.N`), no register tokens, interpolate_antialias False, interpolate_offset 0.1;
  weights https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth, loaded strictly.
- models/vision_transformer.py: embed 1024, depth 24, 16 heads (head dim 64), MLP ratio 4, qkv/proj/FFN biases,
  LayerNorm eps 1e-6, exact GELU; parameters `cls_token` [1, 1, D], `pos_embed` [1, 37*37 + 1, D] (the 518 px
  pretraining grid), `mask_token` [1, D] (unused at inference), `patch_embed.proj` (conv P x P, stride P), `norm`.
  Tokens: [cls, patches] + pos_embed, then pre-norm blocks x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x))),
  then `norm`; the output is the normed CLS token (the head is Identity).
- Position embeddings for another patch grid (224 px gives 16 x 16): the 37 x 37 patch table is resized bicubically
  (align_corners False, no antialias) in float32 with scale_factor ((h0 + 0.1) / 37, (w0 + 0.1) / 37), not with
  size=(h0, w0). torch then maps output pixel i to source (i + 0.5) * 37 / (h0 + 0.1) - 0.5: slightly different
  from a size= resize (transformers' Dinov2Model does the latter). It is skipped when the grid already matches.

Sizes are configurable (`Dinov2Config`) so tests can build tiny networks; `config_from_state_dict` reads them from a
checkpoint's shapes. The number of heads cannot be read from shapes: it is embed_dim // 64, as in every official
DINOv2 ViT (S 384/6, B 768/12, L 1024/16, g 1536/24).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

HEAD_DIM = 64
IN_CHANNELS = 3
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class Dinov2Config:
    """The sizes of a DINOv2 ViT; the defaults are torch.hub's dinov2_vitl14."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 14
    mlp_hidden: int = 4096
    pos_grid: int = 37  # 518 // 14: the patch grid the position table was trained at
    layer_norm_eps: float = 1e-6
    interpolate_offset: float = 0.1

    @property
    def arch_name(self) -> str:
        """'dinov2_vitl14' for the hub model, else a name listing the sizes (e.g. of a test network)."""
        if self == VITL14:
            return "dinov2_vitl14"
        return f"dinov2_vit-d{self.embed_dim}-l{self.depth}-p{self.patch_size}-g{self.pos_grid}"


VITL14 = Dinov2Config()


class PatchEmbed(nn.Module):
    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.proj = nn.Conv2d(IN_CHANNELS, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, H/P * W/P, D], rows first


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.embed_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Dinov2ViT(nn.Module):
    """float images [B, 3, H, W] (H, W multiples of the patch size, already normalised) -> CLS features [B, D]."""

    def __init__(self, cfg: Dinov2Config = VITL14):
        super().__init__()
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid * cfg.pos_grid + 1, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim))  # in the checkpoint; unused here
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def position_embeddings(self, height: int, width: int) -> Tensor:
        """pos_embed [1, 1 + h0 * w0, D] for an image of height x width pixels (h0 = height // patch)."""
        cfg = self.cfg
        h0, w0 = height // cfg.patch_size, width // cfg.patch_size
        m = cfg.pos_grid
        if h0 * w0 == m * m and height == width:
            return self.pos_embed
        table = self.pos_embed.float()
        patches = table[:, 1:].reshape(1, m, m, cfg.embed_dim).permute(0, 3, 1, 2)
        if cfg.interpolate_offset:
            scale = (float(h0 + cfg.interpolate_offset) / m, float(w0 + cfg.interpolate_offset) / m)
            grid = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        else:
            grid = F.interpolate(patches, size=(h0, w0), mode="bicubic", antialias=False)
        if tuple(grid.shape[-2:]) != (h0, w0):
            raise ValueError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, cfg.embed_dim)
        return torch.cat([table[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        p = self.cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embeddings(height, width)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


class ConfigError(ValueError):
    """The state dict does not describe a DINOv2 ViT this module can build (the message says why)."""


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"no tensor '{key}'")
    return tuple(value.shape)


def config_from_state_dict(state: Mapping[str, Tensor]) -> Dinov2Config:
    """The sizes of the ViT whose parameters `state` holds (hub key names); ConfigError when they do not fit."""
    cls = _shape(state, "cls_token")
    if len(cls) != 3 or cls[:2] != (1, 1) or cls[2] < 1:
        raise ConfigError(f"cls_token has shape {list(cls)}, expected [1, 1, D]")
    embed_dim = cls[2]
    proj = _shape(state, "patch_embed.proj.weight")
    if len(proj) != 4 or proj[0] != embed_dim or proj[1] != IN_CHANNELS or proj[2] != proj[3]:
        raise ConfigError(f"patch_embed.proj.weight has shape {list(proj)}, expected [{embed_dim}, 3, P, P]")
    pos = _shape(state, "pos_embed")
    grid = math.isqrt(max(pos[1] - 1, 0)) if len(pos) == 3 else 0
    if len(pos) != 3 or grid < 1 or grid * grid + 1 != pos[1] or pos[2] != embed_dim:
        raise ConfigError(f"pos_embed has shape {list(pos)}, expected [1, G*G + 1, {embed_dim}]")
    if embed_dim % HEAD_DIM:
        raise ConfigError(f"embed dim {embed_dim} is not a multiple of the head dim {HEAD_DIM}")
    depth = len({int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))})
    if depth < 1:
        raise ConfigError("no transformer blocks ('blocks.N.*')")
    hidden = _shape(state, "blocks.0.mlp.fc1.weight")
    if len(hidden) != 2 or hidden[1] != embed_dim:
        raise ConfigError(f"blocks.0.mlp.fc1.weight has shape {list(hidden)}, expected [H, {embed_dim}]")
    return Dinov2Config(embed_dim=embed_dim, depth=depth, num_heads=embed_dim // HEAD_DIM, patch_size=proj[2],
                        mlp_hidden=hidden[0], pos_grid=grid)


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """None when `state` has exactly the model's keys and shapes; else a short description of the first problems."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = []
    for key, shape in expected.items():
        value = state.get(key)
        if key in state and (not isinstance(value, torch.Tensor) or tuple(value.shape) != shape):
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            wrong.append(f"{key} {got} (expected {list(shape)})")
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None
