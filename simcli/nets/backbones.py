"""How each family's diffusers network is called: one small adapter per network class, no maths.

An adapter turns (the network's input latents, the time it takes, a TextCondition, an embedded guidance value)
into the network's raw output [B, C, H, W] in float32, the way the family's own pipeline calls it:

    family   network class              time it takes          text inputs                       also
    pixart   PixArtTransformer2DModel   DDPM bin index         T5 states + mask                  1024 px micro-conditions;
                                                                                                 learned-sigma half dropped
    sd3      SD3Transformer2DModel      1000 t                 CLIP-L|G ++ T5 states, pooled     no mask
    flux     FluxTransformer2DModel     t (x1000 inside)       T5 states, CLIP-L pooled          2x2-packed latents, ids;
                                                                                                 dev: embedded guidance
    sana     SanaTransformer2DModel     1000 t x timestep_scale  Gemma-2 states + mask
    unet     UNet2DConditionModel       DDPM bin index         CLIP states; SDXL pooled          SDXL size/crop time ids

(pipelines/pixart_alpha, stable_diffusion_3, flux, sana, stable_diffusion(_xl) of diffusers.) What the time is
computed from (the noise level) is simcli.nets.diffusers_denoiser's part; diffusers itself is never imported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from simcli.nets.denoiser import Conditioning
from simcli.nets.text_condition import TextCondition


def _config(network: nn.Module, key: str, default: Any = None) -> Any:
    return network.config.get(key, default) if hasattr(network.config, "get") else getattr(network.config, key, default)


class Backbone:
    """The call of one network class. `component`: the pipeline folder (and state_dict prefix) of the network;
    `time_scale`: what a flow network's time t is multiplied by (VP networks take bin indices)."""

    family = ""
    class_name = ""
    component = "transformer"
    time_scale = 1000.0

    def conditioning(self, network: nn.Module) -> Conditioning:
        raise NotImplementedError

    def default_sample_shape(self, network: nn.Module) -> tuple[int, int, int]:
        """(C, h, w) of the latents at the network's default resolution (its config's sample_size)."""
        size = int(_config(network, "sample_size"))
        return int(_config(network, "in_channels")), size, size

    def flow_time_scale(self, network: nn.Module) -> float:
        return self.time_scale

    def __call__(self, network: nn.Module, latents: torch.Tensor, time: torch.Tensor, condition: TextCondition,
                 guidance: torch.Tensor | None, vae_scale_factor: int) -> torch.Tensor:
        raise NotImplementedError


class PixArtBackbone(Backbone):
    family, class_name = "pixart", "PixArtTransformer2DModel"

    def conditioning(self, network: nn.Module) -> Conditioning:
        added = ("resolution", "aspect_ratio") if getattr(network, "use_additional_conditions", False) else ()
        return Conditioning(text_dim=int(_config(network, "caption_channels") or 0), added=added, guidance="cfg")

    def __call__(self, network, latents, time, condition, guidance, vae_scale_factor):
        dtype = next(network.parameters()).dtype
        micro: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if getattr(network, "use_additional_conditions", False):  # PixArt-alpha 1024: size in pixels, as the pipeline
            batch, (height, width) = latents.shape[0], (int(s) * vae_scale_factor for s in latents.shape[-2:])
            micro = {"resolution": torch.tensor([height, width], dtype=dtype, device=latents.device).repeat(batch, 1),
                     "aspect_ratio": torch.tensor([height / width], dtype=dtype, device=latents.device).repeat(batch, 1)}
        out = network(latents.to(dtype), encoder_hidden_states=condition.embeds.to(dtype),
                      encoder_attention_mask=condition.mask, timestep=time, added_cond_kwargs=micro,
                      return_dict=False)[0]
        channels = latents.shape[1]
        return (out[:, :channels] if out.shape[1] == 2 * channels else out).float()  # learned sigma: [eps, var]


