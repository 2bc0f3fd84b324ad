"""Gaussian toy for exact SIM gradient checks (helpers, not tests).

Teacher p0 = N(mu_p, diag(s_p^2)); generator x0 = A z + b, z ~ N(0, I), so q_theta = N(b, A A^T).
At noise sigma a Gaussian N(m, S) diffuses to N(m, S + sigma^2 I) and its exact denoiser is affine:

    D(x) = x - sigma^2 (S + sigma^2 I)^{-1} (x - m) = M x + k,
    M = I - K,  k = K m,  K = sigma^2 (S + sigma^2 I)^{-1}.

The divergence the denoiser-form SIM loss implies (theta_0 = (A0, b0) the current, frozen generator):

    Div(theta) = E_{x ~ N(b0, A0 A0^T + sigma^2 I)} d( D_{q,theta}(x) - D_p(x) ).

With the sampling distribution held fixed, y = D_{q,theta}(x) - D_p(x) is an affine function of a fixed
Gaussian x, hence y ~ N(mu_y(theta), G Sigma0 G^T) with G = M_theta - M_p. For most distances E d(y) has
a closed form (below) that is differentiable in theta, so the "true" gradient is computed by autograd
through an exact expression, independently of any Monte Carlo. Pseudo-Huber has no closed form; it uses
tensor-product Gauss-Hermite quadrature (accuracy checked against the closed forms in the tests).

Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from simcli.distill.losses import sim_generator_loss

Tensor = torch.Tensor
DT = torch.float64


# --------------------------------------------------------------------------------------------------
# Exact denoisers
# --------------------------------------------------------------------------------------------------


def denoiser_affine(mean: Tensor, cov: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """(M, k) with D(x) = x @ M.T + k for the Gaussian N(mean, cov) diffused to noise sigma."""
    d = mean.shape[-1]
    eye = torch.eye(d, dtype=mean.dtype)
    K = sigma**2 * torch.linalg.inv(cov + sigma**2 * eye)
    return eye - K, K @ mean


def gaussian_denoiser(x: Tensor, mean: Tensor, cov: Tensor, sigma: float) -> Tensor:
    """Exact denoiser E[x0 | x] of N(mean, cov) at noise sigma, written as x - sigma^2 (S + sigma^2 I)^-1 (x - m)."""
    d = mean.shape[-1]
    eye = torch.eye(d, dtype=x.dtype)
    prec = torch.linalg.inv(cov + sigma**2 * eye)
    return x - sigma**2 * (x - mean) @ prec.T


@dataclass(frozen=True)
class Toy:
    """Teacher N(mu_p, diag(s_p^2)) and the frozen generator (A0, b0)."""

    mu_p: Tensor
    s_p: Tensor
    A0: Tensor
    b0: Tensor

    @property
    def dim(self) -> int:
        return self.mu_p.shape[0]

    @property
    def teacher_cov(self) -> Tensor:
        return torch.diag(self.s_p**2)

    def teacher_denoiser(self, x: Tensor, sigma: float) -> Tensor:
        return gaussian_denoiser(x, self.mu_p, self.teacher_cov, sigma)

    def online_denoiser(self, x: Tensor, sigma: float) -> Tensor:
        """The generator's exact denoiser with theta frozen at (A0, b0): a fixed function of x."""
        A0, b0 = self.A0.detach(), self.b0.detach()
        return gaussian_denoiser(x, b0, A0 @ A0.T, sigma)

    def sampling_law(self, sigma: float) -> tuple[Tensor, Tensor]:
        """Mean and covariance of x = x0 + sigma eps under the frozen generator."""
        A0 = self.A0.detach()
        return self.b0.detach().clone(), A0 @ A0.T + sigma**2 * torch.eye(self.dim, dtype=DT)

    def y_law(self, A: Tensor, b: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """(mu_y, G) so that y = D_{q,(A,b)}(x) - D_p(x) = mu_y + G (x - m0), x ~ N(m0, Sigma0) fixed."""
        M_q, k_q = denoiser_affine(b, A @ A.T, sigma)
        M_p, k_p = denoiser_affine(self.mu_p, self.teacher_cov, sigma)
        m0, _ = self.sampling_law(sigma)
        G = M_q - M_p
        mu_y = G @ m0 + k_q - k_p
        return mu_y, G


# --------------------------------------------------------------------------------------------------
# E d(y) for y ~ N(mu, C): closed forms (differentiable in mu, C)
# --------------------------------------------------------------------------------------------------


def _phi(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)


def _Phi(t: Tensor) -> Tensor:
    return torch.special.ndtr(t)


def expect_l2(mu: Tensor, C: Tensor) -> Tensor:
    return mu @ mu + torch.diagonal(C).sum()


def expect_lp(mu: Tensor, C: Tensor, alpha: int) -> Tensor:
    """sum_i E Y_i^alpha, Y_i ~ N(mu_i, v_i), alpha even: sum_k binom(alpha, 2k) mu^(alpha-2k) v^k (2k-1)!!."""
    assert alpha % 2 == 0
    v = torch.diagonal(C)
    total = torch.zeros((), dtype=mu.dtype)
    for k in range(alpha // 2 + 1):
        dfact = math.prod(range(2 * k - 1, 0, -2)) if k > 0 else 1
        total = total + (math.comb(alpha, 2 * k) * dfact * mu ** (alpha - 2 * k) * v**k).sum()
    return total


def expect_exp_l2(mu: Tensor, C: Tensor, beta: float) -> Tensor:
    """E exp(beta ||Y||^2) - 1 = det(I - 2 beta C)^{-1/2} exp(beta mu^T (I - 2 beta C)^{-1} mu) - 1."""
    eye = torch.eye(mu.shape[0], dtype=mu.dtype)
    B = eye - 2 * beta * C
    assert torch.linalg.eigvalsh(B.detach()).min() > 0, "beta too large: E exp(beta ||y||^2) diverges"
    quad = beta * mu @ torch.linalg.solve(B, mu)
    return torch.exp(quad - 0.5 * torch.logdet(B)) - 1


def _expect_pos_part_sq(m: Tensor, s: Tensor, a: float) -> Tensor:
    """E[(Y - a)_+^2], Y ~ N(m, s^2)."""
    t = (m - a) / s
    return ((m - a) ** 2 + s**2) * _Phi(t) + (m - a) * s * _phi(t)


def expect_huber(mu: Tensor, C: Tensor, delta: float) -> Tensor:
    """sum_i E h(Y_i), using h(y) = y^2/2 - (|y| - delta)_+^2 / 2."""
    s = torch.diagonal(C).sqrt()
    ey2 = mu**2 + s**2
    tails = _expect_pos_part_sq(mu, s, delta) + _expect_pos_part_sq(-mu, s, delta)
    return (0.5 * ey2 - 0.5 * tails).sum()


def expect_l1(mu: Tensor, C: Tensor) -> Tensor:
    """sum_i E|Y_i| (folded normal): s 2 phi(m/s) + m (2 Phi(m/s) - 1)."""
    s = torch.diagonal(C).sqrt()
    t = mu / s
    return (2 * s * _phi(t) + mu * (2 * _Phi(t) - 1)).sum()


def gauss_hermite_nodes(dim: int, n: int) -> tuple[Tensor, Tensor]:
    """Tensor-product nodes xi [n^dim, dim] and weights w [n^dim] with sum w f(xi) ~= E_{xi ~ N(0, I)} f(xi)."""
    x1, w1 = np.polynomial.hermite_e.hermegauss(n)
    w1 = w1 / math.sqrt(2 * math.pi)
    grids = np.meshgrid(*([x1] * dim), indexing="ij")
    wgrid = np.meshgrid(*([w1] * dim), indexing="ij")
    xi = np.stack([g.ravel() for g in grids], axis=1)
    w = np.prod(np.stack([g.ravel() for g in wgrid], axis=1), axis=1)
    return torch.tensor(xi, dtype=DT), torch.tensor(w, dtype=DT)


def expect_quadrature(d: Callable[[Tensor], Tensor], mu: Tensor, G: Tensor, L0: Tensor, n: int = 64) -> Tensor:
    """E d(mu + G L0 xi), xi ~ N(0, I), by tensor-product Gauss-Hermite quadrature."""
    xi, w = gauss_hermite_nodes(mu.shape[0], n)
    y = mu + xi @ (G @ L0).T
    return (w * d(y)).sum()


# --------------------------------------------------------------------------------------------------
# The two sides of the identity
# --------------------------------------------------------------------------------------------------


def true_divergence(toy: Toy, A: Tensor, b: Tensor, sigma: float, spec: dict) -> Tensor:
    """Div(A, b) = E_{x ~ pi fixed} d(D_{q,(A,b)}(x) - D_p(x)), exactly (closed form or quadrature)."""
    mu_y, G = toy.y_law(A, b, sigma)
    _, Sigma0 = toy.sampling_law(sigma)
    C = G @ Sigma0 @ G.T
    name = spec["name"]
    if name == "l2":
        return expect_l2(mu_y, C)
    if name == "lp":
        return expect_lp(mu_y, C, spec["alpha"])
    if name == "exp-lp":
        assert spec.get("alpha", 2) == 2
        return expect_exp_l2(mu_y, C, spec["beta"])
    if name == "huber":
        return expect_huber(mu_y, C, spec["delta"])
    if name == "l1":
        return expect_l1(mu_y, C)
    if name == "pseudo-huber":
        c = spec["c"]
        L0 = torch.linalg.cholesky(Sigma0)
        d = lambda y: torch.sqrt(y.pow(2).sum(1) + c**2) - c  # noqa: E731
        return expect_quadrature(d, mu_y, G, L0, n=spec.get("quad_n", 64))
    raise ValueError(name)


def true_gradient(toy: Toy, sigma: float, spec: dict) -> Tensor:
    """Flattened (grad_A, grad_b) of Div at theta_0 = (A0, b0)."""
    A = toy.A0.detach().clone().requires_grad_(True)
    b = toy.b0.detach().clone().requires_grad_(True)
    div = true_divergence(toy, A, b, sigma, spec)
    gA, gb = torch.autograd.grad(div, (A, b))
    return torch.cat([gA.reshape(-1), gb])


@dataclass
class MCGradient:
    grad: Tensor  # flattened (grad_A, grad_b), the mean over samples
    stderr: Tensor  # per-component standard error of that mean


def sim_mc_gradient(
    toy: Toy,
    sigma: float,
    d_prime: Callable[[Tensor], Tensor],
    n: int,
    seed: int,
    variant: str = "full",
    chunk: int = 250_000,
) -> MCGradient:
    """Monte Carlo gradient of simcli's SIM generator loss wrt (A, b) at (A0, b0).

    variant:
      "full"          nothing detached except the frozen denoisers' parameters (the correct SIM loss);
      "detach_x"      x detached before entering both denoisers (networks effectively under no_grad);
      "detach_dprime" d'(y) treated as a constant.
    (Other partial detachments, e.g. of the pseudo-Huber normaliser only, are expressed through d_prime.)
    Per-sample gradients are obtained from dL/dx0 (theta enters only through x0 = A z + b), which gives the
    standard error of the estimate for free.
    """
    assert variant in ("full", "detach_x", "detach_dprime"), variant
    g = torch.Generator().manual_seed(seed)
    D = toy.dim
    A = toy.A0.detach().clone().requires_grad_(True)
    b = toy.b0.detach().clone().requires_grad_(True)
    sum_g = torch.zeros(D * D + D, dtype=DT)
    sum_g2 = torch.zeros(D * D + D, dtype=DT)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        z = torch.randn(m, D, generator=g, dtype=DT)
        eps = torch.randn(m, D, generator=g, dtype=DT)
        x0 = z @ A.T + b
        x = x0 + sigma * eps
        x_in = x.detach() if variant == "detach_x" else x
        online = toy.online_denoiser(x_in, sigma)
        teacher = toy.teacher_denoiser(x_in, sigma)
        dp = d_prime
        if variant == "detach_dprime":
            dp = lambda y: d_prime(y).detach()  # noqa: E731
        per_sample = sim_generator_loss(x0, online, teacher, dp)
        gx0, gA, gb = torch.autograd.grad(per_sample.sum(), (x0, A, b))
        # per-sample gradients: dL_n/dA = g_n z_n^T, dL_n/db = g_n
        per = torch.cat([(gx0[:, :, None] * z[:, None, :]).reshape(m, -1), gx0], dim=1)
        # consistency: the autograd gradient wrt (A, b) is the sum of the per-sample ones
        assert torch.allclose(per.sum(0), torch.cat([gA.reshape(-1), gb]), rtol=1e-9, atol=1e-9)
        sum_g += per.sum(0)
        sum_g2 += per.pow(2).sum(0)
        done += m
    mean = sum_g / n
    var = (sum_g2 / n - mean**2).clamp_min(0.0)  # constant per-sample gradients give ~-1e-17
    return MCGradient(mean, (var / n).sqrt())


def rel_err(est: Tensor, true: Tensor) -> float:
    return float((est - true).norm() / true.norm())


def l1_boundary_term(toy: Toy, sigma: float) -> Tensor:
    """The term the pathwise (autograd) SIM-l1 surrogate drops: d'(y) = sign(y) has derivative 2 delta(y).

    Dropped = E[ -sum_i 2 delta(y_i(x)) (D_psi(x) - x0)_i  grad_x y_i(x)^T dx/dtheta ].
    With y = mu_y + G (x - m0): grad_x y_i = G_i (row i). For theta = b, dx/db = I and
    E[(D_psi - x0)_i | x] = 0 (D_psi is the exact posterior mean), so the b-part vanishes. For theta = A_jk,
    dx/dA_jk = e_j z_k and E[(D_psi - x0)_i z_k | x] = -Cov(x0_i, z_k | x) = -(A0 Cov(z | x))_ik, a constant,
    so Dropped_{A_jk} = 2 sum_i G_ij p_{y_i}(0) (A0 (I - A0^T Sigma0^{-1} A0))_ik, with p_{y_i} the N(mu_i,
    (G Sigma0 G^T)_ii) density of y_i. Returned flattened as (A part, b part = 0).
    """
    A0, b0 = toy.A0.detach(), toy.b0.detach()
    mu_y, G = toy.y_law(A0, b0, sigma)
    _, Sigma0 = toy.sampling_law(sigma)
    v = torch.diagonal(G @ Sigma0 @ G.T)
    dens0 = torch.exp(-0.5 * mu_y**2 / v) / torch.sqrt(2 * math.pi * v)  # [D]
    cov_z_given_x = torch.eye(toy.dim, dtype=DT) - A0.T @ torch.linalg.solve(Sigma0, A0)
    Cxz = A0 @ cov_z_given_x  # Cov(x0, z | x) [i, k]
    dropped_A = 2 * torch.einsum("ij,i,ik->jk", G, dens0, Cxz)
    return torch.cat([dropped_A.reshape(-1), torch.zeros(toy.dim, dtype=DT)])
