"""The two updates of one SIM iteration (paper Algorithm 2, EDM form; sim-method.md section 3).

Gradient scoping is explicit here: parameters are frozen with requires_grad_(False), and for SIM and SiD
the generator step runs the online model and the teacher *with* autograd so theta's gradient reaches
their inputs (and d'(y)). Only Diff-Instruct evaluates them without a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from simcli.config.spec import KarrasUniformNoise, LognormalNoise, LossSpec
from simcli.distill.distances import default_pseudo_huber_c, make_distance
from simcli.distill.losses import di_generator_loss, edm_weight, online_dsm_loss, sid_generator_loss, sim_generator_loss
from simcli.distill.noise import sample_karras_uniform_sigma, sample_lognormal_sigma
from simcli.nets.denoiser import generate

GeneratorLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def draw_sigma(noise: LognormalNoise | KarrasUniformNoise, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """Noise levels [n] from a noise spec."""
    if isinstance(noise, LognormalNoise):
        return sample_lognormal_sigma(n, noise.p_mean, noise.p_std, rng, device, noise.sigma_min, noise.sigma_max)
    return sample_karras_uniform_sigma(n, noise.t_max, noise.sigma_min, noise.sigma_max, noise.rho, rng, device)


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
    """True when every gradient present is finite (one device sync, not one per tensor)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


@dataclass(frozen=True)
class BatchPlan:
    """How every round of an update draws its batch: sizes, shapes, labels, device."""

    sigma_init: float
    batch_size: int
    rounds: int
    sample_shape: tuple[int, ...]
    label_dim: int
    device: torch.device

    @property
    def round_size(self) -> int:
        return self.batch_size // self.rounds


class NoisyBatch(NamedTuple):
    """x0 = G(z; labels), its noise levels, and x = x0 + sigma eps."""

    x0: torch.Tensor
    sigma: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor | None


def draw_labels(n: int, label_dim: int, rng: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Uniformly random one-hot class labels [n, label_dim], or None for unconditional models."""
    if label_dim == 0:
        return None
    classes = torch.randint(label_dim, (n,), generator=rng, device=device)
    return torch.nn.functional.one_hot(classes, label_dim).to(torch.float32)


def noisy_generator_batch(
    generator: nn.Module, plan: BatchPlan, noise: LognormalNoise | KarrasUniformNoise, rng: torch.Generator
) -> NoisyBatch:
    """Draw z, labels, sigma and eps from rng in that order; x0 carries a graph when G has one."""
    n, dev = plan.round_size, plan.device
    z = torch.randn((n, *plan.sample_shape), generator=rng, device=dev)
    labels = draw_labels(n, plan.label_dim, rng, dev)
    x0 = generate(generator, z, plan.sigma_init, labels)
    sigma = draw_sigma(noise, n, rng, dev)
    eps = torch.randn(x0.shape, generator=rng, device=dev)
    return NoisyBatch(x0, sigma, x0 + sigma.reshape(-1, *([1] * len(plan.sample_shape))) * eps, labels)


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
    plan: BatchPlan,
    noise: LognormalNoise | KarrasUniformNoise,
    rng: torch.Generator,
    sigma_data: float = 0.5,
) -> tuple[float, bool]:
    """One update of the online model by DSM on fresh generator samples; returns (loss, finite)."""
    generator.eval()
    online.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(plan.rounds):
        with torch.no_grad():
            b = noisy_generator_batch(generator, plan, noise, rng)
        loss = online_dsm_loss(online(b.x, b.sigma, b.labels), b.x0, b.sigma, sigma_data).mean() / plan.rounds
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
    plan: BatchPlan,
    noise: LognormalNoise | KarrasUniformNoise,
    rng: torch.Generator,
    grad_through_networks: bool = True,
) -> tuple[float, bool]:
    """One generator update; the online model and teacher keep frozen parameters but live inputs."""
    online.eval().requires_grad_(False)
    teacher.eval().requires_grad_(False)
    generator.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(plan.rounds):
        b = noisy_generator_batch(generator, plan, noise, rng)
        if grad_through_networks:  # SIM, SiD: theta's gradient flows into both networks' inputs
            online_out, teacher_out = online(b.x, b.sigma, b.labels), teacher(b.x, b.sigma, b.labels)
        else:  # Diff-Instruct: both networks are constants
            with torch.no_grad():
                x = b.x.detach()
                online_out, teacher_out = online(x, b.sigma, b.labels), teacher(x, b.sigma, b.labels)
        loss = loss_fn(b.x0, online_out, teacher_out, b.sigma).mean() / plan.rounds
        loss.backward()
        total += loss.item()
    finite = step_if_finite(optimizer, list(generator.parameters()), total)
    generator.eval()
    return total, finite
