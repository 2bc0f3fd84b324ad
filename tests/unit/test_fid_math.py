"""simcli.eval.fid_math: Frechet distance vs scipy sqrtm, IS closed forms, KID and PRC vs torch-fidelity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from simcli.errors import UsageError
from simcli.eval.fid_math import frechet_distance, inception_score, kid, precision_recall


@pytest.fixture(scope="module")
def tf_metrics():
    """torch-fidelity's metric modules (pure functions on features; importing them touches no network)."""
    kid_mod = pytest.importorskip("torch_fidelity.metric_kid")
    prc_mod = pytest.importorskip("torch_fidelity.metric_prc")
    isc_mod = pytest.importorskip("torch_fidelity.metric_isc")
    return kid_mod, prc_mod, isc_mod


def gaussian_stats(rng: np.random.Generator, d: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of n correlated non-negative samples in d dimensions (Inception-like features)."""
    x = np.abs(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / math.sqrt(d)) + shift
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fd_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """The EDM / pytorch-fid formula with scipy's general matrix square root."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))


# ---------------------------------------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, s1 = gaussian_stats(rng, d, 4 * d)
    mu2, s2 = gaussian_stats(rng, d, 4 * d, shift=0.3)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), fd_sqrtm(mu1, s1, mu2, s2)
    assert ref > 0.1
    assert abs(ours - ref) / ref < 1e-6


def test_frechet_distance_is_zero_for_identical_stats_and_symmetric():
    rng = np.random.default_rng(1)
    mu1, s1 = gaussian_stats(rng, 32, 200)
    mu2, s2 = gaussian_stats(rng, 32, 200, shift=0.1)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_non_negative_with_rank_deficient_covariances():
    rng = np.random.default_rng(2)
    for _ in range(5):
        mu, s = gaussian_stats(rng, 64, 20)  # N < d: singular covariance
        mu2, s2 = gaussian_stats(rng, 64, 20)
        assert frechet_distance(mu, s, mu, s) >= 0.0
        assert frechet_distance(mu, s, mu2, s2) >= 0.0


def test_frechet_distance_of_known_gaussians():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2; diagonal covariances add up per axis.
    one_d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[9.0]]))
    assert one_d == pytest.approx(2.0)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 16.0])
    assert frechet_distance(np.zeros(2), s1, np.ones(2), s2) == pytest.approx(2 + 1 + 4)


def test_frechet_distance_refuses_mismatched_dimensions():
    with pytest.raises(UsageError, match="reference statistics have dimension 2048 but features have 64"):
        frechet_distance(np.zeros(64), np.eye(64), np.zeros(2048), np.eye(2048))
    with pytest.raises(UsageError, match="malformed"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(UsageError, match="NaN"):
        frechet_distance(np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------- Inception Score


def test_inception_score_uniform_predictions_is_one():
    mean, std = inception_score(np.zeros((50, 7)), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_confident_distinct_classes_is_k(k):
    probs = np.eye(k)[np.arange(4 * k) % k]  # one-hot, every class equally often
    assert inception_score(probs, splits=1, from_probs=True)[0] == pytest.approx(k, rel=1e-12)
    # unshuffled splits of 2k rows hold each class twice: every split scores k
    mean, std = inception_score(probs, splits=2, from_probs=True, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(60.0 * probs, splits=1)[0] == pytest.approx(k, rel=1e-9)  # near one-hot logits


def test_inception_score_small_hand_example():
    # p(y|x1) = [1, 0], p(y|x2) = [1/2, 1/2] -> p(y) = [3/4, 1/4]; KL1 = log(4/3), KL2 = log(4/3) / 2
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert inception_score(probs, splits=1, from_probs=True)[0] == pytest.approx((4 / 3) ** 0.75, rel=1e-12)
    logits = np.log(np.array([[0.2, 0.8], [0.6, 0.4]]))  # p(y) = [0.4, 0.6]
    kl = [0.2 * math.log(0.2 / 0.4) + 0.8 * math.log(0.8 / 0.6), 0.6 * math.log(0.6 / 0.4) + 0.4 * math.log(0.4 / 0.6)]
    assert inception_score(logits, splits=1)[0] == pytest.approx(math.exp(sum(kl) / 2), rel=1e-12)


def test_inception_score_matches_torch_fidelity(tf_metrics):
    _, _, isc_mod = tf_metrics
    logits = np.random.default_rng(3).standard_normal((203, 12)) * 3
    ref = isc_mod.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)


def test_inception_score_refuses_bad_input():
    with pytest.raises(UsageError, match="at least 10 samples"):
        inception_score(np.zeros((5, 3)))
    with pytest.raises(UsageError, match="sum to 1"):
        inception_score(np.ones((10, 3)), splits=1, from_probs=True)


# ---------------------------------------------------------------------------------------------- KID


def tf_kid(kid_mod, f1: np.ndarray, f2: np.ndarray, subsets: int, size: int, seed: int) -> dict:
    return kid_mod.kid_features_to_metric(
        torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=subsets, kid_subset_size=size, verbose=False,
        rng_seed=seed, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1,
    )


def test_kid_matches_torch_fidelity(tf_metrics):
    kid_mod, _, _ = tf_metrics
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((240, 24)), rng.standard_normal((200, 24)) * 1.1 + 0.2
    ref = tf_kid(kid_mod, f1, f2, subsets=12, size=100, seed=7)
    mean, std = kid(f1, f2, subsets=12, subset_size=100, seed=7)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
    assert mean > 0


def test_kid_of_one_distribution_is_near_zero_and_checks_sizes():
    rng = np.random.default_rng(5)
    f1, f2 = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    mean, std = kid(f1, f2, subsets=20, subset_size=150)
    assert abs(mean) < 3 * std + 1e-3  # unbiased: can be slightly negative
    with pytest.raises(UsageError, match="KID subset size 1000 is larger than the samples"):
        kid(f1, f2)
    with pytest.raises(UsageError, match="dimension 8 but generated features have 16"):
        kid(f1, f2[:, :8], subset_size=10)


# ---------------------------------------------------------------------------------------------- precision / recall


def test_precision_recall_matches_torch_fidelity(tf_metrics):
    _, prc_mod, _ = tf_metrics
    rng = np.random.default_rng(6)
    real = rng.standard_normal((260, 20))
    fake = rng.standard_normal((230, 20)) + 0.7
    full = prc_mod.calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3, 10000)
    part = prc_mod.calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real), 3, 64)
    assert full == pytest.approx(part)
    for chunk in (1000, 37):
        precision, recall = precision_recall(real, fake, k=3, chunk_rows=chunk)
        assert (precision, recall) == pytest.approx(full, abs=1e-6)
    assert 0.2 < full[0] < 0.8 and 0.2 < full[1] < 0.8  # a non-trivial case


def test_precision_recall_extremes():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((100, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 1000.0
    assert precision_recall(real, far) == (0.0, 0.0)
    with pytest.raises(UsageError, match="more than 3 samples"):
        precision_recall(real[:3], real)
