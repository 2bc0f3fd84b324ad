"""Noise-level distributions for the online and generator steps (SIM eq. B.5-B.10, SiD eq. B.8)."""

from __future__ import annotations

import torch

from simcli.nets.schedule import karras_sigma


def sample_lognormal_sigma(
    n: int,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """ln sigma ~ N(p_mean, p_std^2), optionally clipped to [sigma_min, sigma_max] (SIM eq. B.6 and B.10): [n]."""
    ln_sigma = p_mean + p_std * torch.randn(n, generator=generator, device=device)
    sigma = ln_sigma.exp()
    if sigma_min is not None or sigma_max is not None:
        sigma = sigma.clamp(min=sigma_min, max=sigma_max)
    return sigma


def sample_karras_uniform_sigma(
    n: int,
    t_max: float = 800.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """SiD's generator noise: u ~ U(0, t_max/1000) mapped through the Karras schedule (SiD eq. B.8): [n]."""
    u = torch.rand(n, generator=generator, device=device) * (t_max / 1000.0)
    return karras_sigma(1 - u, sigma_min, sigma_max, rho)
