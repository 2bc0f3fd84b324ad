"""Generator and online losses (simcli.distill.losses) on explicit numbers and through frozen networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simcli.distill.distances import make_distance
from simcli.distill.losses import (
    di_generator_loss,
    edm_weight,
    online_dsm_loss,
    sid_generator_loss,
    sid_normaliser,
    sim_generator_loss,
)

DT = torch.float64
SHAPE = (6, 3, 2, 2)  # [B, C, H, W]
DIM = 12


def _t(v):
    return torch.tensor(v, dtype=DT)


class Denoiser(nn.Module):
    """A small random, sigma-conditioned denoiser D(x; sigma) = x + MLP([x, log sigma]) on image-shaped x."""

    def __init__(self, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the global RNG
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(DIM + 1, 32), nn.Tanh(), nn.Linear(32, DIM)).to(DT)

    def forward(self, x, sigma):
        h = torch.cat([x.flatten(1), sigma.log().reshape(-1, 1)], 1)
        return x + self.net(h).reshape(x.shape)


def _frozen(seed):
    return Denoiser(seed).requires_grad_(False).eval()


ONLINE, TEACHER = _frozen(1), _frozen(2)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*SHAPE, generator=g, dtype=DT)
    eps = torch.randn(*SHAPE, generator=g, dtype=DT)
    sigma = torch.exp(torch.randn(SHAPE[0], generator=g, dtype=DT))  # per-sample noise levels
    return x0, eps, sigma


def _outputs(x0, eps, sigma, online=ONLINE, teacher=TEACHER):
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps  # graph kept: gradients reach both networks' inputs
    return online(x, sigma), teacher(x, sigma)


def _per_sample_grad_x0(loss_fn, x0, eps, sigma):
    """Rows of d(sum_i L_i)/d x0 are the per-sample gradients (each L_i depends on x0_i only)."""
    x0 = x0.clone().requires_grad_(True)
    online, teacher = _outputs(x0, eps, sigma)
    (g,) = torch.autograd.grad(loss_fn(x0, online, teacher).sum(), x0)
    return g.flatten(1)


# --------------------------------------------------------------------------------------------------
# (a) SIM-l2 is SiD(alpha = 1) up to the per-sample weight 2w
# --------------------------------------------------------------------------------------------------


def test_sim_l2_and_sid_alpha1_values_differ_by_2w():
    x0, eps, sigma = _batch(3)
    online, teacher = _outputs(x0, eps, sigma)
    sim = sim_generator_loss(x0, online, teacher, make_distance("l2").d_prime)
    sid = sid_generator_loss(x0, online, teacher, alpha=1.0)
    w = (x0 - teacher).abs().flatten(1).mean(1)
    torch.testing.assert_close(sim, 2 * w * sid, rtol=1e-12, atol=1e-12)


def test_sim_l2_and_sid_alpha1_same_per_sample_gradient_direction_wrt_x0():
    x0, eps, sigma = _batch(4)
    l2 = make_distance("l2").d_prime
    g_sim = _per_sample_grad_x0(lambda a, o, t: sim_generator_loss(a, o, t, l2), x0, eps, sigma)
    g_sid = _per_sample_grad_x0(lambda a, o, t: sid_generator_loss(a, o, t, alpha=1.0), x0, eps, sigma)
    online, teacher = _outputs(x0, eps, sigma)
    w = (x0 - teacher).abs().flatten(1).mean(1)  # SiD's normaliser
    assert (g_sim.norm(dim=1) > 1e-3).all()
    cos = torch.nn.functional.cosine_similarity(g_sim, g_sid, dim=1)
    assert (cos > 1 - 1e-6).all(), cos
    torch.testing.assert_close(g_sid.norm(dim=1) / g_sim.norm(dim=1), 1 / (2 * w), rtol=1e-10, atol=0)
    torch.testing.assert_close(g_sid, g_sim / (2 * w[:, None]), rtol=1e-10, atol=1e-12)
    # the default alpha = 1.2 is a different direction (it is not SIM-l2)
    g_sid12 = _per_sample_grad_x0(lambda a, o, t: sid_generator_loss(a, o, t), x0, eps, sigma)
    assert (torch.nn.functional.cosine_similarity(g_sim, g_sid12, dim=1) < 1 - 1e-4).any()


def test_sim_l2_and_sid_alpha1_same_per_sample_gradient_wrt_generator_params():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        gen = nn.Linear(4, DIM).to(DT)  # x0 = G_theta(z)
    g = torch.Generator().manual_seed(6)
    z = torch.randn(4, 4, generator=g, dtype=DT)
    eps = torch.randn(4, *SHAPE[1:], generator=g, dtype=DT)
    sigma = _t([0.05, 0.4, 1.3, 7.0])
    l2 = make_distance("l2").d_prime

    def grads(i, loss_fn):
        x0 = gen(z[i : i + 1]).reshape(1, *SHAPE[1:])
        online, teacher = _outputs(x0, eps[i : i + 1], sigma[i : i + 1])
        loss = loss_fn(x0, online, teacher).sum()
        flat = torch.cat([p.flatten() for p in torch.autograd.grad(loss, list(gen.parameters()))])
        return flat, float((x0 - teacher).detach().abs().mean())

    for i in range(4):
        g_sim, w = grads(i, lambda a, o, t: sim_generator_loss(a, o, t, l2))
        g_sid, _ = grads(i, lambda a, o, t: sid_generator_loss(a, o, t, alpha=1.0))
        cos = torch.dot(g_sim, g_sid) / (g_sim.norm() * g_sid.norm())
        assert float(cos) > 1 - 1e-6
        assert float(g_sid.norm() / g_sim.norm()) == pytest.approx(1 / (2 * w), rel=1e-10)


# --------------------------------------------------------------------------------------------------
# (b) Diff-Instruct
# --------------------------------------------------------------------------------------------------


def test_di_gradient_is_exactly_online_minus_teacher_even_with_graph():
    x0, eps, sigma = _batch(7)
    online_net, teacher_net = Denoiser(1), Denoiser(2)  # parameters trainable on purpose
    x0 = x0.clone().requires_grad_(True)
    online, teacher = _outputs(x0, eps, sigma, online_net, teacher_net)
    assert online.requires_grad and teacher.requires_grad  # the networks carry graph
    di_generator_loss(x0, online, teacher).sum().backward()
    assert torch.equal(x0.grad, (online - teacher).detach())
    for p in list(online_net.parameters()) + list(teacher_net.parameters()):
        assert p.grad is None  # nothing flows into either network


def test_di_loss_value():
    x0 = _t([[1.0, 2.0], [0.0, -1.0]])
    online = _t([[0.5, 0.5], [1.0, 1.0]])
    teacher = _t([[0.0, 1.0], [2.0, 0.0]])
    # <online - teacher, x0>: (0.5*1 + -0.5*2) = -0.5 ; (-1*0 + 1*-1) = -1
    torch.testing.assert_close(di_generator_loss(x0, online, teacher), _t([-0.5, -1.0]), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# (c) online DSM loss and the EDM weight
# --------------------------------------------------------------------------------------------------


def test_edm_weight_explicit_values():
    sigma = _t([0.5, 1.0, 2.0, 0.1])
    # (sigma^2 + 0.25) / (0.25 sigma^2)
    expected = _t([0.5 / 0.0625, 1.25 / 0.25, 4.25 / 1.0, 0.26 / 0.0025])
    torch.testing.assert_close(edm_weight(sigma), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(edm_weight(_t([1.0]), sigma_data=1.0), _t([2.0]), rtol=1e-14, atol=0)


def test_online_dsm_loss_explicit_values():
    x0 = _t([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 3.0]])
    D = _t([[2.0, 4.0, 0.0], [0.5, -0.5, 1.0], [-1.0, 1.0, 3.0]])
    sigma = _t([1.0, 0.5, 2.0])
    # ||D - x0||^2 = 5, 1.5, 0 ; lambda = 5, 8, 4.25
    torch.testing.assert_close(online_dsm_loss(D, x0, sigma), _t([25.0, 12.0, 0.0]), rtol=1e-14, atol=0)
    # image-shaped samples reduce over all entries of a sample
    img_D = D.reshape(3, 3, 1, 1)
    img_x0 = x0.reshape(3, 3, 1, 1)
    torch.testing.assert_close(online_dsm_loss(img_D, img_x0, sigma), _t([25.0, 12.0, 0.0]), rtol=1e-14, atol=0)
    # its gradient wrt D is 2 lambda (D - x0)
    Dg = D.clone().requires_grad_(True)
    online_dsm_loss(Dg, x0, sigma).sum().backward()
    torch.testing.assert_close(Dg.grad, 2 * _t([5.0, 8.0, 4.25])[:, None] * (D - x0), rtol=1e-14, atol=0)
    # unweighted (the paper's text-to-image runs): lambda = 1
    torch.testing.assert_close(online_dsm_loss(D, x0, sigma, weighted=False), _t([5.0, 1.5, 0.0]), rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------------
# (d) SiD on hand-computed tiny tensors
# --------------------------------------------------------------------------------------------------


def test_sid_generator_loss_hand_computed():
    x0 = _t([[1.0, 2.0], [0.0, 0.0]])
    online = _t([[0.5, 1.0], [1.0, -1.0]])
    teacher = _t([[1.5, 1.0], [0.0, 0.0]])
    # sample 0: Delta = teacher - online = (1, 0); teacher - x0 = (0.5, -1); alpha = 1.2:
    #   (0.5 - 1.2, -1 - 0) = (-0.7, -1); Delta . that = -0.7; w = mean(|x0 - teacher|) = (0.5 + 1)/2 = 0.75
    # sample 1: Delta = (-1, 1); teacher - x0 = 0; -1.2 Delta = (1.2, -1.2); Delta . that = -2.4;
    #   w = 0 -> floored at 1e-5
    expected = _t([-0.7 / 0.75, -2.4 / 1e-5])
    torch.testing.assert_close(sid_generator_loss(x0, online, teacher), expected, rtol=1e-12, atol=0)  # alpha=1.2
    # alpha = 1: sample 0: (0.5 - 1, -1) . (1, 0) = -0.5; sample 1: -(1 + 1) = -2
    torch.testing.assert_close(
        sid_generator_loss(x0, online, teacher, alpha=1.0), _t([-0.5 / 0.75, -2.0 / 1e-5]), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(sid_normaliser(x0, teacher), _t([0.75, 1e-5]), rtol=1e-12, atol=0)
    # the normaliser is a constant: with network outputs fixed, d/dx0 = -Delta / w exactly
    x0g = x0.clone().requires_grad_(True)
    sid_generator_loss(x0g, online, teacher).sum().backward()
    torch.testing.assert_close(x0g.grad, _t([[-1.0 / 0.75, 0.0], [1.0 / 1e-5, -1.0 / 1e-5]]), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------------
# SIM loss: explicit value, and its exact relation to SiD(alpha = 1) for pseudo-Huber
# --------------------------------------------------------------------------------------------------


def test_sim_generator_loss_hand_computed():
    x0 = _t([[1.0, 0.0]])
    online = _t([[4.0, -4.0]])
    teacher = _t([[1.0, 0.0]])
    # y = (3, -4); online - x0 = (3, -4)
    ph = make_distance("pseudo-huber", pseudo_huber_c=12.0).d_prime  # y / 13
    torch.testing.assert_close(sim_generator_loss(x0, online, teacher, ph), _t([-25.0 / 13]), rtol=1e-14, atol=0)
    l2 = make_distance("l2").d_prime
    torch.testing.assert_close(sim_generator_loss(x0, online, teacher, l2, weight=0.5), _t([-25.0]), rtol=0, atol=0)
    w = _t([3.0])
    torch.testing.assert_close(sim_generator_loss(x0, online, teacher, l2, weight=w), _t([-150.0]), rtol=0, atol=0)


def test_sim_pseudo_huber_is_sid_alpha1_over_the_normaliser():
    """Exact per-sample value identity: SIM_PH(c) = w SiD_1 / sqrt(||y||^2 + c^2), y = D_psi - D_phi.

    Hence c SIM_PH -> w SiD_1 as c -> inf, with relative gap 1 - c / sqrt(||y||^2 + c^2) <= ||y||^2 / (2 c^2).
    (Only values: the gradients differ by the live normaliser's own term, which is the point of SIM.)
    """
    x0, eps, sigma = _batch(8)
    online, teacher = _outputs(x0, eps, sigma)
    y = online - teacher
    ynorm2 = y.flatten(1).pow(2).sum(1)
    sid1 = sid_generator_loss(x0, online, teacher, alpha=1.0)
    w = sid_normaliser(x0, teacher)
    for c in (0.03, 1.0, 100.0):
        sim = sim_generator_loss(x0, online, teacher, make_distance("pseudo-huber", pseudo_huber_c=c).d_prime)
        torch.testing.assert_close(sim, w * sid1 / torch.sqrt(ynorm2 + c**2), rtol=1e-12, atol=1e-14)
        gap = (c * sim / (w * sid1) - 1).abs()
        assert (gap <= ynorm2 / (2 * c**2) + 1e-12).all()
