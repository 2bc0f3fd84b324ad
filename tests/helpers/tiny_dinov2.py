"""A tiny random-weight DINOv2 ViT for FD-DINOv2 tests, saved as a state dict with the hub checkpoint's key names.

Sizes follow the official ViTs' rule the loader relies on (heads = embed dim // 64): embed 64 (1 head), depth 2,
patch 14, MLP 256, a 4 x 4 position grid (so the 16 x 16 grid of a 224 px input is interpolated, as for ViT-L/14).
The weights are drawn from a fixed seed (the global RNG is left alone) (gains near 1, small biases), so features vary with the image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from simcli.eval.dinov2 import Dinov2Config, Dinov2ViT

TINY_DINOV2 = Dinov2Config(embed_dim=64, depth=2, num_heads=1, patch_size=14, mlp_hidden=256, pos_grid=4)
SEED = 2024


def tiny_dinov2(seed: int = SEED) -> Dinov2ViT:
    model = Dinov2ViT(TINY_DINOV2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name in ("cls_token", "pos_embed", "mask_token"):
                p.copy_(0.5 * noise)
            elif p.ndim > 1:  # linear and conv weights
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            elif name.endswith(("weight", "gamma")):  # layer norm and LayerScale gains
                p.copy_(1.0 + 0.2 * noise)
            else:  # biases
                p.copy_(0.2 * noise)
    return model.eval()


def write_tiny_dinov2(path: Path, seed: int = SEED) -> Path:
    """torch.save of the tiny network's state dict (the published file's format: a plain dict of tensors)."""
    path = Path(path)
    torch.save(tiny_dinov2(seed).state_dict(), path)
    return path


def image_sets(n: int = 120, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of uint8 RGB images [n, size, size, 3] from different distributions (noise vs brighter blobs)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    coarse = rng.integers(60, 256, size=(n, size // 8, size // 8, 3))
    b = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    b = np.clip(b + rng.integers(-20, 21, size=b.shape), 0, 255).astype(np.uint8)
    return a, b
