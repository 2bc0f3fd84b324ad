"""FID, IS, KID and precision/recall of images against a reference: what `simcli eval` and in-training
evaluation compute. Features come from a backend's extractor; every metric is simcli's own float64 code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.eval.features import FeatureExtractor, get_extractor
from simcli.eval.fid_math import frechet_distance, inception_score, kid, precision_recall
from simcli.eval.image_inputs import GeneratorImages, open_images
from simcli.eval.stats import FeatureStats, ImageProgressFn, compute_features, resolve_reference

METRICS = ("fid", "is", "kid", "prc")



def _reference_features(ref: str, extractor: FeatureExtractor, batch_size: int, on_progress: ImageProgressFn | None) -> np.ndarray:
    """Features of a folder (or npz) of reference images, for KID and precision/recall."""
    path = Path(ref)
    if not (path.is_dir() or (path.is_file() and path.suffix == ".npz" and _holds_images(path))):
        raise UsageError("--kid and --prc need reference images (a folder or a samples .npz), not statistics",
                         hint="pass --ref DIR")
    feats, _ = compute_features(open_images(path).batches(batch_size), extractor, on_progress=on_progress)
    return feats


def _holds_images(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as data:
        return "images" in data.files


def score_features(
    feats: np.ndarray,
    logits: np.ndarray | None,
    metrics: set[str],
    reference: FeatureStats | None,
    reference_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """The requested metrics of generated features (and logits) against the reference."""
    out: dict[str, Any] = {}
    if "fid" in metrics:
        mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
        out["fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if "is" in metrics:
        out["is_mean"], out["is_std"] = inception_score(logits, splits=10)
    if "kid" in metrics:
        size = min(1000, len(feats), len(reference_features))
        out["kid_mean"], out["kid_std"] = kid(feats, reference_features, subset_size=size)
    if "prc" in metrics:
        out["precision"], out["recall"] = precision_recall(reference_features, feats)
    return out


def evaluate_images(
    source: str | Path,
    *,
    ref: str | None,
    metrics: Iterable[str],
    backend: str = "torch-fidelity",
    feature_weights: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    mode: str = "legacy_tensorflow",
    save_stats: Path | None = None,
    on_progress: ImageProgressFn | None = None,
) -> dict[str, Any]:
    """Score a folder, a samples npz or a generator (sampled in memory) with the requested metrics.

    With `save_stats`, the images' feature statistics are also written (simcli's float64 npz), for use as a
    reference later; metrics may then be empty.
    """
    metrics = set(metrics)
    unknown = metrics - set(METRICS)
    if unknown or (not metrics and save_stats is None):
        raise UsageError(f"choose metrics among {', '.join(METRICS)}", hint="for example --fid --is")
    images = open_images(source, limit=n, seed=seed, device=str(device))  # bad input fails before any download
    extractor = get_extractor(backend, feature_weights=feature_weights, device=device, mode=mode)
    if "is" in metrics and not extractor.has_logits:
        raise UsageError(f"the Inception Score needs class logits, which backend '{backend}' does not give",
                         hint="use --backend torch-fidelity for --is")
    needs_ref = metrics & {"fid", "kid", "prc"}
    if needs_ref and ref is None:
        raise UsageError("FID, KID and precision/recall need a reference", hint="pass --ref NAME|STATS.npz|DIR")
    reference = resolve_reference(ref, extractor, batch_size=batch_size) if "fid" in metrics else None
    reference_features = (
        _reference_features(ref, extractor, batch_size, None) if metrics & {"kid", "prc"} else None
    )
    feats, logits = compute_features(images.batches(batch_size), extractor, want_logits="is" in metrics,
                                     on_progress=on_progress)
    result = {
        "n": int(len(feats)),
        "source": images.description,
        "backend": backend,
        "extractor": extractor.name,
        "feature_weights_sha256": extractor.weights_sha256,
        "reference": None if ref is None else str(ref),
        **score_features(feats, logits, metrics, reference, reference_features),
    }
    if isinstance(images, GeneratorImages):  # which file a run directory's newest snapshot was
        result.update(images.choice)
    if reference is not None and reference.note:
        result["note"] = reference.note
    if save_stats is not None:
        stats = FeatureStats.from_features(feats, extractor=extractor.name, weights_sha256=extractor.weights_sha256,
                                           source=images.description)
        result["saved_stats"] = str(stats.save_npz(save_stats))
    return result
