"""diffusers' FLUX single-file conversion (convert_flux_transformer_checkpoint_to_diffusers) splits each single
block's fused linear1 at FLUX.1's width, written into the function (3072 wide, MLP 4x). Tiny test transformers are
narrower: `flux1_width_of(inner)` gives that one split the tiny sizes while the conversion runs; every other step of
diffusers' conversion runs as it is."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FLUX1_SPLIT = (3072, 3072, 3072, 12288)


@contextlib.contextmanager
def flux1_width_of(inner: int) -> Iterator[None]:
    """Within the block, torch.split at FLUX.1's linear1 sizes splits at (inner, inner, inner, 4 inner) instead."""
    real = torch.split

    def split(tensor, sizes, dim=0):
        return real(tensor, (inner, inner, inner, 4 * inner) if tuple(sizes) == FLUX1_SPLIT else sizes, dim)

    torch.split = split
    try:
        yield
    finally:
        torch.split = real
