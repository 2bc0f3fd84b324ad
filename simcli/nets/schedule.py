"""EDM's noise-level schedule, shared by the teacher's sampler and SiD's generator noise levels."""

from __future__ import annotations

import torch


def karras_sigma(frac: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """sigma = (sigma_max^(1/rho) + frac (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho; frac 0 is sigma_max (EDM eq. 5)."""
    a = sigma_max ** (1 / rho)
    b = sigma_min ** (1 / rho)
    return (a + frac * (b - a)) ** rho
