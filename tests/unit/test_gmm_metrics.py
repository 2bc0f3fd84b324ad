"""Exact GMM metrics (simcli.eval.gmm_metrics) against closed forms and known failure modes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simcli.errors import UsageError
from simcli.eval.gmm_metrics import (
    default_mmd_bandwidth,
    gmm_report,
    mmd_rbf,
    mode_weight_l1,
    mode_weights,
    precision,
    random_directions,
    sliced_wasserstein2,
)
from simcli.teachers.gmm import GaussianMixture, ring


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ring8() -> GaussianMixture:
    return ring()


@pytest.fixture(scope="module")
def exact20k(ring8):
    return ring8.sample(20_000, generator=_gen(1))[0]


def test_exact_samples_have_near_true_mode_weights(ring8, exact20k):
    w = mode_weights(exact20k, ring8)
    assert w.shape == (8,)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert mode_weight_l1(exact20k, ring8) < 0.03  # sampling noise alone is ~0.015 here


def test_mode_weights_count_assignments_exactly(ring8):
    counts = torch.tensor([5, 0, 1, 2, 0, 0, 3, 9])
    x = torch.cat([ring8.means[k].expand(int(c), 2) for k, c in enumerate(counts)]).float()
    x = x + 0.01 * torch.randn(x.shape, generator=_gen(0))  # stays with its own mode
    assert torch.equal(mode_weights(x, ring8), counts.double() / counts.sum())


def test_collapsed_sampler_has_maximal_l1(ring8):
    x = ring8.means[3].expand(500, 2).float() + 0.05 * torch.randn(500, 2, generator=_gen(0))
    assert mode_weight_l1(x, ring8) == pytest.approx(2 * (1 - 1 / 8), abs=1e-12)


def test_precision_matches_chi_square_closed_form(ring8, exact20k):
    n = exact20k.shape[0]
    for num_std in (3.0, 1.0):
        p_true = 1 - math.exp(-(num_std**2) / 2)  # P(chi2_2 <= num_std^2)
        tol = 4 * math.sqrt(p_true * (1 - p_true) / n)
        assert abs(precision(exact20k, ring8, num_std=num_std) - p_true) < tol


def test_precision_uses_per_component_mahalanobis_distance(ring8):
    mu, s = ring8.means[0].float(), 0.05
    x = torch.stack([mu + torch.tensor([2.9 * s, 0.0]), mu + torch.tensor([3.1 * s, 0.0]), torch.zeros(2)])
    assert precision(x, ring8) == pytest.approx(1 / 3)
    anisotropic = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[1.0, 0.1]]))
    pts = torch.tensor([[2.5, 0.0], [0.0, 0.25], [0.0, 0.35]])  # 2.5, 2.5 and 3.5 stds
    assert precision(pts, anisotropic) == pytest.approx(2 / 3)


def test_mmd_is_near_zero_for_same_distribution_and_large_for_collapse(ring8):
    h = default_mmd_bandwidth(ring8)
    x, y = ring8.sample(2000, _gen(2))[0], ring8.sample(2000, _gen(3))[0]
    collapsed = ring8.means[0].float() + 0.05 * torch.randn(2000, 2, generator=_gen(4))
    same = mmd_rbf(x, y, h)
    assert abs(same) < 2e-3  # measured ~1e-4 to 7e-4
    assert mmd_rbf(collapsed, y, h) > 0.5  # measured 0.71
    assert mmd_rbf(collapsed, y, h) > 100 * abs(same)


def test_mmd_equals_brute_force_u_statistic_in_any_chunking():
    x = torch.randn(7, 3, generator=_gen(5))
    y = torch.randn(5, 3, generator=_gen(6)) + 0.5
    h = 0.8

    def k(a, b):
        return torch.exp(-(torch.cdist(a.double(), b.double()) ** 2) / (2 * h**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - kxx.trace()) / 42 + (kyy.sum() - kyy.trace()) / 20 - 2 * kxy.mean()
    assert mmd_rbf(x, y, h) == pytest.approx(float(expected), abs=1e-12)
    assert mmd_rbf(x, y, h, chunk_size=2) == pytest.approx(float(expected), abs=1e-12)


def test_default_bandwidth_for_ring8(ring8):
    assert default_mmd_bandwidth(ring8) == pytest.approx(2 * 0.05 * math.sqrt(2), rel=1e-6)


def test_sliced_wasserstein_of_a_shift_has_closed_form():
    x = torch.randn(500, 3, generator=_gen(7), dtype=torch.float64)
    shift = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    u = random_directions(64, 3, seed=11)  # [P, D]
    assert torch.allclose(u.norm(dim=1), torch.ones(64, dtype=torch.float64))
    expected = math.sqrt(float(((u @ shift) ** 2).mean()))
    assert sliced_wasserstein2(x, x + shift, num_projections=64, seed=11) == pytest.approx(expected, abs=1e-10)
    # Averaged over many directions, E (shift.u)^2 = |shift|^2 / D.
    sw_many = sliced_wasserstein2(x, x + shift, num_projections=4000, seed=0)
    assert sw_many == pytest.approx(float(shift.norm()) / math.sqrt(3), rel=0.03)


def test_sliced_wasserstein_is_zero_on_itself_and_permutation_invariant():
    x = torch.randn(300, 2, generator=_gen(8))
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[torch.randperm(300, generator=_gen(9))]) == 0.0
    assert sliced_wasserstein2(x, x + 1.0) > 0.5


def test_sliced_wasserstein_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="equal sample counts"):
        sliced_wasserstein2(torch.zeros(10, 2), torch.zeros(11, 2))


def test_gmm_report_is_json_ready_and_sensible(ring8):
    x = ring8.sample(1000, _gen(10))[0]
    report = gmm_report(x, ring8, seed=3)
    json.dumps(report)  # plain Python numbers only
    assert report["n"] == 1000 and report["num_reference"] == 1000
    assert len(report["mode_weights"]) == 8
    assert report["mode_weight_l1"] < 0.1 and report["mode_weight_l1"] == mode_weight_l1(x, ring8)
    assert report["precision"] > 0.97
    assert abs(report["mmd"]) < 3e-3
    assert report["mmd_bandwidth"] == pytest.approx(default_mmd_bandwidth(ring8))
    assert report["sw2"] < 0.15 and report["sw2_num_projections"] == 256
    # Same inputs, same report; a different reference count is allowed (SW2 on the common prefix).
    assert gmm_report(x, ring8, seed=3) == report
    other = gmm_report(x, ring8, num_reference=600, seed=3, mmd_bandwidth=0.3)
    assert other["num_reference"] == 600 and other["sw2_num_samples"] == 600 and other["mmd_bandwidth"] == 0.3


def test_gmm_report_rejects_bad_samples(ring8):
    with pytest.raises(UsageError, match="shape"):
        gmm_report(torch.zeros(10, 3), ring8)
    bad = torch.zeros(10, 2)
    bad[4, 1] = float("nan")
    with pytest.raises(UsageError, match="non-finite"):
        gmm_report(bad, ring8)
