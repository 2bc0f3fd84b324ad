"""The loss family as pure functions of denoiser outputs (EDM / denoiser form, sim-method.md sections 3 and 6).

Every generator loss returns one value per sample [B]. Which tensors carry gradients is decided by the
caller: for SIM and SiD the online model's and the teacher's outputs must be computed *with* autograd
through their inputs (parameters frozen), for Diff-Instruct both are constants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM weighting, SIM eq. B.7)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def online_dsm_loss(online_out: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float = 0.5, weighted: bool = True) -> Tensor:
    """Online model's denoising score matching loss lambda(sigma) ||D_psi(x; sigma) - x0||^2 (SIM eq. B.7): [B].
    weighted False: lambda = 1 (the paper's text-to-image runs, Appendix B.3)."""
    squared = _flat(online_out - x0).pow(2).sum(1)
    return edm_weight(sigma, sigma_data) * squared if weighted else squared


def uncertainty_dsm_loss(online_out: Tensor, x0: Tensor, sigma: Tensor, logvar: Tensor, sigma_data: float = 0.5
                         ) -> Tensor:
    """EDM2's uncertainty-weighted DSM loss, the sum over the C*H*W elements of (lambda(sigma) / e^u) (D_psi - x0)^2
    + u, = (lambda / e^u) ||D_psi - x0||^2 + C*H*W*u, u = logvar [B, 1, 1, 1] or [B] (EDM2 eq. 21; SiD@a5510fdf
    sida_training_edm2/sida_loss_edm2.py:493): [B]."""
    u = logvar.reshape(-1)  # [B] (or [1], one noise level for the batch)
    squared = _flat(online_out - x0).pow(2).sum(1)
    return edm_weight(sigma, sigma_data) / u.exp() * squared + x0[0].numel() * u


def uncertainty_scaled(per_sample: Tensor, logvar: Tensor) -> Tensor:
    """A per-sample loss divided by e^u, u = logvar [B, 1, 1, 1] or [B] of the online model at the same noisy input
    (SiDA's EDM2 generator loss, SiD@a5510fdf sida_training_edm2/sida_loss_edm2.py:458-459): [B]."""
    return per_sample / logvar.reshape(-1).exp()


def sim_generator_loss(
    x0: Tensor,
    online_out: Tensor,
    teacher_out: Tensor,
    d_prime: Callable[[Tensor], Tensor],
    weight: Tensor | float = 1.0,
) -> Tensor:
    """SIM generator loss w(sigma) * (-d'(y)^T (D_psi(x) - x0)), y = D_psi(x) - D_phi(x) (eq. 3.7 / B.13): [B].

    Gradients must reach x0 directly and through x = x0 + sigma eps into both networks and into d'(y).
    """
    y = online_out - teacher_out
    per_sample = -_flat(d_prime(y) * (online_out - x0)).sum(1)
    return weight * per_sample


def sid_normaliser(x0: Tensor, teacher_out: Tensor, floor: float = 1e-5) -> Tensor:
    """SiD's per-sample weight mean_i |x0 - D_phi(x)|_i, detached and floored (SiD, Zhou et al. 2024): [B]."""
    with torch.no_grad():
        return _flat(x0 - teacher_out).abs().mean(1).clamp_min(floor)


def sid_generator_loss(
    x0: Tensor,
    online_out: Tensor,
    teacher_out: Tensor,
    alpha: float = 1.2,
    normaliser_floor: float = 1e-5,
) -> Tensor:
    """SiD(alpha): Delta^T ((D_phi - x0) - alpha Delta) / w, Delta = D_phi - D_psi (SiD eq. for the generator): [B]."""
    delta = teacher_out - online_out
    per_sample = _flat(delta * ((teacher_out - x0) - alpha * delta)).sum(1)
    return per_sample / sid_normaliser(x0, teacher_out, normaliser_floor)


def di_generator_loss(x0: Tensor, online_out: Tensor, teacher_out: Tensor) -> Tensor:
    """Diff-Instruct (KL): <sg(D_psi - D_phi), x0>, gradient (D_psi - D_phi) at x0 (Luo et al. 2023): [B]."""
    direction = (online_out - teacher_out).detach()
    return _flat(direction * x0).sum(1)


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """SiDA's discriminator loss lambda(sigma) (BCE(l_real, 1) + BCE(l_fake, 0)) / 2, each BCE averaged over the
    micro-batch and the logit map (one value per micro-batch, as SiDA's per-GPU batch: sida_loss.py:118-123): [B].
    BCE(l, 1) = softplus(-l), BCE(l, 0) = softplus(l)."""
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return edm_weight(sigma, sigma_data) * 0.5 * (real + fake)


def generator_adversarial_loss(logits_fake: Tensor, normaliser: Tensor, pixels: int, clamp: float = 10.0) -> Tensor:
    """SiDA's generator adversarial loss BCE(clamp(l_fake, -c, c), 1), averaged over the micro-batch and the logit
    map, divided by each sample's normaliser w(x) and scaled by the pixels C*H*W, so that it sits beside a per-pixel
    sum (sida_loss.py:70-72, sida_training_loop.py:403-405): [B]."""
    bce = F.binary_cross_entropy_with_logits(logits_fake.clamp(-clamp, clamp), torch.ones_like(logits_fake))
    return bce * pixels / normaliser


def dmd_generator_loss(x0: Tensor, online_out: Tensor, teacher_out: Tensor, floor: float = 1e-5) -> Tensor:
    """DMD2's distribution matching loss per sample, 0.5 mean_pixels (x0_i - sg(x0_i - g_i))^2 with g = (p_real -
    p_fake) / mean|p_real|, p_real = x0 - D_phi (teacher), p_fake = x0 - D_psi (online), NaN/inf zeroed: its batch
    mean is DMD2's 0.5 mse(x0, sg(x0 - g)) over batch and pixels, value and gradient g_i / (B C H W)
    (main/edm/edm_guidance.py:102-111). The normaliser is floored at `floor` (DMD2 has none; sid_normaliser): [B]."""
    with torch.no_grad():
        p_real = x0 - teacher_out  # [B, C, H, W]
        p_fake = x0 - online_out
        normaliser = sid_normaliser(x0, teacher_out, floor).reshape(-1, *([1] * (x0.dim() - 1)))  # [B, 1, 1, 1]
        grad = torch.nan_to_num((p_real - p_fake) / normaliser)  # = (D_psi - D_phi) / w
    target = (x0 - grad).detach()
    return 0.5 * _flat(x0 - target).pow(2).mean(1)


def dmd_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """DMD2's classifier loss softplus(l_fake).mean() + softplus(-l_real).mean() (BCE against fake 0 / real 1),
    each averaged over the batch and the logit map (main/edm/edm_guidance.py:209, :217): scalar."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def dmd_generator_gan_loss(logits_fake: Tensor) -> Tensor:
    """DMD2's generator GAN loss softplus(-l_fake).mean() (BCE against real 1; main/edm/edm_guidance.py:199): scalar."""
    return F.softplus(-logits_fake).mean()
