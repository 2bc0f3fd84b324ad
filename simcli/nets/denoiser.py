"""The one interface every teacher, generator and online model shares: an EDM-form denoiser.

A denoiser maps a noisy sample x = x0 + sigma * eps to an estimate of E[x0 | x] (EDM, Karras et al. 2022,
eq. 2). Scores follow as s(x; sigma) = (D(x; sigma) - x) / sigma^2. The one-step generator of SIM is a
denoiser evaluated once, at sigma_init (`generate`).
"""

from __future__ import annotations

import torch
from torch import nn


class Denoiser(nn.Module):
    """Base class: D(x, sigma, class_labels=None) -> denoised x, plus the metadata samplers need.

    Attributes:
        sample_shape: shape of one sample (D,) for vectors or (C, H, W) for images.
        label_dim: number of classes (0 when unconditional).
        sigma_min, sigma_max: noise range the denoiser supports (0 and inf for EDM-preconditioned ones).
    """

    sample_shape: tuple[int, ...] = ()
    label_dim: int = 0
    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Noise levels the denoiser can represent exactly (identity unless overridden)."""
        return torch.as_tensor(sigma)


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
