"""From a network's samples to uint8 images: pixels converted as EDM's generate.py does, latents through their VAE.

Which one a network's samples need is in its architecture record: an EDM2 latent network's carries `latents`
(simcli.teachers.edm2_latents), everything else samples pixels in [-1, 1]. Every place that turns samples into
images (sample files, grids, `eval --generator`, in-training evaluation) asks `image_decoder` once. The VAE loads on
the first decode, never during training steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from simcli.sampling.images import to_uint8
from simcli.teachers.edm2_latents import Edm2Latents

ImageDecode = Callable[[torch.Tensor], np.ndarray]
"""Samples [N, C, H, W] (model space) -> uint8 images [N, H', W', 3 or 1], as PNGs and metrics take them."""


def latent_space(architecture: Any, source: str = "architecture record") -> Edm2Latents | None:
    """The latent space an architecture record names (None: its samples are pixels)."""
    record = architecture.get("latents") if isinstance(architecture, dict) else None
    return None if record is None else Edm2Latents.from_record(record, source)


class LatentImages:
    """Latents -> uint8 images [N, H, W, 3] through the latent space's VAE, loaded on the first call."""

    def __init__(self, latents: Edm2Latents, device: torch.device | str):
        self.latents, self.device = latents, device
        self._decode: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self._decode is None:
            self._decode = self.latents.decoder(self.device)
        return self._decode(x).permute(0, 2, 3, 1).cpu().numpy()


def image_decoder(architecture: Any, device: torch.device | str = "cpu", source: str = "architecture record"
                  ) -> ImageDecode:
    """How the samples of a network with this architecture record become images (lazily, for latents)."""
    return latents_decoder(architecture.get("latents") if isinstance(architecture, dict) else None, device, source)


def latents_decoder(record: Any, device: torch.device | str = "cpu", source: str = "latent-space record"
                    ) -> ImageDecode:
    """How samples become images given their latent-space record (None: pixels, converted as generate.py does)."""
    return to_uint8 if record is None else LatentImages(Edm2Latents.from_record(record, source), device)
