"""Latents -> uint8 images through a pipeline's VAE, as the family's pipeline decodes and post-processes them.

    x = VAE.decode(z / scaling_factor + shift_factor)        (shift 0 where the config has none: SD, PixArt, SANA)
    image = round(255 * clamp(x / 2 + 1/2, 0, 1))            (VaeImageProcessor.postprocess, then numpy_to_pil)

AutoencoderKL (SD1.5, SDXL, PixArt, SD3 and FLUX with their shifts) and AutoencoderDC (SANA) decode alike. Latents
arrive unpacked, [B, C, h, w], for every family: FLUX's 2x2 packing is its network adapter's business
(simcli.nets.backbones).
"""

from __future__ import annotations

from typing import Any

import torch


class LatentDecoder:
    """Latents [B, C, h, w] -> uint8 images [B, 3, H, W], batch_size latents at a time."""

    def __init__(self, vae: Any, batch_size: int = 8):
        self.vae = vae
        self.batch_size = max(1, int(batch_size))
        config = dict(vae.config)
        self.scaling_factor = float(config["scaling_factor"])
        self.shift_factor = float(config.get("shift_factor") or 0.0)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        images = []
        with torch.no_grad():
            for chunk in latents.split(self.batch_size):
                z = chunk.to(param.device, param.dtype) / self.scaling_factor + self.shift_factor
                x = self.vae.decode(z, return_dict=False)[0]
                images.append((x.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8))
        if not images:
            return torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
        return torch.cat(images)
