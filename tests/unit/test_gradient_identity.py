"""The key correctness test: simcli's SIM generator loss has the gradient of the divergence it claims.

Setup (see tests/helpers/gaussian_toy.py): Gaussian teacher N(mu_p, diag(s_p^2)) and affine Gaussian generator
x0 = A z + b in D = 2 (one check in D = 3). Every denoiser is exact. The online model is the generator's
exact denoiser with theta frozen at (A0, b0), so the loss is evaluated exactly where Theorem 3.1 applies.

Claim tested: for x = x0 + sigma eps, x0 = A z + b, with gradients flowing through x0 and x into BOTH
denoisers' inputs and into d'(y),

    grad_theta E_{z,eps}[ sim_generator_loss(x0, D_online(x), D_teacher(x), d') ]
        = grad_theta Div(theta),  Div(theta) = E_{x ~ q_{sg[theta]}} d( D_{q,theta}(x) - D_teacher(x) ).

The left side is Monte Carlo (float64, fixed seed); its standard error is computed from the per-sample
gradients and asserted to be at most a quarter of the tolerance. The right side is exact: y is Gaussian
under the frozen sampling law, so E d(y) has a closed form (Gauss-Hermite quadrature for pseudo-Huber),
differentiated by autograd. Tolerance: 2% relative, ||g_mc - g_true|| / ||g_true||.

The same check must FAIL (> 20%) when the networks' inputs are detached or when d'(y) is detached.
For l1, whose d' = sign is discontinuous, the pathwise surrogate is exact only where y keeps its sign;
in general it is biased, and the bias is exactly the dropped delta-function term (tested below).
"""

from __future__ import annotations

import pytest
import torch

from simcli.distill.distances import make_distance, pseudo_huber
from tests.helpers.gaussian_toy import (
    DT,
    Toy,
    expect_exp_l2,
    expect_huber,
    expect_l1,
    expect_l2,
    expect_lp,
    expect_quadrature,
    gaussian_denoiser,
    l1_boundary_term,
    rel_err,
    sim_mc_gradient,
    true_gradient,
)

TOL = 0.02  # the identity must hold to 2% relative
MAX_NOISE = TOL / 4  # the MC standard error (relative) must be well below the tolerance
MIN_WRONG = 0.20  # a wrong gradient structure must miss by more than this
N_FULL = 1_500_000  # MC samples for the correctness checks (noise <= 0.5% for every case below)
N_WRONG = 200_000  # MC samples for the must-fail checks (noise ~1%, errors are 20-300%)


def _t(v):
    return torch.tensor(v, dtype=DT)


# Teacher and frozen generator: the covariance mismatch (not just the mean) is large enough that every
# term of the gradient matters, so both wrong variants miss by > 30% at every sigma.
TOY = Toy(mu_p=_t([0.5, -0.3]), s_p=_t([0.8, 1.3]), A0=_t([[1.1, 0.3], [-0.2, 0.6]]), b0=_t([0.2, -0.1]))

# Per-sigma constants, chosen against the scale of y = D_q - D_p at that sigma (rms ||y|| is 0.12, 0.52,
# 0.58; per-coordinate sd of y about 0.07-0.09, 0.27-0.41, 0.25-0.43):
#   pseudo-Huber c ~ rms ||y||, so the normaliser sqrt(||y||^2 + c^2) is neither ~c nor ~||y||;
#   Huber delta ~ sd(y_i), so 30-47% of coordinates fall in the linear part;
#   exp-lp beta with 4 beta lambda_max(Cov y) <= 0.47, so exp stays moderate and the MC variance is finite.
PARAMS = {
    0.3: dict(c=0.12, delta=0.08, beta=10.0),
    1.0: dict(c=0.5, delta=0.3, beta=0.7),
    2.0: dict(c=0.6, delta=0.35, beta=0.6),
}
SIGMAS = tuple(PARAMS)
SMOOTH = ("pseudo-huber", "l2", "huber", "lp", "exp-lp")


