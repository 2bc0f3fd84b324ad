"""PixArt (alpha and Sigma): diffusers' PixArtTransformer2DModel state dict -> the PixArt repository's original names
(the layout of PixArt-XL-2-*.pth, which the SIM authors' release keeps). The inverse of
simcli.nets.pixart_original_keys, walked from its own table: each original key is the concatenation (rows in order)
of the diffusers tensors diffusers_key_pieces names for it, so the two directions cannot disagree.

Left out: the original's `pos_embed` buffer (the fixed 2-D sin-cos table, recomputed by every loader) and
`y_embedder.y_embedding` (the learned null caption, used for caption dropout in training; diffusers' model has no
such tensor, so the generator has none to export). Not mapped, hence refused: the micro-conditioning embedders of
PixArt-alpha's 1024 px model (use_additional_conditions)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from simcli.export.single_file_keys import Layout, block_indices
from simcli.nets.pixart_original_keys import ORIGINAL_ONLY, diffusers_key_pieces, original_key_names

LAYOUT = "pixart-original"
LEFT_OUT = ORIGINAL_ONLY


def pixart_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a PixArtTransformer2DModel state dict; ValueError for a tensor it cannot
    place."""
    layout = Layout(state)
    for key in original_key_names(block_indices(state, "transformer_blocks")):
        layout.concat(key, diffusers_key_pieces(key) or [])
    return layout.result(LAYOUT)
