"""Few-step generators: the generator applied at K noise levels with re-noising between them.

A K-step generator with noise levels sigma_1 > ... > sigma_K (sigma_1 = sigma_init) samples as DMD2's multistep
generator does (Yin et al. 2024, Section 4.4; tianweiy/DMD2 main/sd_unified_model.py, `denoising_step_list`):

    x_1 = sigma_1 z,   x0_k = G(x_k; sigma_k),   x_{k+1} = x0_k + sigma_{k+1} eps_k,   sample = x0_K,

with fresh noise eps_k at each level. K = 1 is SIM's one-step generator G(z) = D(sigma_init z; sigma_init) (SIM
eq. B.4). Training uses backward simulation (simcli.distill.few_step): the input at a level is what the generator
itself makes at the levels above it, so it learns on its own K-step trajectories, not on noised data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from simcli.nets.denoiser import generate
from simcli.nets.schedule import karras_sigma

STEP_SIGMA_MIN = 0.002
"""The end of the ramp that spaces a K-step generator's noise levels (EDM's sigma_min)."""

STEP_RHO = 7.0
"""The curvature of that ramp (EDM's rho)."""


def step_sigmas(sigma_init: float, steps: int, sigma_min: float = STEP_SIGMA_MIN, rho: float = STEP_RHO) -> tuple[float, ...]:
    """The K noise levels of a K-step generator: the first K points of EDM's ramp (EDM eq. 5) from sigma_init down to
    sigma_min over K intervals, so sigma_1 = sigma_init and the levels fall as an EDM sampler's would."""
    if steps < 1:
        raise ValueError(f"a generator takes at least one step, got {steps}")
    frac = torch.arange(1, steps, dtype=torch.float64) / steps
    return (float(sigma_init), *(float(s) for s in karras_sigma(frac, sigma_min, sigma_init, rho)))


def generator_sigmas(sigma_init: float, steps: int, later: Sequence[float] | None = None) -> tuple[float, ...]:
    """(sigma_init, sigma_2, ..., sigma_K): the levels given after sigma_init, or step_sigmas' ramp when none are."""
    if later is None:
        return step_sigmas(sigma_init, steps)
    return (float(sigma_init), *(float(s) for s in later))


Renoise = Callable[[torch.Tensor], torch.Tensor]
"""Draws standard normal noise shaped like its argument (the re-noising of a K-step generator)."""


def generate_steps(
    generator: nn.Module, z: torch.Tensor, sigmas: Sequence[float], class_labels: torch.Tensor | None = None,
    renoise: Renoise | None = None,
) -> torch.Tensor:
    """A K-step generator's samples from latents z (len(sigmas) = K; one network evaluation per level). renoise draws
    eps_k after each level but the last; a one-step generator draws nothing."""
    x0 = generate(generator, z, sigmas[0], class_labels)
    for sigma in sigmas[1:]:
        if renoise is None:
            raise ValueError("a generator of several steps needs noise between its steps (renoise)")
        x = x0 + sigma * renoise(x0)
        x0 = generator(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype), class_labels)
    return x0
