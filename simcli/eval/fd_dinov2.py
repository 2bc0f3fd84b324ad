"""FD-DINOv2 (Karras et al. 2024, EDM2): the Frechet distance between DINOv2 feature statistics of images and of a
reference, with the statistics accumulated as EDM2's calculate_metrics.py does.

Statistics (calculate_stats_for_iterable, read in NVlabs/edm2; code written here): features cast to float64; per
batch, sum(x) and x^T x are added up in float64; at the end mu = sum / N and
sigma = (sum x^T x - N mu mu^T) / (N - 1), the unbiased (N - 1) normaliser, not symmetrised. The distance is
simcli.eval.fid_math.frechet_distance (EDM2 uses scipy's sqrtm; the eigenvalue form agrees to rounding).

References (`--ref` with --fd-dinov2):
- images: a folder (its statistics cached per extractor and weights under <cache>/fid-stats/, as for FID), an .npz of
  images or a shipped set: features computed with the same extractor;
- statistics: an .npz written by `simcli eval --fd-dinov2 --save-stats` (extractor and weights recorded and
  checked), or EDM2's pickles by name (img512, img64; downloaded into <cache>/edm2/dataset-refs/) or path (.pkl),
  whose 'fd_dinov2' entry is used; they record no extractor, so the result carries a note.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.eval.edm2_references import EDM2_REFERENCES, edm2_reference_stats, is_edm2_reference
from simcli.eval.features import FeatureExtractor
from simcli.eval.image_inputs import FolderImages, ImageSource
from simcli.eval.stats import FeatureStats, ImageProgressFn, cached_folder_stats, check_compatible, load_stats
from simcli.store.download import DownloadProgressFn

FD_DINOV2 = "fd_dinov2"


class Edm2Moments:
    """Running float64 sum(x) and x^T x of feature rows, and EDM2's mean and (N - 1) covariance from them."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_outer = np.zeros((dim, dim), dtype=np.float64)

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        x = x.astype(np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UsageError(f"features of shape {tuple(x.shape)} do not fit statistics of dimension {self.dim}")
        if not np.isfinite(x).all():
            raise UsageError("DINOv2 features contain NaN or infinite values")
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        self.n += x.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise UsageError(f"FD-DINOv2 statistics need at least 2 images, got {self.n}")
        mu = self.sum / self.n
        return mu, (self.sum_outer - np.outer(mu, mu) * self.n) / (self.n - 1)

    def stats(self, extractor: FeatureExtractor, source: str) -> FeatureStats:
        mu, sigma = self.mean_cov()
        return FeatureStats(mu, sigma, self.n, extractor.name, extractor.weights_sha256, source)


def accumulate(
    batches: Iterable[torch.Tensor], extractor: FeatureExtractor, on_progress: ImageProgressFn | None = None
) -> Edm2Moments:
    """The moments of the extractor's features over uint8 [B, 3, H, W] batches."""
    moments = Edm2Moments(extractor.feature_dim)
    for images in batches:
        feats, _ = extractor.features(images)
        moments.add(feats)
        if on_progress is not None:
            on_progress(moments.n)
    return moments


def image_stats(images: ImageSource, extractor: FeatureExtractor, batch_size: int | None = None) -> FeatureStats:
    """FD-DINOv2 statistics of every image of a source; a folder's are cached per extractor and weights."""
    def compute(source: ImageSource) -> FeatureStats:
        return accumulate(source.batches(batch_size), extractor).stats(extractor, source.description)

    if isinstance(images, FolderImages):
        return cached_folder_stats(images.root, extractor, compute)
    return compute(images)


def reference_stats(
    ref: str, extractor: FeatureExtractor, *, images: ImageSource | None = None, batch_size: int | None = None,
    on_download: DownloadProgressFn | None = None,
) -> FeatureStats:
    """The reference for FD-DINOv2: `images` when the caller found --ref to be images, else statistics (simcli npz,
    EDM2 name or .pkl); statistics of another extractor are refused, unknown provenance gives a note."""
    if images is not None:
        stats = image_stats(images, extractor, batch_size)
    elif is_edm2_reference(ref):
        stats = edm2_reference_stats(ref, FD_DINOV2, on_download=on_download)
    elif Path(ref).is_file():
        stats = load_stats(ref)
    else:
        raise UsageError(f"unknown FD-DINOv2 reference '{ref}'",
                         hint=f"pass {' or '.join(EDM2_REFERENCES)} (EDM2's statistics), a statistics .npz saved with "
                              "--fd-dinov2 --save-stats, or a folder or .npz of images")
    return replace(stats, note=check_compatible(stats, extractor))
