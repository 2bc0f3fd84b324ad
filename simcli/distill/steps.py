"""The two updates of one SIM iteration (paper Algorithm 2, EDM form; sim-method.md section 3).

Gradient scoping is explicit here: parameters are frozen with requires_grad_(False), and for SIM and SiD
the generator step runs the online model and the teacher *with* autograd so theta's gradient reaches
their inputs (and d'(y)). Only Diff-Instruct evaluates them without a graph.

An update's batch is cut into micro-batches (training.batch_gpu images each) that the processes of the run
share out (BatchPlan.indices). Each micro-batch takes its random draws from its own stream
(simcli.distill.streams: z, labels, sigma, augmentation and eps from its generator, dropout masks from torch's
global RNG reseeded per micro-batch), adds loss / micro_batches to the gradients, and after the last one the
gradients and the loss are summed over the processes (one all-reduce) before the finite check and the step.
The network passes run under the run's precision (simcli.distill.precision); their outputs are cast to float32
before any loss is formed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from simcli.config.spec import LossSpec, NoiseSpec
from simcli.distill.adversarial import RealData
from simcli.distill.augment import AugmentPipe
from simcli.distill.batches import BatchPlan
from simcli.distill.distances import default_pseudo_huber_c, make_distance
from simcli.distill.dmd2 import discriminator_loss_of, generator_gan_loss_of
from simcli.distill.few_step import simulate_generator
from simcli.distill.grad_clip import grad_sq_norm, scale_to_norm_
from simcli.distill.losses import (
    di_generator_loss,
    discriminator_loss,
    dmd_generator_loss,
    edm_weight,
    generator_adversarial_loss,
    online_dsm_loss,
    sid_generator_loss,
    sid_normaliser,
    sim_generator_loss,
    uncertainty_dsm_loss,
    uncertainty_scaled,
)
from simcli.distill.noise import draw_sigma
from simcli.distill.precision import LossScaler
from simcli.distill.sharding import force_weight_normalization, is_dtensor, local
from simcli.distill.streams import GENERATOR_PHASE, IterationStreams
from simcli.nets.lora import set_trainable, trainable_parameters
from simcli.world import World

GeneratorLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_generator_loss(loss: LossSpec, weighting: str, sample_dim: int, sigma_data: float = 0.5) -> GeneratorLoss:
    """The per-sample generator loss f(x0, online_out, teacher_out, sigma) -> [B] the spec asks for."""
    if loss.method == "sid":
        return lambda x0, on, te, sigma: sid_generator_loss(x0, on, te, alpha=loss.sid_alpha)
    if loss.method == "di":
        return lambda x0, on, te, sigma: di_generator_loss(x0, on, te)
    if loss.method == "dmd2":
        return lambda x0, on, te, sigma: dmd_generator_loss(x0, on, te)
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


def grads_are_finite(params: list[nn.Parameter], world: World | None = None) -> bool:
    """True when every gradient present is finite: the sum of every gradient's sum is (a NaN or an infinity
    anywhere makes it so; one pass over the gradients without temporaries, and one device sync). Finite gradients
    whose sum overflows float32 (beyond 3e38) count as non-finite too, as they should. Sharded gradients
    (simcli.distill.sharding) are checked shard by shard and the verdict summed over the processes (`world`)."""
    sums = [local(p.grad).sum() for p in params if p.grad is not None]
    total = torch.stack(sums).sum() if sums else torch.zeros(())
    if world is not None and any(is_dtensor(p.grad) for p in params if p.grad is not None):
        (summed,) = world.sum_floats([float(total)], total.device)
        return math.isfinite(summed)
    return bool(torch.isfinite(total))


@dataclass(frozen=True)
class Context:
    """What every update of an iteration shares: the plan, the iteration's streams, the world and the autocast."""

    plan: BatchPlan
    streams: IterationStreams
    world: World = field(default_factory=World)
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext


class NoisyBatch(NamedTuple):
    """x0 = G(z; labels) (augmented when asked), its noise levels, x = x0 + sigma eps, and the augment labels."""

    x0: torch.Tensor
    sigma: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor | None
    augment_labels: torch.Tensor | None = None


class Samples(NamedTuple):
    """A micro-batch of generator samples (detached) and their labels, handed from the generator update to the
    online update when online.sample_source is 'generator-step'."""

    x0: torch.Tensor
    labels: torch.Tensor | None


def add_noise(
    x0: torch.Tensor, labels: torch.Tensor | None, noise: NoiseSpec, rng: torch.Generator,
    augment: AugmentPipe | None = None,
) -> NoisyBatch:
    """Draw sigma, the augmentation (if any) and eps from rng in that order (EDM's loss order); with augment, the
    batch's x0 is the augmented image."""
    n, dev = x0.shape[0], x0.device
    sigma = draw_sigma(noise, n, rng, dev)
    augment_labels = None
    if augment is not None:
        x0, augment_labels = augment(x0, rng)
    eps = torch.randn(x0.shape, generator=rng, device=dev)
    return NoisyBatch(x0, sigma, x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * eps, labels, augment_labels)


