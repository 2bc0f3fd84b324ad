"""Stable Diffusion 3 / 3.5: diffusers' SD3Transformer2DModel state dict -> the MMDiT names of Stability AI's single
files (sd3_medium.safetensors, sd3.5_*.safetensors, without their `model.diffusion_model.` prefix: diffusers and
ComfyUI take the transformer alone either way). The inverse of diffusers' convert_sd3_transformer_checkpoint_to_diffusers:

    diffusers (transformer_blocks.N.)          original (joint_blocks.N.)
    attn.to_q | to_k | to_v                     x_block.attn.qkv              (rows concatenated)
    attn.add_q_proj | add_k_proj | add_v_proj   context_block.attn.qkv
    attn.norm_q / norm_k                        x_block.attn.ln_q / ln_k      (SD3.5's RMS qk-norm)
    attn.norm_added_q / norm_added_k            context_block.attn.ln_q / ln_k
    attn.to_out.0 / to_add_out                  x_block.attn.proj / context_block.attn.proj
    attn2.*                                     x_block.attn2.*               (SD3.5-medium's dual attention)
    norm1.linear / norm1_context.linear         x_block / context_block .adaLN_modulation.1
    ff / ff_context .net.0.proj, .net.2         x_block / context_block .mlp.fc1, .mlp.fc2

The last block's context stream is pre-only (no proj, no mlp) and its adaLN projection, like the final layer's, has
(shift, scale) in the original and (scale, shift) in diffusers: swapped back here. Outside the blocks: pos_embed
(the table) and x_embedder.proj, t_embedder.mlp.0/2, y_embedder.mlp.0/2 (pooled text), context_embedder,
final_layer.linear and final_layer.adaLN_modulation.1."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from simcli.export.single_file_keys import Layout, block_indices

LAYOUT = "sd3-original"
LEFT_OUT: tuple[str, ...] = ()

_OUTSIDE = {  # original module: diffusers module
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
_BLOCK = {  # inside a block: original (after joint_blocks.N.): diffusers (after transformer_blocks.N.)
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn.proj": "attn.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
_BLOCK_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def sd3_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout state dict of an SD3Transformer2DModel state dict; ValueError for a tensor it cannot
    place."""
    layout = Layout(state)
    layout.tensor("pos_embed", "pos_embed.pos_embed")
    for original, diffusers in _OUTSIDE.items():
        layout.rename(original, diffusers)
    blocks = block_indices(state, "transformer_blocks")
    for index in blocks:
        src, dst = f"transformer_blocks.{index}.", f"joint_blocks.{index}."
        for original, pieces in _BLOCK_FUSED.items():
            layout.fuse(dst + original, tuple(src + piece for piece in pieces))
        for original, diffusers in _BLOCK.items():
            layout.rename(dst + original, src + diffusers)
        context = (layout.swap if index == blocks[-1] else layout.rename)  # the pre-only last context block
        context(dst + "context_block.adaLN_modulation.1", src + "norm1_context.linear")
    layout.swap("final_layer.adaLN_modulation.1", "norm_out.linear")
    return layout.result(LAYOUT)
