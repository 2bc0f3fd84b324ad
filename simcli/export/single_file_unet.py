"""Stable Diffusion 1.x / 2.x and SDXL: diffusers' UNet2DConditionModel state dict -> the LDM (CompVis / Stability AI)
UNet names of the original single files, under their `model.diffusion_model.` prefix (diffusers' conversion reads
only keys with it). The inverse of diffusers' convert_ldm_unet_checkpoint; names only, no tensor changes.

With L = layers_per_block (each down block has L resnets, each up block L + 1):

    diffusers                                  original (after model.diffusion_model.)
    time_embedding.linear_1 / linear_2         time_embed.0 / time_embed.2
    add_embedding.linear_1 / linear_2          label_emb.0.0 / label_emb.0.2      (SDXL's text_time conditioning)
    conv_in / conv_norm_out / conv_out         input_blocks.0.0 / out.0 / out.2
    down_blocks.b.resnets.l                    input_blocks.{1 + b(L+1) + l}.0
    down_blocks.b.attentions.l                 input_blocks.{1 + b(L+1) + l}.1
    down_blocks.b.downsamplers.0.conv          input_blocks.{1 + b(L+1) + L}.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
    up_blocks.b.resnets.l                      output_blocks.{b(L+1) + l}.0
    up_blocks.b.attentions.l                   output_blocks.{b(L+1) + l}.1
    up_blocks.b.upsamplers.0.conv              output_blocks.{b(L+1) + L}.1.conv, or .2.conv after an attention

Inside a resnet: norm1, conv1, norm2, conv2, time_emb_proj, conv_shortcut are in_layers.0, in_layers.2,
out_layers.0, out_layers.3, emb_layers.1, skip_connection; inside an attention (a spatial transformer) the names are
the same in both layouts."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from simcli.export.single_file_keys import Layout, block_indices

LAYOUT = "ldm-original"
LEFT_OUT: tuple[str, ...] = ()
PREFIX = "model.diffusion_model."

_OUTSIDE = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_MID = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}
_KEY = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")


def _resnet_inner(inner: str) -> str:
    module, _, rest = inner.partition(".")
    return f"{_RESNET.get(module, module)}.{rest}"


def _layers_per_block(state: Mapping[str, torch.Tensor]) -> int:
    """L: the resnets of every down block (the LDM layout numbers blocks with one L for the whole network)."""
    counts = {len(block_indices(state, f"down_blocks.{b}.resnets")) for b in block_indices(state, "down_blocks")}
    if len(counts) != 1:
        raise ValueError(f"the {LAYOUT} layout needs the same layers_per_block in every down block")
    return counts.pop()


def _block_key(key: str, per: int, up_attentions: set[int]) -> str | None:
    """The original name (unprefixed) of a down or up block's key, or None for any other key."""
    found = _KEY.fullmatch(key)
    if found is None:
        return None
    kind, block, part, index, inner = found.groups()
    b, i = int(block), int(index)
    if kind == "down_blocks":
        slot = 1 + b * (per + 1) + (per if part == "downsamplers" else i)
        if part == "downsamplers":
            return f"input_blocks.{slot}.0.op.{inner.removeprefix('conv.')}"
    else:
        slot = b * (per + 1) + (per if part == "upsamplers" else i)
        if part == "upsamplers":
            return f"output_blocks.{slot}.{2 if b in up_attentions else 1}.{inner}"
    if part == "resnets":
        return f"{'input' if kind == 'down_blocks' else 'output'}_blocks.{slot}.0.{_resnet_inner(inner)}"
    return f"{'input' if kind == 'down_blocks' else 'output'}_blocks.{slot}.1.{inner}"


def ldm_unet_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout state dict (prefixed) of a UNet2DConditionModel state dict; ValueError for a tensor it
    cannot place."""
    layout = Layout(state)
    per = _layers_per_block(state)
    up_attentions = {b for b in block_indices(state, "up_blocks") if block_indices(state, f"up_blocks.{b}.attentions")}
    for diffusers, original in _OUTSIDE.items():
        layout.rename(PREFIX + original, diffusers)
    for key in list(layout.left):
        if key.startswith("mid_block."):
            part, _, inner = key.removeprefix("mid_block.").partition(".")
            index, _, inner = inner.partition(".")
            name = _MID.get(f"{part}.{index}")
            if name is not None:
                layout.tensor(PREFIX + f"{name}.{_resnet_inner(inner) if part == 'resnets' else inner}", key)
            continue
        original = _block_key(key, per, up_attentions)
        if original is not None:
            layout.tensor(PREFIX + original, key)
    return layout.result(LAYOUT)
