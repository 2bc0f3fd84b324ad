"""Fit an MLP denoiser to an analytic teacher's exact denoiser (data-free regression).

An analytic teacher has no network to copy into the generator and the online model, so simcli makes one:
the MLP is regressed onto D_teacher(x; sigma) at x = x0 + sigma eps with x0 exact teacher samples and
ln sigma uniform over [sigma_min, sigma_max]. The loss is EDM-weighted so every noise level counts alike
in the network's own output units.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from simcli.distill.losses import edm_weight
from simcli.nets.mlp import MLPDenoiser
from simcli.teachers.gmm import GaussianMixture


def fit_mlp_denoiser(
    teacher: GaussianMixture,
    network: MLPDenoiser,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    sigma_min: float,
    sigma_max: float,
    seed: int,
    device: torch.device,
    on_progress: Callable[[int, float], None] | None = None,
    report_every: int = 250,
) -> list[float]:
    """Train `network` in place to match the teacher's denoiser; returns the loss of every report."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    teacher = teacher.to(device)
    network.train()
    history = []
    for step in range(steps):
        x0, _ = teacher.sample(batch_size, generator=gen)
        u = torch.rand(batch_size, generator=gen)
        sigma = torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
        x, sigma = x.to(device), sigma.to(device)
        with torch.no_grad():
            target = teacher(x, sigma)
        err = (network(x, sigma) - target).pow(2).sum(1)
        loss = (edm_weight(sigma, network.sigma_data) * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % report_every == 0 or step + 1 == steps:
            history.append(loss.item())
            if on_progress is not None:
                on_progress(step + 1, loss.item())
    network.eval()
    return history