class SD3Backbone(Backbone):
    family, class_name = "sd3", "SD3Transformer2DModel"

    def conditioning(self, network: nn.Module) -> Conditioning:
        return Conditioning(text_dim=int(_config(network, "joint_attention_dim")),
                            pooled_dim=int(_config(network, "pooled_projection_dim")), guidance="cfg")

    def __call__(self, network, latents, time, condition, guidance, vae_scale_factor):
        dtype = next(network.parameters()).dtype
        return network(hidden_states=latents.to(dtype), encoder_hidden_states=condition.embeds.to(dtype),
                       pooled_projections=condition.pooled.to(dtype), timestep=time.to(dtype),
                       return_dict=False)[0].float()


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: FLUX's 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of pack_latents for latents of height x width."""
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def flux_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[(H/2)(W/2), 3] rows (0, row, col) of the packed tokens (FluxPipeline._prepare_latent_image_ids)."""
    rows = torch.arange(height // 2, device=device, dtype=dtype).repeat_interleave(width // 2)
    cols = torch.arange(width // 2, device=device, dtype=dtype).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


class FluxBackbone(Backbone):
    family, class_name = "flux", "FluxTransformer2DModel"
    time_scale = 1.0  # the transformer multiplies t by 1000 itself

    def conditioning(self, network: nn.Module) -> Conditioning:
        guidance = "embedded" if _config(network, "guidance_embeds", False) else "none"
        return Conditioning(text_dim=int(_config(network, "joint_attention_dim")),
                            pooled_dim=int(_config(network, "pooled_projection_dim")), guidance=guidance)

    def default_sample_shape(self, network: nn.Module) -> tuple[int, int, int]:
        """FluxPipeline's default 1024 px: 128 x 128 latents of in_channels / 4 channels."""
        return int(_config(network, "in_channels")) // 4, 128, 128

    def __call__(self, network, latents, time, condition, guidance, vae_scale_factor):
        dtype = next(network.parameters()).dtype
        height, width = latents.shape[-2:]
        text_ids = torch.zeros(condition.embeds.shape[1], 3, device=latents.device, dtype=dtype)
        out = network(hidden_states=pack_latents(latents).to(dtype), encoder_hidden_states=condition.embeds.to(dtype),
                      pooled_projections=condition.pooled.to(dtype), timestep=time.to(dtype),
                      img_ids=flux_image_ids(height, width, latents.device, dtype), txt_ids=text_ids,
                      guidance=None if guidance is None else guidance.to(dtype), return_dict=False)[0]
        return unpack_latents(out.float(), height, width)


class SanaBackbone(Backbone):
    family, class_name = "sana", "SanaTransformer2DModel"

    def conditioning(self, network: nn.Module) -> Conditioning:
        return Conditioning(text_dim=int(_config(network, "caption_channels")), guidance="cfg")

    def flow_time_scale(self, network: nn.Module) -> float:
        return 1000.0 * float(_config(network, "timestep_scale", 1.0) or 1.0)

    def __call__(self, network, latents, time, condition, guidance, vae_scale_factor):
        dtype = next(network.parameters()).dtype
        return network(hidden_states=latents.to(dtype), encoder_hidden_states=condition.embeds.to(dtype),
                       encoder_attention_mask=condition.mask, timestep=time.to(dtype), return_dict=False)[0].float()


class UNetBackbone(Backbone):
    family, class_name, component = "unet", "UNet2DConditionModel", "unet"

    @staticmethod
    def _sdxl(network: nn.Module) -> bool:
        return _config(network, "addition_embed_type") == "text_time"

    def conditioning(self, network: nn.Module) -> Conditioning:
        pooled = 0
        if self._sdxl(network):  # add_embedding takes 6 sinusoids of the time ids and the pooled text
            pooled = int(_config(network, "projection_class_embeddings_input_dim")) - 6 * int(
                _config(network, "addition_time_embed_dim"))
        return Conditioning(text_dim=int(_config(network, "cross_attention_dim")), pooled_dim=pooled,
                            added=("time_ids",) if self._sdxl(network) else (), guidance="cfg")

    def __call__(self, network, latents, time, condition, guidance, vae_scale_factor):
        dtype = next(network.parameters()).dtype
        added = None
        if self._sdxl(network):  # original size = target size = the image's, no crop (the pipeline's defaults)
            height, width = (int(s) * vae_scale_factor for s in latents.shape[-2:])
            ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=dtype)
            added = {"text_embeds": condition.pooled.to(dtype), "time_ids": ids.repeat(latents.shape[0], 1)}
        return network(latents.to(dtype), time, encoder_hidden_states=condition.embeds.to(dtype),
                       added_cond_kwargs=added, return_dict=False)[0].float()


BACKBONES: dict[str, Backbone] = {b.family: b for b in (PixArtBackbone(), SD3Backbone(), FluxBackbone(),
                                                        SanaBackbone(), UNetBackbone())}
BACKBONE_BY_CLASS: dict[str, Backbone] = {b.class_name: b for b in BACKBONES.values()}
