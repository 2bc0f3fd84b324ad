"""FLUX.1 (dev, schnell): diffusers' FluxTransformer2DModel state dict -> Black Forest Labs' names (the layout of
flux1-dev.safetensors / flux1-schnell.safetensors). The inverse of diffusers'
convert_flux_transformer_checkpoint_to_diffusers:

    diffusers                                         original
    time_text_embed.timestep_embedder.linear_1 / _2   time_in.in_layer / out_layer
    time_text_embed.text_embedder.*                   vector_in.*          (pooled CLIP)
    time_text_embed.guidance_embedder.*               guidance_in.*        (dev only)
    context_embedder / x_embedder                     txt_in / img_in
    transformer_blocks.N.                             double_blocks.N.
      norm1.linear / norm1_context.linear               img_mod.lin / txt_mod.lin
      attn.to_q | to_k | to_v                           img_attn.qkv        (rows concatenated)
      attn.add_q_proj | add_k_proj | add_v_proj         txt_attn.qkv
      attn.norm_q / norm_k (.weight)                    img_attn.norm.query_norm / key_norm (.scale)
      attn.norm_added_q / norm_added_k                  txt_attn.norm.query_norm / key_norm
      attn.to_out.0 / attn.to_add_out                   img_attn.proj / txt_attn.proj
      ff / ff_context .net.0.proj, .net.2               img_mlp / txt_mlp .0, .2
    single_transformer_blocks.N.                      single_blocks.N.
      norm.linear                                       modulation.lin
      attn.to_q | to_k | to_v | proj_mlp                linear1             (q, k, v, then the MLP's input rows)
      attn.norm_q / norm_k                              norm.query_norm / key_norm (.scale)
      proj_out                                          linear2
    proj_out / norm_out.linear                        final_layer.linear / final_layer.adaLN_modulation.1

The final adaLN projection is (shift, scale) in the original and (scale, shift) in diffusers: swapped back here."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from simcli.export.single_file_keys import Layout, block_indices

LAYOUT = "flux-original"
LEFT_OUT: tuple[str, ...] = ()

_OUTSIDE = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def flux_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a FluxTransformer2DModel state dict; ValueError for a tensor it cannot
    place."""
    layout = Layout(state)
    for original, diffusers in _OUTSIDE.items():
        layout.rename(original, diffusers)
    groups = (("transformer_blocks", "double_blocks", _DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED),
              ("single_transformer_blocks", "single_blocks", _SINGLE, _SINGLE_NORMS, _SINGLE_FUSED))
    for source, target, renamed, norms, fused in groups:
        for index in block_indices(state, source):
            src, dst = f"{source}.{index}.", f"{target}.{index}."
            for original, pieces in fused.items():
                layout.fuse(dst + original, tuple(src + piece for piece in pieces))
            for original, diffusers in renamed.items():
                layout.rename(dst + original, src + diffusers)
            for original, diffusers in norms.items():
                layout.tensor(dst + original, src + diffusers)
    layout.swap("final_layer.adaLN_modulation.1", "norm_out.linear")
    return layout.result(LAYOUT)
