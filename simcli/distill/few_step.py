"""Backward simulation: how a few-step generator is trained on its own trajectories (simcli.nets.few_step).

Each sample of a micro-batch is trained at one of the generator's K noise levels, drawn uniformly. Its input at level
k is made as sampling makes it: x_1 = sigma_1 z, then for each level above k the generator's output re-noised with
fresh noise, all without a graph; only the last evaluation, at level k, carries theta's gradient (DMD2's backward
simulation, tianweiy/DMD2 main/sd_unified_model.py, `sample_backward`; SiD-DiT trains its 4-step generator the
same way). So the generator learns on the inputs it meets when it samples, not on noised data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from simcli.nets.denoiser import generate


def simulate_generator(
    generator: nn.Module, z: torch.Tensor, sigmas: Sequence[float], labels: torch.Tensor | None, rng: torch.Generator,
) -> torch.Tensor:
    """x0 [B, ...] of a generator of len(sigmas) steps from latents z, each sample at a level drawn from rng, with a
    graph through the last evaluation only. One step: G(z) itself, and nothing more is drawn from rng. Draws, in
    order: the levels [B], then the noise of every re-noising [K - 1, B, ...] (all of it, so the stream does not
    depend on the levels drawn)."""
    if len(sigmas) == 1:
        return generate(generator, z, sigmas[0], labels)
    n, dev = z.shape[0], z.device
    level = torch.randint(len(sigmas), (n,), generator=rng, device=dev)  # [B]
    eps = torch.randn((len(sigmas) - 1, *z.shape), generator=rng, device=dev)  # [K - 1, B, ...]
    at_level = level.reshape(-1, *([1] * (z.ndim - 1)))
    x = sigmas[0] * z
    inputs = x
    with torch.no_grad():
        # Through every level, whatever was drawn: each process then runs the same passes (sharded networks gather
        # their blocks in every pass, collectively), and with a batch of any size the deepest level is drawn anyway.
        for k in range(1, len(sigmas)):
            x0 = generator(x, torch.full((n,), sigmas[k - 1], device=dev, dtype=z.dtype), labels).float()
            x = x0 + sigmas[k] * eps[k - 1]
            inputs = torch.where(at_level == k, x, inputs)
    sigma = torch.tensor(sigmas, device=dev, dtype=z.dtype)[level]  # [B]
    return generator(inputs, sigma, labels)