def spec_for(name: str, sigma: float) -> dict:
    p = PARAMS[sigma]
    return {
        "pseudo-huber": dict(name=name, c=p["c"]),
        "l2": dict(name=name),
        "huber": dict(name=name, delta=p["delta"]),
        "lp": dict(name=name, alpha=4),
        "exp-lp": dict(name=name, alpha=2, beta=p["beta"]),
        "l1": dict(name=name),
    }[name]


def distance_for(spec: dict):
    return make_distance(
        spec["name"],
        pseudo_huber_c=spec.get("c", 0.03),
        huber_delta=spec.get("delta", 1.0),
        lp_alpha=spec.get("alpha", 4),
        exp_lp_alpha=spec.get("alpha", 2),
        exp_lp_beta=spec.get("beta", 1.0),
    )


# --------------------------------------------------------------------------------------------------
# The toy itself is right (so that agreement below means something)
# --------------------------------------------------------------------------------------------------


def test_exact_denoiser_is_the_posterior_mean():
    """Least-squares regression of x0 on x (the posterior mean is affine here) recovers gaussian_denoiser."""
    sigma = 0.7
    g = torch.Generator().manual_seed(11)
    n = 400_000
    z = torch.randn(n, 2, generator=g, dtype=DT)
    x0 = z @ TOY.A0.T + TOY.b0
    x = x0 + sigma * torch.randn(n, 2, generator=g, dtype=DT)
    feats = torch.cat([x, torch.ones(n, 1, dtype=DT)], 1)
    coef = torch.linalg.lstsq(feats, x0).solution  # [3, 2]
    probe = _t([[0.3, -1.2], [1.5, 0.4], [-0.8, 0.9]])
    fitted = torch.cat([probe, torch.ones(3, 1, dtype=DT)], 1) @ coef
    exact = TOY.online_denoiser(probe, sigma)
    assert torch.allclose(fitted, exact, atol=5e-3), (fitted, exact)
    # and the formula reduces to the familiar 1-d shrinkage for a diagonal covariance
    out = gaussian_denoiser(_t([[2.0, -1.0]]), _t([1.0, 0.0]), torch.diag(_t([3.0, 1.0])), 1.0)
    assert torch.allclose(out, _t([[1.0 + 0.75 * 1.0, 0.5 * -1.0]]), rtol=0, atol=1e-14)


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_closed_form_expectations_match_monte_carlo(sigma):
    """Each E d(y) used as ground truth agrees with a plain MC average of d(y) over the fixed law of x."""
    mu_y, G = TOY.y_law(TOY.A0, TOY.b0, sigma)
    m0, S0 = TOY.sampling_law(sigma)
    C = G @ S0 @ G.T
    g = torch.Generator().manual_seed(3)
    x = m0 + torch.randn(1_000_000, 2, generator=g, dtype=DT) @ torch.linalg.cholesky(S0).T
    y = TOY.online_denoiser(x, sigma) - TOY.teacher_denoiser(x, sigma)
    p = PARAMS[sigma]
    cases = {
        "l2": expect_l2(mu_y, C),
        "lp": expect_lp(mu_y, C, 4),
        "exp-lp": expect_exp_l2(mu_y, C, p["beta"]),
        "huber": expect_huber(mu_y, C, p["delta"]),
        "l1": expect_l1(mu_y, C),
    }
    for name, exact in cases.items():
        vals = distance_for(spec_for(name, sigma)).d(y)
        se = vals.std() / len(vals) ** 0.5
        assert abs(vals.mean() - exact) < 4 * se, (name, float(vals.mean()), float(exact), float(se))
    # pseudo-Huber's quadrature: against MC, and converged in the number of nodes
    c = p["c"]
    L0 = torch.linalg.cholesky(S0)
    quad = expect_quadrature(lambda v: pseudo_huber(v, c=c), mu_y, G, L0, n=64)
    quad_fine = expect_quadrature(lambda v: pseudo_huber(v, c=c), mu_y, G, L0, n=128)
    vals = pseudo_huber(y, c=c)
    assert abs(vals.mean() - quad) < 4 * vals.std() / len(vals) ** 0.5
    assert abs(quad - quad_fine) < 1e-9 * quad
    # quadrature is exact for the polynomial l2 / lp: a cross-check of the closed forms
    assert torch.allclose(expect_quadrature(lambda v: v.pow(4).sum(1), mu_y, G, L0, n=8), cases["lp"], rtol=1e-10)
    assert torch.allclose(expect_quadrature(lambda v: v.pow(2).sum(1), mu_y, G, L0, n=4), cases["l2"], rtol=1e-10)


