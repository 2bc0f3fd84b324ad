"""The one interface every teacher, generator and online model shares: an EDM-form denoiser.

A denoiser maps a noisy sample x = x0 + sigma * eps to an estimate of E[x0 | x] (EDM, Karras et al. 2022,
eq. 2). Scores follow as s(x; sigma) = (D(x; sigma) - x) / sigma^2. The one-step generator of SIM is a
denoiser evaluated once, at sigma_init (`generate`).

What a denoiser takes besides x and sigma is declared once, by its `conditioning` (a `Conditioning`); callers
ask that declaration and the typed switches below (guidance, the null condition, activation checkpointing),
never `hasattr` or `getattr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Guidance = Literal["none", "cfg", "embedded"]
"""How a denoiser is guided: not at all; classifier-free guidance against its null condition (one batched pass
over [null; condition], eps_u + w (eps_c - eps_u)); or "embedded", the scale an input of a guidance-distilled
network (FLUX-dev), one pass."""


@dataclass(frozen=True)
class Conditioning:
    """The conditioning a denoiser takes: what its third argument and its keyword inputs may hold.

    label_dim     one-hot class labels [B, label_dim] as the third argument (0: the model takes none)
    text_dim      width of the text encoder's hidden states: the third argument is a TextCondition
                  (simcli.nets.text_condition) of [B, L, text_dim] embeddings and their mask (0: no text)
    pooled_dim    width of the pooled text embedding the TextCondition must carry as `pooled` [B, pooled_dim]
                  (SD3, FLUX, SDXL; 0: none)
    added         the added conditions the model is trained with, which the wrapper derives itself from the
                  latents (PixArt's 1024 px models: "resolution", "aspect_ratio"); () when none
    augment_dim   EDM's augmentation labels [B, augment_dim] as the keyword `augment_labels` (0: not taken)
    guidance      "cfg": the model is guided against a null condition (`set_null_condition`) with its
                  `guidance_scale`; "embedded": the scale is the network's input (no null condition);
                  "none": it is not guided
    """

    label_dim: int = 0
    text_dim: int = 0
    pooled_dim: int = 0
    added: tuple[str, ...] = ()
    augment_dim: int = 0
    guidance: Guidance = "none"

    @property
    def takes_text(self) -> bool:
        """Whether the model is conditioned on prompts (a text-to-image model): the one test simcli asks."""
        return self.text_dim > 0


class Denoiser(nn.Module):
    """Base class: D(x, sigma, condition=None) -> denoised x, plus the metadata samplers need.

    Attributes:
        sample_shape: shape of one sample (D,) for vectors, (C, H, W) for images or latents.
        label_dim: number of classes (0 when unconditional).
        sigma_min, sigma_max: noise range the denoiser supports (0 and inf for EDM-preconditioned ones).
        use_fp16: the network runs its own float16 trunk on CUDA (EDM's use_fp16); simcli's precision settings
            switch it off under autocast.
        guidance_scale: the classifier-free guidance weight (1: unguided); set with `set_guidance_scale`.
        supports_activation_checkpointing: whether `set_activation_checkpointing` is available.
        supports_dropout: whether `set_dropout` is available.
        supports_discriminator: whether the forward takes return_logits (and decode) and then also returns the
            logits of SiDA's discriminator, the channel mean of its encoder's last feature map (EDM's UNets).
        supports_uncertainty: whether the forward takes return_logvar and then also returns the learned uncertainty
            u(sigma) [N, 1, 1, 1], the log-variance EDM2's loss weights by (Karras et al. 2024, eq. 21; EDM2 networks).
    """

    sample_shape: tuple[int, ...] = ()
    label_dim: int = 0
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    use_fp16: bool = False
    guidance_scale: float = 1.0
    supports_activation_checkpointing: bool = False
    supports_dropout: bool = False
    supports_discriminator: bool = False
    supports_uncertainty: bool = False

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def conditioning(self) -> Conditioning:
        """What the denoiser takes besides x and sigma (class labels only, unless a subclass says more)."""
        return Conditioning(label_dim=self.label_dim)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Noise levels the denoiser can represent exactly (identity unless overridden)."""
        return torch.as_tensor(sigma)

    def set_guidance_scale(self, scale: float) -> None:
        """The classifier-free guidance weight; only 1 (unguided) for models whose conditioning has no guidance."""
        if self.conditioning.guidance == "none" and float(scale) != 1.0:
            raise ValueError(f"{type(self).__name__} takes no guidance (guidance scale {scale:g} asked)")
        self.guidance_scale = float(scale)

    def set_null_condition(self, condition: Any) -> None:
        """The condition guidance contrasts with (the empty prompt); only for guided models."""
        raise ValueError(f"{type(self).__name__} takes no null condition (its conditioning has no guidance)")

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them (see supports_activation_checkpointing)."""
        raise ValueError(f"{type(self).__name__} has no activation checkpointing")

    def set_dropout(self, p: float) -> None:
        """The dropout probability of every block that has one, active in train mode (see supports_dropout)."""
        raise ValueError(f"{type(self).__name__} has no dropout setting")


def sigma_column(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or per-sample sigma [B] so it broadcasts against x [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def generate(
    generator: nn.Module, z: torch.Tensor, sigma_init: float, class_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The one-step generator G(z) = D_theta(sigma_init z; sigma_init), sigma as a [B] tensor in z's dtype (SIM eq. B.4)."""
    sigma = torch.full((z.shape[0],), sigma_init, device=z.device, dtype=z.dtype)
    return generator(sigma_init * z, sigma, class_labels)
