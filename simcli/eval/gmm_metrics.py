"""Exact metrics of vector samples against an analytic Gaussian-mixture teacher (sim-method.md section 7).

Because the true distribution is known, mode coverage and mode weights are measured exactly (through
the mixture's own responsibilities), and distribution distances (the squared MMD, sliced Wasserstein-2) are
taken against exact samples from the mixture. Everything is computed in float64 on the samples' device.

The report's `mmd` is the unbiased estimate of the *squared* maximum mean discrepancy, MMD^2 (mmd_rbf), not its
square root; every table calls it MMD^2 (`simcli eval --teacher`, `simcli compare`, the live table of `distill`).
"""

from __future__ import annotations

import math

import torch

from simcli.errors import UsageError
from simcli.teachers.gmm import GaussianMixture

Tensor = torch.Tensor

CHUNK_SIZE = 4096  # rows per block in the [chunk, K, D] / [chunk, M] intermediates
MMD_CHUNK_SIZE = 1024  # rows per kernel block: 1024 x 10k float64 = 80 MB
MMD_BANDWIDTH_FACTOR = 2.0  # default bandwidth = factor * RMS component std (see default_mmd_bandwidth)


def _check_samples(samples: Tensor, mixture: GaussianMixture) -> Tensor:
    """Samples as float64 [N, D]; raise UsageError on a wrong shape, no samples or non-finite values."""
    if samples.ndim != 2 or samples.shape[1] != mixture.dim:
        raise UsageError(f"samples must have shape [N, {mixture.dim}] for {mixture.name}, got {list(samples.shape)}")
    if samples.shape[0] == 0:
        raise UsageError("no samples to evaluate")
    bad = int((~torch.isfinite(samples)).any(dim=1).sum())
    if bad:
        raise UsageError(f"{bad} of {samples.shape[0]} samples hold non-finite values")
    return samples.to(torch.float64)


def nearest_modes(samples: Tensor, mixture: GaussianMixture, chunk_size: int = CHUNK_SIZE) -> Tensor:
    """Most responsible component of each sample at sigma = 0 (argmax of component_log_probs): [N] int64."""
    x = _check_samples(samples, mixture)
    return torch.cat([mixture.component_log_probs(c).argmax(dim=1) for c in x.split(chunk_size)])


def mode_weights(samples: Tensor, mixture: GaussianMixture, chunk_size: int = CHUNK_SIZE) -> Tensor:
    """Share of samples assigned to each component by nearest_modes: float64 [K], sums to 1."""
    idx = nearest_modes(samples, mixture, chunk_size)  # [N]
    counts = torch.bincount(idx, minlength=mixture.num_components).to(torch.float64)  # [K]
    return counts / idx.numel()


def weights_l1(w_hat: Tensor, mixture: GaussianMixture) -> float:
    """sum_k |w_hat_k - pi_k| of mode weights w_hat [K] (as mode_weights gives them) against the mixture's pi."""
    return float((w_hat - mixture.weights.to(w_hat.device)).abs().sum())


def mode_weight_l1(samples: Tensor, mixture: GaussianMixture, chunk_size: int = CHUNK_SIZE) -> float:
    """sum_k |w_hat_k - pi_k|: 0 for perfect mode weights, 2 (1 - pi_k) when everything sits in mode k."""
    return weights_l1(mode_weights(samples, mixture, chunk_size), mixture)


def precision(samples: Tensor, mixture: GaussianMixture, num_std: float = 3.0, chunk_size: int = CHUNK_SIZE) -> float:
    """Share of samples within num_std standard deviations of at least one component.

    A sample x counts when min_k sqrt(sum_d ((x_d - mu_kd) / s_kd)^2) <= num_std, i.e. its Mahalanobis
    distance under some component's own diagonal covariance. For exact samples of well-separated modes
    in D dimensions this is P(chi2_D <= num_std^2), e.g. 1 - exp(-num_std^2 / 2) in 2-D.
    """
    x = _check_samples(samples, mixture)
    means, stds = mixture.means.to(x.device), mixture.stds.to(x.device)  # [K, D]
    inside = 0
    for c in x.split(chunk_size):
        z2 = (((c[:, None, :] - means[None]) / stds[None]) ** 2).sum(-1)  # [b, K]
        inside += int((z2.min(dim=1).values <= num_std**2).sum())
    return inside / x.shape[0]


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances [A, B] via ||a||^2 + ||b||^2 - 2 a.b, clamped at 0."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d2.clamp_min_(0.0)


def _kernel_sum(a: Tensor, b: Tensor, bandwidth: float, chunk_size: int) -> float:
    """sum_ij exp(-||a_i - b_j||^2 / (2 bandwidth^2)), computed in row blocks."""
    scale = -0.5 / bandwidth**2
    return sum(float(torch.exp(_sq_dists(c, b) * scale).sum()) for c in a.split(chunk_size))