def test_pseudo_huber_true_gradient_quadrature_converged():
    for sigma in SIGMAS:
        spec = spec_for("pseudo-huber", sigma)
        coarse = true_gradient(TOY, sigma, dict(spec, quad_n=64))
        fine = true_gradient(TOY, sigma, dict(spec, quad_n=128))
        assert rel_err(coarse, fine) < 1e-8


# --------------------------------------------------------------------------------------------------
# The identity, and its failure when the gradient structure is wrong
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", SMOOTH)
def test_sim_gradient_equals_divergence_gradient(name, sigma):
    spec = spec_for(name, sigma)
    true = true_gradient(TOY, sigma, spec)
    assert true.norm() > 1e-3
    mc = sim_mc_gradient(TOY, sigma, distance_for(spec).d_prime, N_FULL, seed=2024)
    noise = float(mc.stderr.norm() / true.norm())
    assert noise < MAX_NOISE, f"MC noise {noise:.4f} too large for a {TOL} check"
    err = rel_err(mc.grad, true)
    assert err < TOL, f"{name} sigma={sigma}: relative error {err:.4f} (noise {noise:.4f})"


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", SMOOTH)
def test_detached_network_inputs_break_the_identity(name, sigma):
    """Networks under no_grad (x detached before both denoisers): the DMD/DI-style direction, not SIM's."""
    spec = spec_for(name, sigma)
    true = true_gradient(TOY, sigma, spec)
    mc = sim_mc_gradient(TOY, sigma, distance_for(spec).d_prime, N_WRONG, seed=7, variant="detach_x")
    assert rel_err(mc.grad, true) > MIN_WRONG


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", SMOOTH)
def test_detached_dprime_breaks_the_identity(name, sigma):
    """d'(y) treated as a constant: drops the term through y's dependence on x (about half the gradient)."""
    spec = spec_for(name, sigma)
    true = true_gradient(TOY, sigma, spec)
    dp = distance_for(spec).d_prime
    wrong_dp = sim_mc_gradient(TOY, sigma, dp, N_WRONG, seed=7, variant="detach_dprime").grad
    wrong_x = sim_mc_gradient(TOY, sigma, dp, N_WRONG, seed=7, variant="detach_x").grad
    assert rel_err(wrong_dp, true) > MIN_WRONG
    assert rel_err(wrong_dp, wrong_x) > 0.1  # and the two wrong variants are different mistakes


@pytest.mark.parametrize("sigma", SIGMAS)
def test_detached_pseudo_huber_normaliser_is_biased(sigma):
    """Only sqrt(||y||^2 + c^2) detached: a smaller but clear bias (7-11% here, ~10x the MC noise)."""
    c = PARAMS[sigma]["c"]
    true = true_gradient(TOY, sigma, spec_for("pseudo-huber", sigma))

    def dp_detached_norm(y):
        return y / torch.sqrt(y.pow(2).flatten(1).sum(1) + c**2).detach().reshape(-1, *([1] * (y.ndim - 1)))

    mc = sim_mc_gradient(TOY, sigma, dp_detached_norm, 4 * N_WRONG, seed=7)
    assert float(mc.stderr.norm() / true.norm()) < 0.01
    assert rel_err(mc.grad, true) > 0.05


