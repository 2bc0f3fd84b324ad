"""Noise-level distributions for the online and generator steps (SIM eq. B.5-B.10, SiD eq. B.8, DMD2's Karras grid)."""

from __future__ import annotations

import torch

from simcli.config.spec import KarrasGridNoise, LognormalNoise, NoiseSpec
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


def karras_grid(steps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """DMD2's noise grid `karras_sigmas`: the Karras ramp over linspace(0, 1, steps), flipped so that index 0 is
    sigma_min and index steps - 1 is sigma_max (main/edm/edm_guidance.py:9-15, :60-67): [steps], ascending."""
    if steps < 2:
        raise ValueError(f"the grid needs at least 2 steps, got {steps}")
    ramp = torch.linspace(0, 1, steps)  # [steps]; 0 is sigma_max
    return karras_sigma(ramp, sigma_min, sigma_max, rho).flip(0)


def sample_karras_grid_sigma(
    n: int,
    steps: int = 1000,
    index_min: int = 0,
    index_max: int = 999,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """sigma = karras_grid[i], i ~ U{index_min, ..., index_max} inclusive: DMD2's DM loss draws i in [20, 980]
    (main/edm/edm_guidance.py:82-92), its fake-score DSM loss and its GAN noise i in [0, 999]
    (edm_guidance.py:138-145, :176-179 with diffusion_gan_max_timestep 1000): [n]."""
    if not 0 <= index_min <= index_max < steps:
        raise ValueError(f"need 0 <= index_min <= index_max < steps, got {index_min}, {index_max}, {steps}")
    index = torch.randint(index_min, index_max + 1, (n,), generator=generator, device=device)  # [n]
    return karras_grid(steps, sigma_min, sigma_max, rho).to(device)[index]


def draw_sigma(noise: NoiseSpec, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """Noise levels [n] from a noise spec."""
    if isinstance(noise, LognormalNoise):
        return sample_lognormal_sigma(n, noise.p_mean, noise.p_std, rng, device, noise.sigma_min, noise.sigma_max)
    if isinstance(noise, KarrasGridNoise):
        return sample_karras_grid_sigma(n, noise.steps, noise.index_min, noise.top_index, noise.sigma_min,
                                        noise.sigma_max, noise.rho, rng, device)
    return sample_karras_uniform_sigma(n, noise.t_max, noise.sigma_min, noise.sigma_max, noise.rho, rng, device)
