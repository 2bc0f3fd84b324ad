"""PixArt-alpha's original state_dict names (the PixArt-alpha repository's PixArt class, which the SIM authors' release
keeps) -> diffusers' PixArtTransformer2DModel names. Facts of the two layouts; no weights change, except that the
original's fused projections are split along their output rows:

    original                              diffusers
    x_embedder.proj                       pos_embed.proj
    t_embedder.mlp.0 / mlp.2              adaln_single.emb.timestep_embedder.linear_1 / linear_2
    t_block.1                             adaln_single.linear
    y_embedder.y_proj.fc1 / fc2           caption_projection.linear_1 / linear_2
    blocks.N.scale_shift_table            transformer_blocks.N.scale_shift_table
    blocks.N.attn.qkv                     transformer_blocks.N.attn1.to_q | to_k | to_v   (rows in thirds)
    blocks.N.attn.proj                    transformer_blocks.N.attn1.to_out.0
    blocks.N.cross_attn.q_linear          transformer_blocks.N.attn2.to_q
    blocks.N.cross_attn.kv_linear         transformer_blocks.N.attn2.to_k | to_v          (rows in halves)
    blocks.N.cross_attn.proj              transformer_blocks.N.attn2.to_out.0
    blocks.N.mlp.fc1 / fc2                transformer_blocks.N.ff.net.0.proj / ff.net.2
    final_layer.linear                    proj_out
    final_layer.scale_shift_table         scale_shift_table

(each with .weight and .bias, except the scale-shift tables). Two original entries have no diffusers counterpart:
`pos_embed` (a buffer diffusers recomputes, the same 2-D sin-cos table) and `y_embedder.y_embedding` (the learned
null caption, used only for caption dropout in training); `ORIGINAL_ONLY` names them, the caller checks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

ORIGINAL_ONLY = ("pos_embed", "y_embedder.y_embedding")

_RENAMED = {  # original module -> diffusers module, outside the blocks
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2",
    "t_block.1": "adaln_single.linear",
    "y_embedder.y_proj.fc1": "caption_projection.linear_1",
    "y_embedder.y_proj.fc2": "caption_projection.linear_2",
    "final_layer.linear": "proj_out",
}
_BLOCK_RENAMED = {  # inside blocks.N
    "attn.proj": "attn1.to_out.0",
    "cross_attn.q_linear": "attn2.to_q",
    "cross_attn.proj": "attn2.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_BLOCK_FUSED = {  # inside blocks.N: one original projection -> equal row slices
    "attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "cross_attn.kv_linear": ("attn2.to_k", "attn2.to_v"),
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def original_key_names(blocks: Iterable[int]) -> list[str]:
    """Every original key of the mapped layout (ORIGINAL_ONLY left out) for the given block numbers, in a fixed
    order: the inverse mapping (simcli.export.single_file_pixart) walks it with diffusers_key_pieces."""
    leaves = ("weight", "bias")
    names = [f"{module}.{leaf}" for module in _RENAMED for leaf in leaves] + ["final_layer.scale_shift_table"]
    for index in blocks:
        names.append(f"blocks.{index}.scale_shift_table")
        names += [f"blocks.{index}.{inner}.{leaf}" for inner in (*_BLOCK_RENAMED, *_BLOCK_FUSED) for leaf in leaves]
    return names


def diffusers_key_pieces(key: str) -> list[str] | None:
    """The diffusers names an original key becomes (several for a fused projection, in row order), or None when the
    key is not one of the mapped layout's (ORIGINAL_ONLY included)."""
    if key == "final_layer.scale_shift_table":
        return ["scale_shift_table"]
    found = re.fullmatch(r"blocks\.(\d+)\.scale_shift_table", key)
    if found:
        return [f"transformer_blocks.{found.group(1)}.scale_shift_table"]
    module, _, leaf = key.rpartition(".")
    if leaf in ("weight", "bias") and module in _RENAMED:
        return [f"{_RENAMED[module]}.{leaf}"]
    found = _BLOCK.fullmatch(key)
    if found is None:
        return None
    index, inner, leaf = found.groups()
    if inner in _BLOCK_RENAMED:
        return [f"transformer_blocks.{index}.{_BLOCK_RENAMED[inner]}.{leaf}"]
    if inner in _BLOCK_FUSED:
        return [f"transformer_blocks.{index}.{piece}.{leaf}" for piece in _BLOCK_FUSED[inner]]
    return None


def diffusers_state_dict(original: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the diffusers state_dict, the original keys it could not place). Fused projections are split into equal
    row slices (views, no copy); a fused tensor whose rows do not split evenly is left unplaced too."""
    converted, unplaced = {}, []
    for key, tensor in original.items():
        names = diffusers_key_pieces(key)
        if names is None or tensor.ndim == 0 or tensor.shape[0] % len(names):
            unplaced.append(key)
            continue
        for name, piece in zip(names, tensor.chunk(len(names), dim=0), strict=True):
            converted[name] = piece
    return converted, unplaced
