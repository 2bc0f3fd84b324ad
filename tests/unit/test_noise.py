"""Noise-level distributions (simcli.distill.noise) and the Karras schedule they share with the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from simcli.distill.noise import sample_karras_uniform_sigma, sample_lognormal_sigma
from simcli.nets.schedule import karras_sigma
from simcli.sampling.heun import karras_sigmas

N = 200_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ---------------------------------------------------------------------------------------------- lognormal


@pytest.mark.parametrize(("p_mean", "p_std"), [(-1.2, 1.2), (-3.5, 2.5), (0.4, 0.3)])
def test_lognormal_log_has_the_asked_mean_and_std(p_mean, p_std):
    sigma = sample_lognormal_sigma(N, p_mean, p_std, generator=gen())
    assert sigma.shape == (N,) and (sigma > 0).all()
    log = sigma.double().log()
    # 5 standard errors: the mean's is p_std / sqrt(N), the sample std's about p_std / sqrt(2N)
    assert abs(log.mean().item() - p_mean) < 5 * p_std / math.sqrt(N)
    assert abs(log.std().item() - p_std) < 5 * p_std / math.sqrt(2 * N)


def test_lognormal_clipping_puts_the_tails_on_the_bounds():
    p_mean, p_std, lo, hi = -1.2, 1.2, 0.1, 2.0
    sigma = sample_lognormal_sigma(N, p_mean, p_std, generator=gen(1), sigma_min=lo, sigma_max=hi)
    assert sigma.min().item() == pytest.approx(lo, rel=1e-6) and sigma.max().item() == pytest.approx(hi, rel=1e-6)
    # the mass at each bound is the normal tail beyond it
    p_lo = normal_cdf((math.log(lo) - p_mean) / p_std)
    p_hi = 1 - normal_cdf((math.log(hi) - p_mean) / p_std)
    for p, at_bound in ((p_lo, sigma == sigma.min()), (p_hi, sigma == sigma.max())):
        assert abs(at_bound.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_lognormal_one_sided_clipping():
    unclipped = sample_lognormal_sigma(1000, 0.0, 2.0, generator=gen(2))
    low = sample_lognormal_sigma(1000, 0.0, 2.0, generator=gen(2), sigma_min=0.5)
    high = sample_lognormal_sigma(1000, 0.0, 2.0, generator=gen(2), sigma_max=0.5)
    assert torch.equal(low, unclipped.clamp(min=0.5)) and torch.equal(high, unclipped.clamp(max=0.5))
    assert unclipped.min() < 0.5 < unclipped.max()


# ---------------------------------------------------------------------------------------------- Karras schedule


@pytest.mark.parametrize(("sigma_min", "sigma_max", "rho"), [(0.002, 80.0, 7.0), (0.01, 5.0, 3.0)])
def test_karras_sigma_ends(sigma_min, sigma_max, rho):
    ends = karras_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64), sigma_min, sigma_max, rho)
    torch.testing.assert_close(ends, torch.tensor([sigma_max, sigma_min], dtype=torch.float64), rtol=1e-12, atol=0)


def test_karras_sigma_midpoint_closed_form():
    mid = karras_sigma(torch.tensor(0.5, dtype=torch.float64), 0.002, 80.0, 7.0)
    expected = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert mid.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("num_steps", [2, 5, 18])
def test_heun_schedule_is_karras_sigma_at_i_over_n_minus_1(num_steps):
    t = karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert t.dtype == torch.float64 and t.shape == (num_steps + 1,)
    frac = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    torch.testing.assert_close(t[:-1], karras_sigma(frac, 0.002, 80.0, 7.0), rtol=1e-14, atol=0)
    assert t[0].item() == pytest.approx(80.0, rel=1e-12) and t[-2].item() == pytest.approx(0.002, rel=1e-12)
    assert t[-1].item() == 0.0
    assert (t[:-1].diff() < 0).all()


def test_one_step_heun_schedule_is_sigma_max_then_zero():
    assert karras_sigmas(1, sigma_max=80.0).tolist() == [80.0, 0.0]


# ---------------------------------------------------------------------------------------------- SiD's karras-uniform


def karras_u(sigma: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The u in sigma = karras_sigma(1 - u): the inverse of the schedule."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    frac = (sigma.double() ** (1 / rho) - a) / (b - a)
    return 1 - frac


@pytest.mark.parametrize(("t_max", "sigma_min", "sigma_max", "rho"), [(800.0, 0.002, 80.0, 7.0), (1000.0, 0.01, 10.0, 5.0)])
def test_karras_uniform_range_matches_the_schedule(t_max, sigma_min, sigma_max, rho):
    sigma = sample_karras_uniform_sigma(N, t_max, sigma_min, sigma_max, rho, generator=gen(3))
    assert sigma.shape == (N,)
    u_max = t_max / 1000
    # u in [0, t_max/1000] maps to [karras_sigma(1) = sigma_min, karras_sigma(1 - u_max)]
    lo = karras_sigma(torch.tensor(1.0, dtype=torch.float64), sigma_min, sigma_max, rho).item()
    hi = karras_sigma(torch.tensor(1 - u_max, dtype=torch.float64), sigma_min, sigma_max, rho).item()
    assert lo == pytest.approx(sigma_min, rel=1e-12)
    assert sigma.min().item() >= lo * (1 - 1e-5) and sigma.max().item() <= hi * (1 + 1e-5)
    # and fills it: both ends are approached within 1e-3 of the range of u
    near = karras_sigma(torch.tensor([1 - 1e-3, 1 - u_max + 1e-3], dtype=torch.float64), sigma_min, sigma_max, rho)
    assert sigma.min().item() < near[0].item() and sigma.max().item() > near[1].item()


def test_karras_uniform_u_is_uniform():
    t_max = 800.0
    sigma = sample_karras_uniform_sigma(N, t_max, generator=gen(4))
    u = karras_u(sigma, 0.002, 80.0, 7.0)
    u_max = t_max / 1000
    assert u.min().item() > -1e-5 and u.max().item() < u_max + 1e-5
    sd = u_max / math.sqrt(12)
    assert abs(u.mean().item() - u_max / 2) < 5 * sd / math.sqrt(N)
    assert abs(u.std().item() - sd) < 0.01 * sd
    # a quarter of the draws in each quarter of [0, u_max]
    quarters = torch.histc(u.float(), bins=4, min=0.0, max=u_max) / N
    assert (quarters - 0.25).abs().max().item() < 5 * math.sqrt(0.25 * 0.75 / N)


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "draw",
    [
        lambda g: sample_lognormal_sigma(64, -1.2, 1.2, generator=g),
        lambda g: sample_karras_uniform_sigma(64, generator=g),
    ],
    ids=["lognormal", "karras-uniform"],
)
def test_seeded_generators_repeat_and_different_seeds_differ(draw):
    assert torch.equal(draw(gen(7)), draw(gen(7)))
    assert not torch.equal(draw(gen(7)), draw(gen(8)))
    g = gen(7)
    first, second = draw(g), draw(g)
    assert not torch.equal(first, second)  # the generator advances
