"""FID, IS, KID, precision/recall and FD-DINOv2 of images against a reference: what `simcli eval` and in-training
evaluation compute. Features come from a backend's extractor (and, for FD-DINOv2, from simcli's DINOv2 network,
simcli.eval.fd_dinov2); every metric is simcli's own float64 code. The images are read once, whichever metrics run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.data.real_data import SHIPPED_SETS
from simcli.errors import UsageError
from simcli.eval.dinov2_detector import DEFAULT_RESIZE_MODE, Dinov2Extractor, check_resize_mode, get_dinov2_extractor
from simcli.eval.edm2_references import edm2_reference_stats, is_edm2_reference
from simcli.eval.fd_dinov2 import FD_DINOV2, Edm2Moments, reference_stats
from simcli.eval.features import FeatureExtractor, get_extractor
from simcli.eval.fid_math import frechet_distance, inception_score, kid, nearest_distances, precision_recall
from simcli.eval.image_inputs import GeneratorImages, open_images
from simcli.eval.stats import FeatureStats, ImageProgressFn, check_compatible, compute_features, resolve_reference

METRICS = ("fid", "is", "kid", "prc", "nearest", FD_DINOV2)
BACKEND_METRICS = frozenset({"fid", "is", "kid", "prc"})  # computed on the --backend extractor's features
DINOV2_STATS_SUFFIX = "-dinov2.npz"  # --save-stats X.npz with Inception statistics too: DINOv2's go to X-dinov2.npz
PIXEL_SCALE = 127.5
"""uint8 pixels to [-1, 1] units (simcli.sampling.images.to_uint8's inverse, up to its offset)."""



def fid_reference(ref: str, extractor: FeatureExtractor, batch_size: int) -> FeatureStats:
    """FID reference statistics: EDM2's pickles (img512, img64, a .pkl: their 'fid' entry), else resolve_reference."""
    if is_edm2_reference(str(ref)):
        stats = edm2_reference_stats(str(ref), "fid")
        return replace(stats, note=check_compatible(stats, extractor))
    return resolve_reference(ref, extractor, batch_size=batch_size)


def _fd_dinov2_reference(ref: str, extractor: Dinov2Extractor, batch_size: int) -> FeatureStats:
    images = open_images(ref) if _image_reference(ref) else None
    return reference_stats(ref, extractor, images=images, batch_size=batch_size)


def _tap(
    batches: Iterable[torch.Tensor], kept: list[torch.Tensor] | None, dino: Dinov2Extractor | None,
    moments: Edm2Moments | None, on_progress: ImageProgressFn | None,
) -> Iterator[torch.Tensor]:
    """Pass each batch on once, keeping it (for --nearest) and adding its DINOv2 features to the moments on the way."""
    for images in batches:
        if kept is not None:
            kept.append(images)
        if dino is not None and moments is not None:
            moments.add(dino.features(images)[0])
            if on_progress is not None:
                on_progress(moments.n)
        yield images


def dinov2_stats_path(save_stats: Path) -> Path:
    """Where --save-stats puts DINOv2 statistics when the file itself takes the backend's (Inception) ones."""
    return save_stats.with_name(save_stats.stem + DINOV2_STATS_SUFFIX)


def _reference_features(ref: str, extractor: FeatureExtractor, batch_size: int, on_progress: ImageProgressFn | None) -> np.ndarray:
    """Features of a folder (or npz) of reference images, for KID and precision/recall."""
    if not _image_reference(ref):
        raise UsageError("--kid and --prc need reference images (a folder or a samples .npz), not statistics",
                         hint="pass --ref DIR")
    feats, _ = compute_features(open_images(ref).batches(batch_size), extractor, on_progress=on_progress)
    return feats


def _pixels(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Images as float64 rows [N, C*H*W] in [-1, 1] units (from the uint8 RGB batches of an image source)."""
    rows = [b.reshape(b.shape[0], -1).numpy().astype(np.float64) / PIXEL_SCALE for b in batches]
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def nearest_image_distances(images: Iterable[torch.Tensor], ref: str, batch_size: int) -> dict[str, float]:
    """The memorisation check: each image's Euclidean pixel distance (in [-1, 1] units) to its nearest --ref image,
    their median and 1st percentile. Grayscale images (equal channels on both sides) count their channel once."""
    if not _image_reference(ref):
        raise UsageError("--nearest needs reference images (a folder, an .npz of images or digits-train), not statistics",
                         hint="pass --ref DIR or --ref IMAGES.npz (e.g. the training images)")
    queries, reference = _pixels(images), _pixels(open_images(ref).batches(batch_size))
    if queries.shape[1] != reference.shape[1]:
        raise UsageError(f"--nearest compares images of one size: {queries.shape[1] // 3} pixels against "
                         f"{reference.shape[1] // 3} in {ref}", hint="give reference images of the samples' size")
    distances = nearest_distances(queries, reference)
    if _gray(queries) and _gray(reference):
        distances = distances / np.sqrt(3)
    return {"nearest_median": float(np.median(distances)), "nearest_p01": float(np.percentile(distances, 1))}


def _gray(rows: np.ndarray) -> bool:
    """Every image's three channels are equal (rows are [N, 3*H*W], channel first)."""
    channels = rows.reshape(len(rows), 3, -1)
    return bool((channels == channels[:, :1]).all())


def _image_reference(ref: str) -> bool:
    """--ref names images: a folder, an .npz holding an 'images' array, or a shipped set (digits-train)."""
    path = Path(ref)
    return ref in SHIPPED_SETS or path.is_dir() or (path.is_file() and path.suffix == ".npz" and _holds_images(path))


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
    dinov2_weights: str | Path | None = None,
    dinov2_resize: str = DEFAULT_RESIZE_MODE,
) -> dict[str, Any]:
    """Score a folder, a samples npz or a generator (sampled in memory) with the requested metrics.

    With `save_stats`, the images' feature statistics are also written (simcli's float64 npz), for use as a
    reference later; metrics may then be empty.

    FD-DINOv2 ('fd_dinov2'): DINOv2 weights from `dinov2_weights`, else `feature_weights` when no backend metric
    (fid, is, kid, prc) runs, else torch hub's or simcli's cache (simcli.eval.dinov2_weights). With `save_stats`,
    its statistics go to `save_stats` when no backend metric runs, else to X-dinov2.npz beside it; it then needs no
    reference. The report adds 'fd_dinov2', 'fd_dinov2_extractor' and 'fd_dinov2_weights_sha256'; 'extractor' and
    'feature_weights_sha256' describe the backend's network, or DINOv2 when it is the only one.
    """
    metrics = set(metrics)
    unknown = metrics - set(METRICS)
    if unknown or (not metrics and save_stats is None):
        raise UsageError(f"choose metrics among {', '.join(METRICS)}", hint="for example --fid --is")
    images = open_images(source, limit=n, seed=seed, device=str(device))  # bad input fails before any download
    fd = FD_DINOV2 in metrics
    if fd:
        check_resize_mode(dinov2_resize)
    needs_ref = metrics & {"fid", "kid", "prc", "nearest"} or (fd and save_stats is None)
    if needs_ref and ref is None:
        raise UsageError("FID, FD-DINOv2, KID, precision/recall and --nearest need a reference",
                         hint="pass --ref NAME|STATS.npz|DIR")
    if metrics == {"nearest"} and save_stats is None:  # pixels only: no feature network
        kept = list(images.batches(batch_size))
        result = {"n": sum(len(b) for b in kept), "source": images.description, "reference": str(ref),
                  **nearest_image_distances(kept, str(ref), batch_size)}
        if isinstance(images, GeneratorImages):
            result.update(images.choice, nfe=len(images.sigmas))
        return result
    use_backend = bool(metrics & BACKEND_METRICS) or (save_stats is not None and not fd)
    if fd and not use_backend and feature_weights is not None:
        if dinov2_weights is not None:
            raise UsageError("--feature-weights given, but no metric uses it (DINOv2's weights are --dinov2-weights)",
                             hint="drop --feature-weights")
        dinov2_weights = feature_weights  # DINOv2 is the only feature network of this run
    extractor = get_extractor(backend, feature_weights=feature_weights, device=device, mode=mode) if use_backend else None
    if extractor is not None and "is" in metrics and not extractor.has_logits:
        raise UsageError(f"the Inception Score needs class logits, which backend '{backend}' does not give",
                         hint="use --backend torch-fidelity for --is")
    dino = get_dinov2_extractor(dinov2_weights, device=device, resize_mode=dinov2_resize) if fd else None
    reference = fid_reference(ref, extractor, batch_size) if "fid" in metrics else None
    dino_reference = _fd_dinov2_reference(str(ref), dino, batch_size) if fd and ref is not None else None
    reference_features = (
        _reference_features(ref, extractor, batch_size, None) if metrics & {"kid", "prc"} else None
    )
    kept: list[torch.Tensor] = []  # the images themselves, for --nearest (the source is read once)
    moments = Edm2Moments(dino.feature_dim) if dino is not None else None
    batches = _tap(images.batches(batch_size), kept if "nearest" in metrics else None, dino, moments,
                   on_progress if extractor is None else None)
    result: dict[str, Any] = {"n": 0, "source": images.description}  # keys in the order the report shows them
    if extractor is not None:
        feats, logits = compute_features(batches, extractor, want_logits="is" in metrics, on_progress=on_progress)
        result.update(n=int(len(feats)), backend=backend, extractor=extractor.name,
                      feature_weights_sha256=extractor.weights_sha256, reference=None if ref is None else str(ref))
        result.update(score_features(feats, logits, metrics, reference, reference_features))
    else:  # DINOv2 is the only feature network
        for _ in batches:
            pass
        result.update(n=moments.n, extractor=dino.name, feature_weights_sha256=dino.weights_sha256,
                      reference=None if ref is None else str(ref))
    dino_stats = moments.stats(dino, images.description) if moments is not None else None
    if dino_stats is not None:
        if dino_reference is not None:
            result[FD_DINOV2] = frechet_distance(dino_stats.mu, dino_stats.sigma, dino_reference.mu,
                                                 dino_reference.sigma)
        result.update(fd_dinov2_extractor=dino.name, fd_dinov2_weights_sha256=dino.weights_sha256)
    if "nearest" in metrics:
        result.update(nearest_image_distances(kept, str(ref), batch_size))
    if isinstance(images, GeneratorImages):  # which file a run directory's newest snapshot was
        result.update(images.choice, nfe=len(images.sigmas))
    notes = [r.note for r in (reference, dino_reference) if r is not None and r.note]
    if notes:
        result["note"] = "; ".join(notes)
    if save_stats is not None:
        if extractor is not None:
            stats = FeatureStats.from_features(feats, extractor=extractor.name,
                                               weights_sha256=extractor.weights_sha256, source=images.description)
            result["saved_stats"] = str(stats.save_npz(save_stats))
        if dino_stats is not None:
            path = dinov2_stats_path(Path(save_stats)) if extractor is not None else Path(save_stats)
            result["saved_stats_fd_dinov2"] = str(dino_stats.save_npz(path))
            result.setdefault("saved_stats", result["saved_stats_fd_dinov2"])
    return result
