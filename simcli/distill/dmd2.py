"""DMD2's GAN term (Yin et al. 2024; tianweiy/DMD2 main/edm/edm_guidance.py): a classifier head on the online
model's encoder features (simcli.nets.discriminator_head), trained with the online model to tell noised real images
from noised generator samples, and the generator's loss of being told apart.

Unlike SiDA's term (simcli.distill.adversarial), the images are noised afresh for it: real and fake each at their
own levels drawn from the online step's noise (DMD2: uniform over the whole 1000-level grid, independently for
real and fake, edm_guidance.py:176-180, :203-208), and the logits come from encoder-only passes of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from simcli.config.spec import NoiseSpec
from simcli.distill.adversarial import RealData
from simcli.distill.losses import dmd_discriminator_loss, dmd_generator_gan_loss
from simcli.distill.noise import draw_sigma
from simcli.distill.streams import IterationStreams, stream_seed
from simcli.nets.discriminator_head import DiscriminatorHead

HEAD_KEY = 2**40
"""The key of the head's initialisation stream beside the run seed (iteration keys stay far below it)."""


def noised(x0: torch.Tensor, noise: NoiseSpec, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 + sigma eps, sigma [B]): sigma from `noise`, then eps, both from rng."""
    sigma = draw_sigma(noise, x0.shape[0], rng, x0.device)
    eps = torch.randn(x0.shape, generator=rng, device=x0.device)
    return x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * eps, sigma


def logits_of(online: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, noise: NoiseSpec,
              rng: torch.Generator) -> torch.Tensor:
    """The head's logits of x0 noised at levels of its own (an encoder-only pass), float32."""
    x, sigma = noised(x0, noise, rng)
    return online(x, sigma, labels, return_logits=True, decode=False).float()


def discriminator_loss_of(
    online: nn.Module, fake_x0: torch.Tensor, fake_labels: torch.Tensor | None, real: RealData,
    streams: IterationStreams, phase: int, micro_batch: int, noise: NoiseSpec, rng: torch.Generator,
    autocast: Callable[[], AbstractContextManager],
) -> torch.Tensor:
    """DMD2's classifier loss of a micro-batch (the fake samples detached, as many real images), scalar: the fake
    images are noised first, then the real ones, each from rng."""
    real_x0, real_labels, _ = real.draw(streams, phase, micro_batch, fake_x0.shape[0], fake_x0.device)
    with autocast():
        fake = logits_of(online, fake_x0.detach(), fake_labels, noise, rng)
        real_logits = logits_of(online, real_x0, real_labels, noise, rng)
    return dmd_discriminator_loss(real_logits, fake)


def generator_gan_loss_of(online: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, noise: NoiseSpec,
                          rng: torch.Generator, autocast: Callable[[], AbstractContextManager]) -> torch.Tensor:
    """DMD2's generator GAN loss of the samples x0 (the online model's parameters frozen, the gradient reaching x0),
    scalar."""
    with autocast():
        return dmd_generator_gan_loss(logits_of(online, x0, labels, noise, rng))


def attach_head(online: nn.Module, seed: int) -> None:
    """Give the online model DMD2's classifier head on its encoder's last feature map, initialised from `seed` (the
    run's) so that every process and every run of one spec starts from the same head."""
    state = torch.get_rng_state()
    torch.manual_seed(stream_seed(seed, HEAD_KEY))
    try:
        online.attach_discriminator_head(DiscriminatorHead)
    finally:
        torch.set_rng_state(state)