def noisy_generator_batch(
    generator: nn.Module,
    plan: BatchPlan,
    noise: NoiseSpec,
    rng: torch.Generator,
    augment: AugmentPipe | None = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> NoisyBatch:
    """Draw z and labels from rng, generate x0 = G(z) (float32; with a graph when G has one; a few-step generator at a
    level drawn per sample, by backward simulation: simcli.distill.few_step), then add_noise."""
    n, dev = plan.micro_batch, plan.device
    z = torch.randn((n, *plan.sample_shape), generator=rng, device=dev)
    labels = plan.conditions.draw(n, rng, dev)
    with autocast():
        x0 = simulate_generator(generator, z, plan.generator_sigmas, labels, rng)
    return add_noise(x0.float(), labels, noise, rng, augment)


def finish_update(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor | float, world: World,
    scaler: LossScaler, clip_value: float | None = None, frozen: bool = False, max_grad_norm: float | None = None,
    lr_factor: float = 1.0,
) -> tuple[float, bool]:
    """Sum the loss and the gradients over the processes, unscale, and step when they are finite (or let the
    scaler skip an overflow); returns (the update's loss, whether the iteration counts as finite). The loss is
    read from the device once here, not once per micro-batch. clip_value: finite gradients are clamped to
    [-clip_value, clip_value] first (adversarial.online_grad_clip); max_grad_norm: then scaled down to that total norm
    (optimizer.max_grad_norm; over every process's shards when sharded); frozen: no step
    (adversarial.generator_freeze_kimg); lr_factor: the step is taken at this fraction of the learning rate (a
    warm-up), which the optimiser keeps as it was for its state."""
    grads = [p.grad for p in params if p.grad is not None]
    whole = [g for g in grads if not is_dtensor(g)]  # sharded gradients were summed by FSDP's reduce-scatter; whole
    if whole:  # ones (every gradient of an unsharded run, 0-d parameters FSDP leaves whole) are summed here
        world.all_reduce_sum_(whole)
    grads = [local(g) for g in grads]
    (loss,) = world.sum_floats([float(loss)], grads[0].device if grads else torch.device("cpu"))
    loss_finite = math.isfinite(loss)
    scaler.unscale_(grads)
    apply, finite = scaler.update(loss_finite, loss_finite and grads_are_finite(params, world))
    if apply and clip_value is not None:
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    if apply and max_grad_norm is not None:
        scale_to_norm_(grads, total_grad_norm(grads, params, world), max_grad_norm)
    if apply and not frozen:
        with scaled_learning_rate(optimizer, lr_factor):
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, finite


@contextlib.contextmanager
def scaled_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """The optimiser's learning rates times `factor` inside the block, as they were after it."""
    if factor == 1.0:
        yield
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr


def total_grad_norm(grads: list[torch.Tensor], params: list[nn.Parameter], world: World) -> float:
    """The gradient's total norm: of the local gradients, or, when some are sharded, of every process's shards plus
    the whole gradients (the same on every process) once."""
    present = [p.grad for p in params if p.grad is not None]
    if not any(is_dtensor(g) for g in present):
        return math.sqrt(float(grad_sq_norm(grads)))
    shards = [local(g) for g in present if is_dtensor(g)]
    (squares,) = world.sum_floats([float(grad_sq_norm(shards))], shards[0].device)
    return math.sqrt(squares + float(grad_sq_norm([g for g in present if not is_dtensor(g)])))


def online_update(
    generator: nn.Module,
    online: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: Context,
    phase: int,
    noise: NoiseSpec,
    sigma_data: float = 0.5,
    augment: AugmentPipe | None = None,
    scaler: LossScaler | None = None,
    samples: list[Samples] | None = None,
    weighting: str = "edm",
    real: RealData | None = None,
    per_pixel: bool = False,
    max_grad_norm: float | None = None,
    lr_factor: float = 1.0,
) -> tuple[float, bool]:
    """One update of the online model by DSM on generator samples; returns (loss, finite). With real data, its
    encoder is trained as SiDA's discriminator beside it (simcli.distill.adversarial), or its classifier head and
    encoder as DMD2's (real.style 'dmd2': simcli.distill.dmd2). per_pixel: the DSM loss is averaged over the pixels
    instead of summed (DMD2's, edm_guidance.py:152-161). max_grad_norm, lr_factor: finish_update's.

    weighting 'uncertainty': EDM2's loss (lambda / e^u) ||D - x0||^2 + C*H*W*u with the online model's u(sigma) from the
    same pass (losses.uncertainty_dsm_loss), and SiDA's discriminator loss divided by e^u (sida_loss_edm2.py:341-342);
    DMD2's classifier loss, from passes at noise levels of its own, is left as it is.

    The samples are fresh (G in eval mode) unless `samples` hands over the generator update's, one per micro-batch
    of this process. With augment (EDM's pipeline, as SiD and Diff-Instruct's fake-score step), the augmented
    samples are the target and their augment labels are fed to the online model.
    """
    scaler = scaler if scaler is not None else LossScaler()
    uncertain = weighting == "uncertainty"
    generator.eval()
    set_trainable(online.train(), True)
    force_weight_normalization(online, uncertain)  # sharded EDM2 networks (sharding.py)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for k, index in enumerate(ctx.plan.mine):
        rng = ctx.streams.begin(phase, index)
        if samples is None:
            with torch.no_grad():
                b = noisy_generator_batch(generator, ctx.plan, noise, rng, augment, ctx.autocast)
        else:
            b = add_noise(samples[k].x0, samples[k].labels, noise, rng, augment)
        extra = {} if b.augment_labels is None else {"augment_labels": b.augment_labels}
        sida = real is not None and real.style == "sida"
        logvar = None
        with ctx.autocast():
            if not sida:
                if uncertain:
                    denoised, logvar = online(b.x, b.sigma, b.labels, return_logvar=True, **extra)
                else:
                    denoised = online(b.x, b.sigma, b.labels, **extra)
            else:  # the real images noised with the fake batch's noise (sida_loss.py:87-96)
                if uncertain:
                    denoised, logits_fake, logvar = online(b.x, b.sigma, b.labels, return_logits=True,
                                                           return_logvar=True, **extra)
                else:
                    denoised, logits_fake = online(b.x, b.sigma, b.labels, return_logits=True, **extra)
                real_x0, real_labels, real_extra = real.draw(ctx.streams, phase, index, b.x0.shape[0], b.x0.device,
                                                             augment)
                logits_real = online(real_x0 + (b.x - b.x0), b.sigma, real_labels, return_logits=True, decode=False,
                                     **real_extra)
        if logvar is None:
            loss = online_dsm_loss(denoised.float(), b.x0, b.sigma, sigma_data, weighted=weighting == "edm").mean()
        else:
            loss = uncertainty_dsm_loss(denoised.float(), b.x0, b.sigma, logvar.float(), sigma_data).mean()
        if per_pixel:
            loss = loss / b.x0[0].numel()
        if sida:
            adversarial = discriminator_loss(logits_real.float(), logits_fake.float(), b.sigma, sigma_data)
            if logvar is not None:
                adversarial = uncertainty_scaled(adversarial, logvar.float())
            loss = loss + real.settings.online_weight * adversarial.mean()
        elif real is not None:
            adversarial = discriminator_loss_of(online, b.x0, b.labels, real, ctx.streams, phase, index, noise, rng,
                                                ctx.autocast)
            loss = loss + real.settings.online_weight * adversarial
        loss = loss / ctx.plan.micro_batches
        (loss * scaler.factor).backward()
        total = total + loss.detach()
    clip = real.settings.online_grad_clip if real is not None else None
    loss, finite = finish_update(optimizer, trainable_parameters(online), total, ctx.world, scaler, clip_value=clip,
                                 max_grad_norm=max_grad_norm, lr_factor=lr_factor)
    set_trainable(online.eval(), False)
    return loss, finite


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG state dropout draws from on device (CPU, plus the device's CUDA generator)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class ScorePasses(NamedTuple):
    """What the generator step reads of the online model and the teacher at its noisy input: their denoised x, and
    the online model's discriminator logits and its learned uncertainty u(sigma) [B, 1, 1, 1] when asked."""

    online: torch.Tensor
    teacher: torch.Tensor
    logits: torch.Tensor | None = None
    logvar: torch.Tensor | None = None


def score_passes(
    online: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    labels: torch.Tensor | None,
    shared_mask: bool = False,
    logits: bool = False,
    logvar: bool = False,
) -> ScorePasses:
    """The online model's and the teacher's denoised x, with the online model's discriminator logits and u(sigma) when
    asked, all from one pass of each network. With shared_mask the online model's call starts from the random state
    the teacher's call started from, so networks of one architecture in train mode drop the same units
    (Diff-Instruct's DI_EDMLoss.gloss: teacher first, then the RNG state restored, then the online model)."""
    flags = {**({"return_logits": True} if logits else {}), **({"return_logvar": True} if logvar else {})}

    def run_online() -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not flags:
            return online(x, sigma, labels), None, None
        out = online(x, sigma, labels, **flags)  # (D, logits), (D, logvar) or (D, logits, logvar)
        return out[0], out[1] if logits else None, out[-1] if logvar else None

    if not shared_mask:
        online_out, found, u = run_online()
        return ScorePasses(online_out, teacher(x, sigma, labels), found, u)
    state = _rng_state(x.device)
    teacher_out = teacher(x, sigma, labels)
    _set_rng_state(state, x.device)
    online_out, found, u = run_online()
    return ScorePasses(online_out, teacher_out, found, u)


def generator_update(
    generator: nn.Module,
    online: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: GeneratorLoss,
    ctx: Context,
    noise: NoiseSpec,
    grad_through_networks: bool = True,
    score_dropout: str = "off",
    scaler: LossScaler | None = None,
    keep_samples: list[Samples] | None = None,
    real: RealData | None = None,
    adversarial: bool = False,
    frozen: bool = False,
    max_grad_norm: float | None = None,
    lr_factor: float = 1.0,
    uncertainty_scaling: bool = False,
) -> tuple[float, bool]:
    """One generator update; the online model and teacher keep frozen parameters but live inputs.

    adversarial: add SiDA's adversarial loss of the samples, from the online model's discriminator logits (`real`
    gives its weight; simcli.distill.adversarial), taken with a gradient to x also for Diff-Instruct; or DMD2's GAN
    loss (real.style 'dmd2', on the samples noised afresh: simcli.distill.dmd2). frozen: the loss is computed and
    reported, but the generator does not step. max_grad_norm, lr_factor: finish_update's. uncertainty_scaling: each
    sample's loss (SiDA's adversarial loss included) is divided by e^u, u(sigma) the online model's learned uncertainty
    from its score pass (losses.uncertainty_scaled; generator.uncertainty_scaling, not for DMD2's GAN loss).

    score_dropout 'off' runs both in eval mode (SIM, SiD); 'shared-mask' runs both in train mode with one dropout
    mask (Diff-Instruct) and puts them back in eval mode afterwards. The generator's own dropout is on.
    keep_samples: a list that receives each micro-batch's x0 (detached) and labels, for the online update.
    """
    scaler = scaler if scaler is not None else LossScaler()
    shared_mask = score_dropout == "shared-mask"
    set_trainable(online.train(shared_mask), False)
    teacher.train(shared_mask).requires_grad_(False)
    set_trainable(generator.train(), True)
    force_weight_normalization(generator)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for index in ctx.plan.mine:
        rng = ctx.streams.begin(GENERATOR_PHASE, index)
        b = noisy_generator_batch(generator, ctx.plan, noise, rng, autocast=ctx.autocast)
        if keep_samples is not None:
            keep_samples.append(Samples(b.x0.detach(), b.labels))
        # SIM, SiD: theta's gradient flows into both networks' inputs; Diff-Instruct: both networks are constants.
        x = b.x if grad_through_networks else b.x.detach()
        with contextlib.nullcontext() if grad_through_networks else torch.no_grad(), ctx.autocast():
            passes = score_passes(online, teacher, x, b.sigma, b.labels, shared_mask,
                                  logits=adversarial and grad_through_networks, logvar=uncertainty_scaling)
        online_out, teacher_out, logits = passes.online, passes.teacher, passes.logits
        per_sample = loss_fn(b.x0, online_out.float(), teacher_out.float(), b.sigma)
        if adversarial and real is not None and real.style == "dmd2":
            gan = generator_gan_loss_of(online, b.x0, b.labels, real.gan_noise, rng, ctx.autocast)
            per_sample = per_sample + real.settings.generator_weight * gan
        elif adversarial and real is not None:
            if logits is None:  # Diff-Instruct: the score passes had no graph; the discriminator's needs one
                with ctx.autocast():
                    logits = online(b.x, b.sigma, b.labels, return_logits=True, decode=False)
            normaliser = sid_normaliser(b.x0, teacher_out.float())
            pixels = b.x0[0].numel()
            per_sample = per_sample + real.settings.generator_weight * generator_adversarial_loss(
                logits.float(), normaliser, pixels)
        if passes.logvar is not None:  # SiD's loss and SiDA's GAN term alike (sida_loss_edm2.py:276-277, :283-284)
            per_sample = uncertainty_scaled(per_sample, passes.logvar.float())
        loss = per_sample.mean() / ctx.plan.micro_batches
        (loss * scaler.factor).backward()
        total = total + loss.detach()
    loss, finite = finish_update(optimizer, trainable_parameters(generator), total, ctx.world, scaler, frozen=frozen,
                                 max_grad_norm=max_grad_norm, lr_factor=lr_factor)
    generator.eval()
    online.eval()
    teacher.eval()
    return loss, finite
