"""Distances d(y) and their closed-form gradients d'(y) (SIM Table 4, sim-method.md section 4)."""

from __future__ import annotations

import math

import pytest
import torch

from simcli.distill import distances as dist
from simcli.distill.distances import DISTANCE_NAMES, default_pseudo_huber_c, make_distance

DT = torch.float64
SHAPES = [(5, 3, 2, 2), (7, 6)]


def _t(v):
    return torch.tensor(v, dtype=DT)


def _autograd_dprime(d, y):
    y = y.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(y).sum(), y)
    return g


def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=DT)


# (name, make_distance kwargs, scale of random y): scales keep every regime in play (both Huber pieces,
# pseudo-Huber normaliser neither ~c nor ~||y||, exp-lp's exponent moderate)
SMOOTH_CASES = [
    ("pseudo-huber", dict(pseudo_huber_c=0.03), 0.02),
    ("pseudo-huber", dict(pseudo_huber_c=1.5), 1.0),
    ("l2", {}, 1.0),
    ("huber", dict(huber_delta=0.7), 1.0),
    ("huber", dict(huber_delta=1.0), 1.0),
    ("lp", dict(lp_alpha=4), 1.0),
    ("lp", dict(lp_alpha=6), 0.8),
    ("exp-lp", dict(exp_lp_alpha=2, exp_lp_beta=0.05), 1.0),
    ("exp-lp", dict(exp_lp_alpha=4, exp_lp_beta=0.02), 1.0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=["image", "flat"])
@pytest.mark.parametrize("name,kw,scale", SMOOTH_CASES)
def test_dprime_equals_autograd_of_d(name, kw, scale, shape):
    D = make_distance(name, **kw)
    y = _rand(shape, seed=sum(map(ord, name)) + len(shape), scale=scale)
    if name == "huber":
        delta = kw["huber_delta"]
        assert ((y.abs() - delta).abs() > 1e-3).all()  # away from the kinks
        assert (y.abs() > delta).any() and (y.abs() < delta).any()  # both pieces exercised
    closed = D.d_prime(y)
    assert closed.shape == y.shape
    torch.testing.assert_close(closed, _autograd_dprime(D.d, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=["image", "flat"])
def test_l1_dprime_is_sign_away_from_zero(shape):
    D = make_distance("l1")
    y = _rand(shape, seed=4)
    assert (y.abs() > 1e-4).all()
    assert torch.equal(D.d_prime(y), torch.sign(y))
    torch.testing.assert_close(D.d_prime(y), _autograd_dprime(D.d, y), rtol=0, atol=0)


def test_dprime_is_per_sample_for_norm_based_distances():
    """pseudo-Huber's and exp-lp's normalisers use each sample's own norm, not the batch's."""
    y = _t([[3.0, -4.0], [0.0, 1.0]])
    ph = make_distance("pseudo-huber", pseudo_huber_c=12.0)
    torch.testing.assert_close(ph.d_prime(y), _t([[3 / 13, -4 / 13], [0.0, 1 / math.sqrt(145)]]), rtol=1e-14, atol=0)
    ex = make_distance("exp-lp", exp_lp_alpha=2, exp_lp_beta=0.1)
    expected = _t([[2 * 0.1 * math.exp(2.5) * 3, 2 * 0.1 * math.exp(2.5) * -4], [0.0, 2 * 0.1 * math.exp(0.1)]])
    torch.testing.assert_close(ex.d_prime(y), expected, rtol=1e-14, atol=0)


# d at explicit values, written out by hand: y = (3, -4) in sample 0, (0.5, 0, -0.25) as image-shaped sample
def test_d_closed_forms_at_explicit_values():
    y = _t([[3.0, -4.0]])
    assert float(dist.l2(y)) == 25.0
    assert float(dist.l1(y)) == 7.0
    assert float(dist.lp(y, alpha=4)) == 81.0 + 256.0
    assert float(dist.lp(y, alpha=6)) == 729.0 + 4096.0
    assert float(dist.pseudo_huber(y, c=12.0)) == pytest.approx(1.0, abs=1e-14)  # sqrt(25+144) - 12
    assert float(dist.pseudo_huber(y, c=0.03)) == pytest.approx(math.sqrt(25.0009) - 0.03, rel=1e-14)
    # Huber, delta = 1: both entries linear: (3 - 0.5) + (4 - 0.5)
    assert float(dist.huber(y, delta=1.0)) == pytest.approx(6.0, abs=1e-14)
    # delta = 3.5: 3 quadratic (4.5), 4 linear: 3.5 (4 - 1.75) = 7.875
    assert float(dist.huber(y, delta=3.5)) == pytest.approx(4.5 + 7.875, abs=1e-14)
    # delta = 5: both quadratic
    assert float(dist.huber(y, delta=5.0)) == pytest.approx(12.5, abs=1e-14)
    assert float(dist.exp_lp(y, alpha=2, beta=0.1)) == pytest.approx(math.exp(2.5) - 1, rel=1e-14)
    assert float(dist.exp_lp(y, alpha=4, beta=0.01)) == pytest.approx(math.exp(3.37) - 1, rel=1e-14)

    img = _t([0.5, 0.0, -0.25, 0.0]).reshape(1, 1, 2, 2)
    assert float(dist.l2(img)) == 0.3125
    assert float(dist.l1(img)) == 0.75
    assert float(dist.pseudo_huber(img, c=0.5)) == pytest.approx(math.sqrt(0.5625) - 0.5, abs=1e-15)
    assert float(dist.huber(img, delta=0.3)) == pytest.approx(0.3 * (0.5 - 0.15) + 0.5 * 0.0625, abs=1e-15)


def test_dprime_closed_forms_at_explicit_values():
    y = _t([[3.0, -4.0]])
    torch.testing.assert_close(dist.l2_grad(y), _t([[6.0, -8.0]]), rtol=0, atol=0)
    torch.testing.assert_close(dist.lp_grad(y, alpha=4), _t([[108.0, -256.0]]), rtol=0, atol=0)
    torch.testing.assert_close(dist.huber_grad(y, delta=3.5), _t([[3.0, -3.5]]), rtol=0, atol=0)
    torch.testing.assert_close(dist.l1_grad(_t([[2.0, -0.1, 0.0]])), _t([[1.0, -1.0, 0.0]]), rtol=0, atol=0)


@pytest.mark.parametrize("name", DISTANCE_NAMES)
def test_d_is_zero_at_zero_and_positive_elsewhere(name):
    D = make_distance(name, pseudo_huber_c=0.03, huber_delta=1.0, lp_alpha=4, exp_lp_alpha=2, exp_lp_beta=0.5)
    zero = torch.zeros(3, 3, 2, 2, dtype=DT)
    assert torch.equal(D.d(zero), torch.zeros(3, dtype=DT))
    y = _rand((64, 3, 2, 2), seed=9)
    # include tiny perturbations of zero (one entry) as well as generic ones
    tiny = torch.zeros(4, 3, 2, 2, dtype=DT)
    tiny[0, 0, 0, 0] = 1e-3
    tiny[1, 2, 1, 1] = -1e-3
    tiny[2, 1, 0, 1] = 1e-2
    tiny[3] = 1e-3
    vals = D.d(torch.cat([y, tiny]))
    assert vals.shape == (68,)
    assert (vals > 0).all()
    # d'(0) = 0 for every distance (l1 included: sign(0) = 0)
    assert torch.equal(D.d_prime(zero), zero)


def test_default_pseudo_huber_c():
    assert default_pseudo_huber_c(3072) == pytest.approx(0.00054 * math.sqrt(3072), rel=1e-12)
    assert default_pseudo_huber_c(3072) == pytest.approx(0.0299, abs=5e-5)
    assert default_pseudo_huber_c(2) == pytest.approx(0.00054 * math.sqrt(2), rel=1e-12)


def test_make_distance_binds_constants():
    y = _t([[3.0, -4.0]])
    assert float(make_distance("pseudo-huber", pseudo_huber_c=12.0).d(y)) == pytest.approx(1.0, abs=1e-14)
    assert float(make_distance("huber", huber_delta=5.0).d(y)) == pytest.approx(12.5, abs=1e-14)
    assert float(make_distance("lp", lp_alpha=6).d(y)) == 729.0 + 4096.0
    assert float(make_distance("exp-lp", exp_lp_alpha=4, exp_lp_beta=0.01).d(y)) == pytest.approx(
        math.exp(3.37) - 1, rel=1e-14
    )
    constants = dict(pseudo_huber_c=0.03, huber_delta=1.0, lp_alpha=4, exp_lp_alpha=2, exp_lp_beta=1.0)
    for name in DISTANCE_NAMES:
        D = make_distance(name, **constants)
        assert D.name == name


@pytest.mark.parametrize("bad", ["L2", "pseudo_huber", "huber-loss", "", "kl"])
def test_make_distance_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="unknown distance"):
        make_distance(bad)