def test_sim_gradient_identity_in_3d_pseudo_huber():
    toy3 = Toy(
        mu_p=_t([0.4, -0.2, 0.1]),
        s_p=_t([0.9, 1.2, 0.6]),
        A0=_t([[1.0, 0.2, -0.1], [-0.3, 0.7, 0.2], [0.1, 0.0, 0.9]]),
        b0=_t([0.1, 0.0, 0.3]),
    )
    sigma = 1.0
    spec = dict(name="pseudo-huber", c=0.5, quad_n=40)
    true = true_gradient(toy3, sigma, spec)
    assert rel_err(true, true_gradient(toy3, sigma, dict(spec, quad_n=60))) < 1e-8
    dp = distance_for(spec).d_prime
    mc = sim_mc_gradient(toy3, sigma, dp, N_FULL, seed=5)
    assert float(mc.stderr.norm() / true.norm()) < MAX_NOISE
    assert rel_err(mc.grad, true) < TOL
    wrong = sim_mc_gradient(toy3, sigma, dp, N_WRONG, seed=5, variant="detach_dprime")
    assert rel_err(wrong.grad, true) > MIN_WRONG


# --------------------------------------------------------------------------------------------------
# l1: exact only where y keeps its sign
# --------------------------------------------------------------------------------------------------


def test_l1_identity_holds_when_y_keeps_its_sign():
    """Generator covariance = teacher covariance: y = D_q - D_p is the same constant for every x, so
    sign(y) never jumps and the SIM-l1 surrogate is exact. A0 = diag(s_p) R (R a rotation) keeps A full.

    True gradient: Div = E_x |mu_y(theta) + G(theta)(x - m0)| with G(theta0) = 0, so
    grad Div = sign(mu_y0)^T grad mu_y(theta) (E[x - m0] = 0 kills the G term).
    """
    ang = torch.tensor(0.5, dtype=DT)
    R = torch.stack([torch.stack([ang.cos(), -ang.sin()]), torch.stack([ang.sin(), ang.cos()])])
    toy = Toy(mu_p=TOY.mu_p, s_p=TOY.s_p, A0=torch.diag(TOY.s_p) @ R, b0=_t([-0.3, 0.9]))
    for sigma in SIGMAS:
        mu0, G0 = toy.y_law(toy.A0, toy.b0, sigma)
        assert G0.abs().max() < 1e-12 and mu0.abs().min() > 0.05  # y constant, clearly non-zero

        A = toy.A0.clone().requires_grad_(True)
        b = toy.b0.clone().requires_grad_(True)
        mu_y, _ = toy.y_law(A, b, sigma)
        gA, gb = torch.autograd.grad(torch.sign(mu0) @ mu_y, (A, b))
        true = torch.cat([gA.reshape(-1), gb])
        assert true.norm() > 0.1

        mc = sim_mc_gradient(toy, sigma, make_distance("l1").d_prime, N_WRONG, seed=13)
        assert float(mc.stderr.norm() / true.norm()) < MAX_NOISE
        assert rel_err(mc.grad, true) < TOL


@pytest.mark.parametrize("sigma", SIGMAS)
def test_l1_surrogate_is_biased_when_y_changes_sign(sigma):
    """SIM-l1 is NOT an exact gradient in general. Do not mistake it for one.

    With d'(y) = sign(y), the autograd (pathwise) gradient of -sign(y(x))^T (D_psi(x) - x0) treats the
    derivative of sign as 0 and drops 2 delta(y_i) grad_x y_i . dx/dtheta, a term concentrated where
    y_i(x) = 0. The loss *value* still has the right gradient (Tweedie's identity holds for any bounded
    d'), but autograd does not compute it. Here:
      * the surrogate misses the true gradient by far more than 20% (35-50% in this toy);
      * adding the dropped term, computed analytically (gaussian_toy.l1_boundary_term), closes the gap to
        within the 2% tolerance, so the bias is exactly that term;
      * the dropped term vanishes for theta = b (E[D_psi - x0 | x] = 0 when the online model is exact), so
        the bias lives entirely in the A (spread) part of the gradient.
    """
    true = true_gradient(TOY, sigma, spec_for("l1", sigma))
    mc = sim_mc_gradient(TOY, sigma, make_distance("l1").d_prime, N_FULL // 2, seed=17)
    assert float(mc.stderr.norm() / true.norm()) < MAX_NOISE
    assert rel_err(mc.grad, true) > MIN_WRONG

    boundary = l1_boundary_term(TOY, sigma)
    assert rel_err(mc.grad + boundary, true) < TOL
    assert float((mc.grad[4:] - true[4:]).norm() / true.norm()) < TOL  # b part unbiased
