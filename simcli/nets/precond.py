"""EDM preconditioning D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Table 1)."""

from __future__ import annotations

import torch


def edm_coefficients(
    sigma: torch.Tensor, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDMPrecond for noise levels sigma (EDM Table 1, 'Ours')."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise
