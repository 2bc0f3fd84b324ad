"""Feature-space metrics in float64 numpy: Frechet distance, Inception Score, KID and precision/recall.

Sources (eval-notes.md sections 4, 5 and 7; facts read from torch-fidelity 0.4.0, code written here):
- Frechet distance (Heusel et al. 2017): |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)). EDM's fid.py uses
  scipy.linalg.sqrtm; here tr(sqrt(S1 S2)) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), a symmetric PSD matrix with the
  same eigenvalues as S1 S2, so `eigh`/`eigvalsh` apply (no scipy, no complex parts; eval-notes.md section 7.1).
- Inception Score (Salimans et al. 2016) as torch-fidelity `metric_isc.py` computes it: softmax in float64,
  optional shuffle with RandomState(2020), split i = rows [i*N//splits, (i+1)*N//splits), exp(mean KL(p(y|x)||p(y)))
  per split, mean and population std over splits. shuffle=False is NVIDIA's is50k (and the original code).
- KID (Binkowski et al. 2018) as torch-fidelity `metric_kid.py`: RandomState(seed) draws, for each subset, indices
  of features1 then of features2 without replacement; polynomial kernel (x.y * gamma + coef0)^degree with
  gamma = 1/d by default; unbiased MMD^2; mean and population std over subsets.
- Precision/recall (Kynkaanniemi et al. 2019) as torch-fidelity `metric_prc.py`: the radius of a sample is the
  distance to its k-th nearest neighbour in its own set (itself excluded); precision is the fraction of generated
  samples inside some real sample's ball, recall the fraction of real samples inside some generated sample's ball
  (distance <= radius).
"""

from __future__ import annotations

import numpy as np

from simcli.errors import UsageError

FLOAT = np.float64
IS_SPLITS = 10  # Salimans et al. / torch-fidelity / NVIDIA is50k
IS_SHUFFLE_SEED = 2020  # torch-fidelity's default rng_seed
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3
KID_COEF0 = 1.0
KID_SEED = 2020  # torch-fidelity's default rng_seed
PRC_NEIGHBOURS = 3
PRC_CHUNK_ROWS = 1024  # a [1024, 10k] float64 distance block is 80 MB
PROB_SUM_TOL = 1e-3  # rows of given probabilities must sum to 1 within this


# ---------------------------------------------------------------------------------------------- Frechet distance


def _stats_shapes(mu: np.ndarray, sigma: np.ndarray, what: str) -> int:
    """Feature dimension of (mu [F], sigma [F, F]); UsageError when malformed or non-finite."""
    if mu.ndim != 1 or sigma.ndim != 2 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UsageError(f"{what} statistics are malformed: mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)}",
                         hint="expected mu [F] and sigma [F, F]")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UsageError(f"{what} statistics contain NaN or infinite values")
    return mu.shape[0]


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh (negative eigenvalues clamped to 0)."""
    sym = (sigma + sigma.T) / 2
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) = sum of sqrt(eigenvalues of sqrt(S1) S2 sqrt(S1)), eigenvalues clamped at 0."""
    s1h = sqrtm_psd(sigma1)
    m = s1h @ sigma2 @ s1h
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, S1) (features) and N(mu2, S2) (reference), float64, clamped at 0."""
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, dtype=FLOAT) for a in (mu1, sigma1, mu2, sigma2))
    d1 = _stats_shapes(mu1, sigma1, "feature")
    d2 = _stats_shapes(mu2, sigma2, "reference")
    if d1 != d2:
        raise UsageError(f"reference statistics have dimension {d2} but features have {d1}",
                         hint="both sides must come from the same feature extractor")
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(fd, 0.0)  # rank-deficient covariances give tiny negatives (eval-notes.md 2.8, 7.1)


# ---------------------------------------------------------------------------------------------- Inception Score


def _log_probs(scores: np.ndarray, from_probs: bool) -> tuple[np.ndarray, np.ndarray]:
    """(p, log p) [N, K] in float64 from logits (log-softmax) or from given class probabilities."""
    if not from_probs:
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return np.exp(log_p), log_p
    if (scores < 0).any() or np.abs(scores.sum(axis=1) - 1.0).max() > PROB_SUM_TOL:
        raise UsageError("class probabilities must be non-negative and sum to 1 per row",
                         hint="pass logits instead (from_probs=False)")
    p = scores / scores.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return p, np.log(p)


def inception_score(
    scores: np.ndarray, splits: int = IS_SPLITS, *, from_probs: bool = False, shuffle: bool = True,
    seed: int = IS_SHUFFLE_SEED,
) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over splits, from logits [N, K] (or probabilities)."""
    x = np.asarray(scores, dtype=FLOAT)
    if x.ndim != 2 or x.shape[1] < 1:
        raise UsageError(f"Inception Score needs [N, classes] scores, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise UsageError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    if not np.isfinite(x).all():
        raise UsageError("Inception Score inputs contain NaN or infinite values")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    p, log_p = _log_probs(x, from_probs)
    values = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        p_i, log_p_i = p[rows], log_p[rows]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0: zero probabilities add nothing
            log_marginal = np.log(p_i.mean(axis=0, keepdims=True))
            terms = np.where(p_i > 0, p_i * (log_p_i - log_marginal), 0.0)
        values.append(float(np.exp(terms.sum(axis=1).mean())))
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------------- KID


def _features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=FLOAT)
    if x.ndim != 2:
        raise UsageError(f"{what} must be [N, F], got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise UsageError(f"{what} contain NaN or infinite values")
    return x


def _pair(features1: np.ndarray, features2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f1, f2 = _features(features1, "generated features"), _features(features2, "real features")
    if f1.shape[1] != f2.shape[1]:
        raise UsageError(f"real features have dimension {f2.shape[1]} but generated features have {f1.shape[1]}")
    return f1, f2


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    """K[i, j] = (x_i . y_j * gamma + coef0) ** degree."""
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples: off-diagonal means of K_XX and K_YY minus 2 mean(K_XY)."""
    m = k_xx.shape[0]
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(
    features1: np.ndarray, features2: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
    degree: int = KID_DEGREE, gamma: float | None = None, coef0: float = KID_COEF0, seed: int = KID_SEED,
) -> tuple[float, float]:
    """(mean, std) of unbiased polynomial-kernel MMD^2 over random subsets; features1 generated, features2 real."""
    f1, f2 = _pair(features1, features2)
    n1, n2 = len(f1), len(f2)
    if subset_size < 2 or subsets < 1:
        raise UsageError(f"KID needs subset size >= 2 and >= 1 subset, got {subset_size} and {subsets}")
    if min(n1, n2) < subset_size:
        raise UsageError(f"KID subset size {subset_size} is larger than the samples ({n1} generated, {n2} real)",
                         hint="lower the KID subset size or use more samples")
    g = 1.0 / f1.shape[1] if gamma is None else float(gamma)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets, dtype=FLOAT)
    for i in range(subsets):
        x = f1[rng.choice(n1, subset_size, replace=False)]
        y = f2[rng.choice(n2, subset_size, replace=False)]
        values[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, g, coef0), polynomial_kernel(x, y, degree, g, coef0),
                                  polynomial_kernel(y, y, degree, g, coef0))
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------- precision / recall


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """|a_i - b_j|^2 [len(a), len(b)], clamped at 0."""
    d = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int, chunk_rows: int = PRC_CHUNK_ROWS) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row (the row itself excluded), chunked."""
    x_sq = (x * x).sum(axis=1)
    radii = np.empty(len(x), dtype=FLOAT)
    for start in range(0, len(x), chunk_rows):
        d = _squared_distances(x[start : start + chunk_rows], x, x_sq)
        radii[start : start + chunk_rows] = np.partition(d, k, axis=1)[:, k]  # index 0 is the row itself
    return radii


def coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk_rows: int = PRC_CHUNK_ROWS) -> float:
    """Fraction of queries within distance <= radius of at least one centre (squared distances and radii)."""
    c_sq = (centres * centres).sum(axis=1)
    inside = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), chunk_rows):
        d = _squared_distances(queries[start : start + chunk_rows], centres, c_sq)
        inside[start : start + chunk_rows] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = PRC_NEIGHBOURS, chunk_rows: int = PRC_CHUNK_ROWS
) -> tuple[float, float]:
    """(precision, recall) of generated vs real features with k-NN manifolds (Kynkaanniemi et al. 2019)."""
    fake, real = _pair(fake_features, real_features)
    if k < 1 or min(len(real), len(fake)) <= k:
        raise UsageError(f"precision/recall with k={k} needs more than {k} samples on each side "
                         f"({len(fake)} generated, {len(real)} real)")
    precision = coverage(fake, real, knn_radii(real, k, chunk_rows), chunk_rows)
    recall = coverage(real, fake, knn_radii(fake, k, chunk_rows), chunk_rows)
    return precision, recall


def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk_rows: int = PRC_CHUNK_ROWS) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row [len(queries)], float64, chunked: a
    memorisation check (samples copied from the training set sit at distance ~0 from it)."""
    if len(reference) == 0:
        raise UsageError("the nearest-image distance needs at least one reference image")
    r_sq = (reference * reference).sum(axis=1)
    out = np.empty(len(queries), dtype=FLOAT)
    for start in range(0, len(queries), chunk_rows):
        d = _squared_distances(queries[start : start + chunk_rows], reference, r_sq)
        out[start : start + chunk_rows] = np.sqrt(d.min(axis=1))
    return out

