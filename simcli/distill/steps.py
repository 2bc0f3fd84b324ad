"""The two updates of one SIM iteration (paper Algorithm 2, EDM form; sim-method.md section 3).

Gradient scoping is explicit here: parameters are frozen with requires_grad_(False), and for SIM and SiD
the generator step runs the online model and the teacher *with* autograd so theta's gradient reaches
their inputs (and d'(y)). Only Diff-Instruct evaluates them without a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from simcli.config.spec import KarrasUniformNoise, LognormalNoise, LossSpec
from simcli.distill.distances import default_pseudo_huber_c, make_distance
from simcli.distill.losses import di_generator_loss, edm_weight, online_dsm_loss, sid_generator_loss, sim_generator_loss
from simcli.distill.noise import sample_karras_uniform_sigma, sample_lognormal_sigma

GeneratorLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def draw_sigma(noise: LognormalNoise | KarrasUniformNoise, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """Noise levels [n] from a noise spec."""
    if isinstance(noise, LognormalNoise):
        return sample_lognormal_sigma(n, noise.p_mean, noise.p_std, rng, device, noise.sigma_min, noise.sigma_max)
    return sample_karras_uniform_sigma(n, noise.t_max, noise.sigma_min, noise.sigma_max, noise.rho, rng, device)


def generate(generator: nn.Module, z: torch.Tensor, sigma_init: float, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """G(z) = D_theta(sigma_init z; sigma_init) (SIM eq. B.4)."""
    sigma = torch.full((z.shape[0],), sigma_init, device=z.device, dtype=torch.float32)
    return generator(sigma_init * z, sigma, class_labels)


def make_generator_loss(loss: LossSpec, weighting: str, sample_dim: int, sigma_data: float = 0.5) -> GeneratorLoss:
    """The per-sample generator loss f(x0, online_out, teacher_out, sigma) -> [B] the spec asks for."""
    if loss.method == "sid":
        return lambda x0, on, te, sigma: sid_generator_loss(x0, on, te, alpha=loss.sid_alpha)
    if loss.method == "di":
        return lambda x0, on, te, sigma: di_generator_loss(x0, on, te)
    c = loss.pseudo_huber_c if loss.pseudo_huber_c is not None else default_pseudo_huber_c(sample_dim)
    distance = make_distance(
        loss.distance,
        pseudo_huber_c=c,
        huber_delta=loss.huber_delta,
        lp_alpha=loss.lp_alpha,
        exp_lp_alpha=loss.exp_lp_alpha,
        exp_lp_beta=loss.exp_lp_beta,
    )

    def sim_loss(x0: torch.Tensor, on: torch.Tensor, te: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        weight = edm_weight(sigma, sigma_data) if weighting == "edm" else 1.0
        return sim_generator_loss(x0, on, te, distance.d_prime, weight)

    return sim_loss


def grads_are_finite(params: list[nn.Parameter]) -> bool:
    """True when every gradient present is finite."""
    return all(torch.isfinite(p.grad).all().item() for p in params if p.grad is not None)


def noisy_generator_batch(
    generator: nn.Module,
    n: int,
    *,
    noise: LognormalNoise | KarrasUniformNoise,
    sigma_init: float,
    sample_shape: tuple[int, ...],
    rng: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 = G(z), sigma, x = x0 + sigma eps), drawn in that order from rng; x0 carries a graph if G does."""
    z = torch.randn((n, *sample_shape), generator=rng, device=device)
    x0 = generate(generator, z, sigma_init)
    sigma = draw_sigma(noise, n, rng, device)
    eps = torch.randn(x0.shape, generator=rng, device=device)
    return x0, sigma, x0 + sigma.reshape(-1, *([1] * len(sample_shape))) * eps


def step_if_finite(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: float) -> bool:
    """Apply the accumulated gradients only when the loss and every gradient are finite; returns that test."""
    finite = math.isfinite(loss) and grads_are_finite(params)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def online_update(
    generator: nn.Module,
    online: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise: LognormalNoise | KarrasUniformNoise,
    sigma_init: float,
    batch_size: int,
    rounds: int,
    sample_shape: tuple[int, ...],
    rng: torch.Generator,
    device: torch.device,
    sigma_data: float = 0.5,
) -> tuple[float, bool]:
    """One update of the online model by DSM on fresh generator samples; returns (loss, finite)."""
    generator.eval()
    online.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(rounds):
        with torch.no_grad():
            x0, sigma, x = noisy_generator_batch(
                generator, batch_size // rounds, noise=noise, sigma_init=sigma_init,
                sample_shape=sample_shape, rng=rng, device=device,
            )
        loss = online_dsm_loss(online(x, sigma), x0, sigma, sigma_data).mean() / rounds
        loss.backward()
        total += loss.item()
    finite = step_if_finite(optimizer, list(online.parameters()), total)
    online.eval().requires_grad_(False)
    return total, finite


def generator_update(
    generator: nn.Module,
    online: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: GeneratorLoss,
    *,
    grad_through_networks: bool,
    noise: LognormalNoise | KarrasUniformNoise,
    sigma_init: float,
    batch_size: int,
    rounds: int,
    sample_shape: tuple[int, ...],
    rng: torch.Generator,
    device: torch.device,
) -> tuple[float, bool]:
    """One generator update; the online model and teacher keep frozen parameters but live inputs."""
    online.eval().requires_grad_(False)
    teacher.eval().requires_grad_(False)
    generator.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(rounds):
        x0, sigma, x = noisy_generator_batch(
            generator, batch_size // rounds, noise=noise, sigma_init=sigma_init,
            sample_shape=sample_shape, rng=rng, device=device,
        )
        if grad_through_networks:  # SIM, SiD: theta's gradient flows into both networks' inputs
            online_out, teacher_out = online(x, sigma), teacher(x, sigma)
        else:  # Diff-Instruct: both networks are constants
            with torch.no_grad():
                online_out, teacher_out = online(x.detach(), sigma), teacher(x.detach(), sigma)
        loss = loss_fn(x0, online_out, teacher_out, sigma).mean() / rounds
        loss.backward()
        total += loss.item()
    finite = step_if_finite(optimizer, list(generator.parameters()), total)
    generator.eval()
    return total, finite
