"""The two updates of one SIM iteration (paper Algorithm 2, EDM form; sim-method.md section 3).

Gradient scoping is explicit here: parameters are frozen with requires_grad_(False), and for SIM and SiD
the generator step runs the online model and the teacher *with* autograd so theta's gradient reaches
their inputs (and d'(y)). Only Diff-Instruct evaluates them without a graph.

Random draws: z, labels, sigma, eps and augmentations come from the iteration's generator `rng`; dropout
masks come from torch's global RNG, which the loop reseeds every iteration. Both repeat on resume.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from simcli.config.spec import KarrasUniformNoise, LognormalNoise, LossSpec
from simcli.distill.augment import AugmentPipe
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
    """x0 = G(z; labels) (augmented when asked), its noise levels, x = x0 + sigma eps, and the augment labels."""

    x0: torch.Tensor
    sigma: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor | None
    augment_labels: torch.Tensor | None = None


def draw_labels(n: int, label_dim: int, rng: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Uniformly random one-hot class labels [n, label_dim], or None for unconditional models."""
    if label_dim == 0:
        return None
    classes = torch.randint(label_dim, (n,), generator=rng, device=device)
    return torch.nn.functional.one_hot(classes, label_dim).to(torch.float32)


def noisy_generator_batch(
    generator: nn.Module,
    plan: BatchPlan,
    noise: LognormalNoise | KarrasUniformNoise,
    rng: torch.Generator,
    augment: AugmentPipe | None = None,
) -> NoisyBatch:
    """Draw z, labels, sigma, the augmentation (if any) and eps from rng in that order; x0 carries a graph when G
    has one. With augment, x0 is the augmented image (EDM's loss order: sigma, augmentation, noise)."""
    n, dev = plan.round_size, plan.device
    z = torch.randn((n, *plan.sample_shape), generator=rng, device=dev)
    labels = draw_labels(n, plan.label_dim, rng, dev)
    x0 = generate(generator, z, plan.sigma_init, labels)
    sigma = draw_sigma(noise, n, rng, dev)
    augment_labels = None
    if augment is not None:
        x0, augment_labels = augment(x0, rng)
    eps = torch.randn(x0.shape, generator=rng, device=dev)
    return NoisyBatch(x0, sigma, x0 + sigma.reshape(-1, *([1] * len(plan.sample_shape))) * eps, labels, augment_labels)


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
    augment: AugmentPipe | None = None,
) -> tuple[float, bool]:
    """One update of the online model by DSM on fresh generator samples; returns (loss, finite).

    With augment (EDM's pipeline, as SiD and Diff-Instruct's fake-score step), the augmented samples are the
    target and their augment labels are fed to the online model.
    """
    generator.eval()
    online.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(plan.rounds):
        with torch.no_grad():
            b = noisy_generator_batch(generator, plan, noise, rng, augment)
        extra = {} if b.augment_labels is None else {"augment_labels": b.augment_labels}
        loss = online_dsm_loss(online(b.x, b.sigma, b.labels, **extra), b.x0, b.sigma, sigma_data).mean() / plan.rounds
        loss.backward()
        total += loss.item()
    finite = step_if_finite(optimizer, list(online.parameters()), total)
    online.eval().requires_grad_(False)
    return total, finite


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG state dropout draws from on device (CPU, plus the device's CUDA generator)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def score_outputs(
    online: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    labels: torch.Tensor | None,
    shared_mask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(online model's, teacher's) denoised x. With shared_mask the online model's call starts from the random
    state the teacher's call started from, so networks of one architecture in train mode drop the same units
    (Diff-Instruct's DI_EDMLoss.gloss: teacher first, then the RNG state restored, then the online model)."""
    if not shared_mask:
        return online(x, sigma, labels), teacher(x, sigma, labels)
    state = _rng_state(x.device)
    teacher_out = teacher(x, sigma, labels)
    _set_rng_state(state, x.device)
    return online(x, sigma, labels), teacher_out


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
    score_dropout: str = "off",
) -> tuple[float, bool]:
    """One generator update; the online model and teacher keep frozen parameters but live inputs.

    score_dropout 'off' runs both in eval mode (SIM, SiD); 'shared-mask' runs both in train mode with one dropout
    mask (Diff-Instruct) and puts them back in eval mode afterwards. The generator's own dropout is on.
    """
    shared_mask = score_dropout == "shared-mask"
    online.train(shared_mask).requires_grad_(False)
    teacher.train(shared_mask).requires_grad_(False)
    generator.train().requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(plan.rounds):
        b = noisy_generator_batch(generator, plan, noise, rng)
        # SIM, SiD: theta's gradient flows into both networks' inputs; Diff-Instruct: both networks are constants.
        x = b.x if grad_through_networks else b.x.detach()
        with contextlib.nullcontext() if grad_through_networks else torch.no_grad():
            online_out, teacher_out = score_outputs(online, teacher, x, b.sigma, b.labels, shared_mask)
        loss = loss_fn(b.x0, online_out, teacher_out, b.sigma).mean() / plan.rounds
        loss.backward()
        total += loss.item()
    finite = step_if_finite(optimizer, list(generator.parameters()), total)
    generator.eval()
    online.eval()
    teacher.eval()
    return total, finite
