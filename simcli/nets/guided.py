"""A teacher guided by a second network, as EDM2's samplers guide (Karras et al. 2024, "Guiding a Diffusion Model
with a Bad Version of Itself"): D_w(x; sigma, c) = D_guide(x; sigma, c) + w (D(x; sigma, c) - D_guide(x; sigma, c)).

The guide is an unconditional network (classifier-free guidance; it then takes no class label) or a smaller, less
trained conditional one (autoguidance). w = 1 is the teacher alone. NVlabs/edm2 computes it as `ref.lerp(D, w)`
(generate_images.py, edm_sampler); so does `guided_denoised`. Both networks are frozen; only the teacher's
outputs are trained against, so the generator and the online model copy the teacher's network, never this wrapper.
"""

from __future__ import annotations

from typing import Any

import torch

from simcli.nets.denoiser import Conditioning, Denoiser


def guided_denoised(denoised: torch.Tensor, guide_denoised: torch.Tensor, weight: float) -> torch.Tensor:
    """D_guide + w (D - D_guide), as torch.lerp(D_guide, D, w) (autoguidance and CFG alike)."""
    return guide_denoised.lerp(denoised.to(guide_denoised.dtype), weight)


class GuidedDenoiser(Denoiser):
    """The teacher `net` guided by `guide` with weight `weight`; the teacher's sample shape, labels and noise range."""

    def __init__(self, net: Denoiser, guide: Denoiser, weight: float):
        super().__init__()
        self.net, self.guide, self.weight = net, guide, float(weight)
        self.sample_shape, self.label_dim = tuple(net.sample_shape), net.label_dim
        self.sigma_min, self.sigma_max = net.sigma_min, net.sigma_max
        self.supports_activation_checkpointing = net.supports_activation_checkpointing and guide.supports_activation_checkpointing
        self.supports_dropout = net.supports_dropout and guide.supports_dropout

    @property
    def conditioning(self) -> Conditioning:
        return self.net.conditioning

    @property
    def use_fp16(self) -> bool:  # type: ignore[override]
        return self.net.use_fp16 or self.guide.use_fp16

    @use_fp16.setter
    def use_fp16(self, value: bool) -> None:  # the run's precision decides for both networks
        self.net.use_fp16 = self.guide.use_fp16 = value

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        self.net.set_activation_checkpointing(enabled)
        self.guide.set_activation_checkpointing(enabled)

    def set_dropout(self, p: float) -> None:
        self.net.set_dropout(p)
        self.guide.set_dropout(p)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.net.round_sigma(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: Any = None, **kwargs: Any
                ) -> torch.Tensor:
        denoised = self.net(x, sigma, class_labels, **kwargs)
        guide_labels = class_labels if self.guide.label_dim else None  # an unconditional guide takes no label
        return guided_denoised(denoised, self.guide(x, sigma, guide_labels, **kwargs), self.weight)