def _self_kernel_sum(a: Tensor, bandwidth: float, chunk_size: int) -> float:
    """_kernel_sum(a, a, ...) from the upper triangle of row blocks: the kernel is symmetric, so each block of rows
    is paired only with itself and the rows after it, and the off-diagonal part counted twice (half the work)."""
    scale = -0.5 / bandwidth**2
    total, start = 0.0, 0
    for c in a.split(chunk_size):
        k = torch.exp(_sq_dists(c, a[start:]) * scale)  # [b, N - start]: the block's own rows first
        b = c.shape[0]
        total += float(k[:, :b].sum()) + 2.0 * float(k[:, b:].sum())
        start += b
    return total


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float, chunk_size: int = MMD_CHUNK_SIZE) -> float:
    """Unbiased MMD^2 (U-statistic) with the Gaussian kernel exp(-||a - b||^2 / (2 bandwidth^2)).

    MMD^2_u = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j) (Gretton et al.
    2012, eq. 3). Being unbiased, it scatters around 0 when x and y share a distribution and can then be
    slightly negative. x [N, D] and y [M, D] need N, M >= 2; the kernel matrices are never held whole.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_rbf needs [N, D] and [M, D], got {list(x.shape)} and {list(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd_rbf needs at least 2 samples on each side, got {n} and {m}")
    if not bandwidth > 0:
        raise ValueError(f"mmd_rbf bandwidth must be > 0, got {bandwidth}")
    x64, y64 = x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)
    # The diagonal terms k(a, a) = 1 are removed from the within-set sums.
    kxx = (_self_kernel_sum(x64, bandwidth, chunk_size) - n) / (n * (n - 1))
    kyy = (_self_kernel_sum(y64, bandwidth, chunk_size) - m) / (m * (m - 1))
    kxy = _kernel_sum(x64, y64, bandwidth, chunk_size) / (n * m)
    return kxx + kyy - 2.0 * kxy


def random_directions(num_projections: int, dim: int, seed: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """Unit vectors uniform on the sphere from a fixed seed: float64 [num_projections, dim]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(num_projections, dim, generator=g, dtype=torch.float64)
    return (u / u.norm(dim=1, keepdim=True)).to(device)


def sliced_wasserstein2(x: Tensor, y: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance sqrt(mean_u W2^2(u.x, u.y)) over fixed random unit directions u.

    Each 1-D W2^2 between equal-size empirical measures is the mean squared difference of the sorted
    projections. x and y must both be [N, D] with the same N (ValueError otherwise).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sliced_wasserstein2 needs [N, D] and [N, D], got {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_wasserstein2 needs equal sample counts, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("sliced_wasserstein2 needs at least one sample")
    u = random_directions(num_projections, x.shape[1], seed, x.device)  # [P, D]
    px = (x.to(torch.float64) @ u.T).sort(dim=0).values  # [N, P]
    py = (y.to(device=x.device, dtype=torch.float64) @ u.T).sort(dim=0).values  # [N, P]
    return math.sqrt(float(((px - py) ** 2).mean()))


def default_mmd_bandwidth(mixture: GaussianMixture, factor: float = MMD_BANDWIDTH_FACTOR) -> float:
    """factor * sqrt(sum_k pi_k sum_d s_kd^2): a multiple of the typical within-mode distance, from the mixture only.

    Two exact draws from one component are sqrt(2 sum_d s_d^2) apart on average (RMS), so with factor 2 the
    kernel resolves each mode's shape (blur, shrinkage, a shifted mean) while points in different
    well-separated modes barely interact, which keeps MMD sensitive to mode weights and collapse. The data
    scale (std of the whole mixture) is the usual alternative, but on ring8 it misses a 2x blur entirely.
    ring8 (std 0.1, D = 2): 2 * 0.1 * sqrt(2) = 0.2828; grid25 (std 0.05): 0.1414.
    """
    per_component = (mixture.stds**2).sum(dim=1)  # [K]
    return factor * math.sqrt(float((mixture.weights * per_component).sum()))


def gmm_report(
    samples: Tensor,
    mixture: GaussianMixture,
    num_reference: int | None = None,
    seed: int = 0,
    mmd_bandwidth: float | None = None,
    num_std: float = 3.0,
    num_projections: int = 256,
) -> dict:
    """All exact metrics of samples [N, D] against the mixture, as a JSON-ready dict of plain numbers.

    MMD^2 (key `mmd`, the unbiased squared MMD of mmd_rbf) and SW2 compare against num_reference (default N) exact
    samples from mixture.sample seeded with seed; SW2 uses the first min(N, num_reference) of each set, since it
    needs equal counts.
    """
    x = _check_samples(samples, mixture)
    n = x.shape[0]
    m = n if num_reference is None else int(num_reference)
    if n < 2 or m < 2:
        raise UsageError(f"need at least 2 samples and 2 reference samples, got {n} and {m}")
    ref, _ = mixture.sample(m, generator=torch.Generator().manual_seed(seed))  # [M, D]
    ref = ref.to(device=x.device, dtype=torch.float64)
    bandwidth = default_mmd_bandwidth(mixture) if mmd_bandwidth is None else float(mmd_bandwidth)
    k = min(n, m)
    w_hat = mode_weights(x, mixture)
    return {
        "n": n,
        "num_reference": m,
        "reference_seed": seed,
        "mode_weights": [float(w) for w in w_hat.tolist()],
        "mode_weight_l1": weights_l1(w_hat, mixture),
        "precision": precision(x, mixture, num_std),
        "precision_num_std": float(num_std),
        "mmd": mmd_rbf(x, ref, bandwidth),
        "mmd_bandwidth": bandwidth,
        "sw2": sliced_wasserstein2(x[:k], ref[:k], num_projections, seed),
        "sw2_num_projections": num_projections,
        "sw2_num_samples": k,
    }
