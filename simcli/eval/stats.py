"""Feature statistics (mu, sigma) for FID: computing, saving, loading, and resolving a `--ref` argument.

- Statistics follow EDM fid.py (edm-spec.md section 2.4): float64 mean and unbiased (N - 1) covariance.
- simcli's own npz holds float64 'mu' [F] and 'sigma' [F, F] plus a JSON 'simcli_meta' string (n, extractor,
  weights sha256, source), written atomically. EDM fid-refs and clean-fid npz files hold just 'mu' and 'sigma';
  they load with the metadata unknown (eval-notes.md section 8.3).
- A reference is a catalog name (EDM fid-refs, downloaded into the cache; digits-train and digits-test, shipped),
  a statistics .npz, or a folder of images whose statistics are computed once per extractor and cached under
  <cache>/fid-stats/<key>.npz.
- Statistics made by a different extractor are refused when both sides record one; when the reference does not
  record its extractor the result carries a `note` for the caller to show (the engine never prints).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.eval.features import FeatureExtractor
from simcli.eval.image_inputs import FolderImages, list_image_files
from simcli.eval.references import ensure_fid_reference_file
from simcli.rundir.atomic import atomic_write
from simcli.store.cache import cache_dir
from simcli.store.download import DownloadProgressFn
from simcli.teachers.edm_catalog import FID_REFERENCES, get_fid_reference

STATS_FORMAT = "simcli-feature-stats/1"
# References that ship inside the package (simcli/assets), made by examples/digits/make_reference_stats.py.
SHIPPED_REFERENCES = {"digits-train": "digits/stats-train.npz", "digits-test": "digits/stats-test.npz"}
META_KEY = "simcli_meta"
FID_STATS_DIR = "fid-stats"
COV_CHUNK_ROWS = 4096  # rows per block when accumulating the covariance
SYMMETRY_RTOL = 1e-6  # |sigma - sigma^T| allowed, relative to max |sigma|
EDM_DETECTOR = "NVIDIA inception-2015-12-05 port (EDM fid.py)"

ImageProgressFn = Callable[[int], None]
"""Called with the number of images processed so far."""


# ---------------------------------------------------------------------------------------------- statistics


def _mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean [F] and unbiased covariance [F, F] of [N, F] rows, accumulated in row blocks."""
    n, f = features.shape
    mu = np.zeros(f, dtype=np.float64)
    for start in range(0, n, COV_CHUNK_ROWS):
        mu += features[start : start + COV_CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((f, f), dtype=np.float64)
    for start in range(0, n, COV_CHUNK_ROWS):
        block = features[start : start + COV_CHUNK_ROWS].astype(np.float64) - mu
        sigma += block.T @ block
    sigma /= n - 1
    return mu, (sigma + sigma.T) / 2


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Gaussian statistics of features: mu float64 [F], sigma float64 [F, F], and where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None  # number of feature vectors; None when the file does not say
    extractor: str | None = None  # feature extractor name; None when unknown
    weights_sha256: str | None = None
    source: str = ""
    note: str | None = None  # a caveat for the caller to show (not saved)

    @property
    def dim(self) -> int:
        """Feature dimension F."""
        return int(self.mu.shape[0])

    @classmethod
    def from_features(
        cls, features: np.ndarray | torch.Tensor, *, extractor: str | None = None,
        weights_sha256: str | None = None, source: str = "",
    ) -> FeatureStats:
        """Mean and unbiased covariance (float64) of features [N, F], N >= 2."""
        x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if x.ndim != 2 or x.shape[0] < 2:
            raise UsageError(f"statistics need at least 2 feature vectors [N, F], got shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise UsageError("features contain NaN or infinite values")
        mu, sigma = _mean_cov(x)
        return cls(mu, sigma, int(x.shape[0]), extractor, weights_sha256, source)

    def metadata(self) -> dict[str, Any]:
        """The JSON record saved beside mu and sigma."""
        return {"format": STATS_FORMAT, "n": self.n, "extractor": self.extractor,
                "weights_sha256": self.weights_sha256, "source": self.source}

    def save_npz(self, path: str | Path) -> Path:
        """Atomically write simcli's npz: float64 'mu', 'sigma' and the JSON metadata string."""
        path = Path(path)
        arrays = {"mu": self.mu.astype(np.float64), "sigma": self.sigma.astype(np.float64),
                  META_KEY: np.array(json.dumps(self.metadata()))}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(path, write)
        return path


def _refuse(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not usable FID statistics: {why}",
                      hint="expected an .npz with float 'mu' [F] and 'sigma' [F, F] (EDM fid-refs, clean-fid, simcli)")


def _optional_str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return None if value is None else str(value)


def load_stats(path: str | Path) -> FeatureStats:
    """Statistics from simcli's npz or an EDM / clean-fid npz with just mu and sigma (metadata then unknown)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"statistics file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise _refuse(path, "it holds a single array, not an .npz archive")
        with data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                found = ", ".join(data.files) or "nothing"
                raise _refuse(path, f"no {' or '.join(repr(k) for k in missing)} (it has: {found})")
            mu, sigma = data["mu"], data["sigma"]
            raw_meta = str(data[META_KEY]) if META_KEY in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"cannot read it as .npz ({' '.join(str(exc).split())})") from None
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise _refuse(path, f"mu is {mu.dtype} and sigma is {sigma.dtype}, expected floats")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or mu.shape[0] < 1:
        raise _refuse(path, f"mu has shape {tuple(mu.shape)} and sigma {tuple(sigma.shape)}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise _refuse(path, "it contains NaN or infinite values")
    if np.abs(sigma - sigma.T).max() > SYMMETRY_RTOL * max(np.abs(sigma).max(), 1e-300):
        raise _refuse(path, "sigma is not symmetric")
    if raw_meta is None:
        return FeatureStats(mu, sigma, None, source=str(path))
    try:
        meta = json.loads(raw_meta)
        if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else None!r}")
        n = None if meta.get("n") is None else int(meta["n"])
    except (ValueError, TypeError) as exc:
        raise _refuse(path, f"corrupt '{META_KEY}' record ({exc})") from None
    return FeatureStats(mu, sigma, n, _optional_str(meta, "extractor"), _optional_str(meta, "weights_sha256"),
                        str(meta.get("source") or path))


# ---------------------------------------------------------------------------------------------- features


def compute_features(
    batches: Iterable[torch.Tensor], extractor: FeatureExtractor, want_logits: bool = False,
    on_progress: ImageProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(features float64 [N, F], logits float64 [N, K] or None) of uint8 [B, 3, H, W] batches."""
    feats, logits, done = [], [], 0
    with torch.inference_mode():
        for images in batches:
            f, lg = extractor.features(images)
            if f.ndim != 2 or f.shape != (images.shape[0], extractor.feature_dim):
                raise UsageError(f"extractor '{extractor.name}' gave features {tuple(f.shape)} for "
                                 f"{images.shape[0]} images, expected [{images.shape[0]}, {extractor.feature_dim}]")
            feats.append(f.detach().to("cpu", torch.float64).numpy())
            if want_logits:
                if lg is None:
                    raise UsageError(f"extractor '{extractor.name}' gives no logits",
                                     hint="the Inception Score needs an extractor with class logits")
                logits.append(lg.detach().to("cpu", torch.float64).numpy())
            done += images.shape[0]
            if on_progress is not None:
                on_progress(done)
    if not feats:
        raise UsageError("no images to compute features of")
    return np.concatenate(feats), (np.concatenate(logits) if want_logits else None)


# ---------------------------------------------------------------------------------------------- references


def check_compatible(reference: FeatureStats, extractor: FeatureExtractor | FeatureStats) -> str | None:
    """Refuse statistics from another extractor (when both are known); a note when the reference does not say."""
    is_stats = isinstance(extractor, FeatureStats)
    name = extractor.extractor if is_stats else extractor.name
    sha = extractor.weights_sha256
    dim = extractor.dim if is_stats else extractor.feature_dim
    if dim != reference.dim:
        raise UsageError(f"reference statistics have dimension {reference.dim} but features have {dim}",
                         hint="both sides must come from the same feature extractor")
    if reference.extractor is not None and name is not None and reference.extractor != name:
        raise UsageError(f"reference statistics were made with extractor '{reference.extractor}' but the features "
                         f"come from '{name}'", hint="recompute the reference statistics with the same extractor")
    if reference.weights_sha256 and sha and reference.weights_sha256 != sha:
        raise UsageError(f"reference statistics were made with {reference.extractor or 'extractor'} weights "
                         f"sha256 {reference.weights_sha256[:12]}... but the features use {sha[:12]}...",
                         hint="recompute the reference statistics with the same weights")
    if reference.extractor is None or name is None:
        return (f"statistics of {reference.source or 'the reference'} do not record their feature extractor; "
                f"assuming they match '{name or reference.extractor or 'unknown'}'")
    return None


def folder_cache_key(root: Path, files: list[Path], extractor: FeatureExtractor) -> str:
    """sha256 over the sorted relative paths, sizes and mtimes of the files, and the extractor name and weights."""
    h = hashlib.sha256(f"{STATS_FORMAT}\n".encode())
    for path in files:
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(f"extractor\0{extractor.name}\0{extractor.weights_sha256 or ''}\n".encode())
    return h.hexdigest()


def folder_stats_path(key: str) -> Path:
    """Where the cached statistics of a folder live."""
    return cache_dir() / FID_STATS_DIR / f"{key}.npz"


def folder_stats(
    root: Path, extractor: FeatureExtractor, *, batch_size: int | None = None,
    on_progress: ImageProgressFn | None = None,
) -> FeatureStats:
    """Statistics of every image under root, from the cache when the files and extractor are unchanged."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise UsageError(f"image folder not found: {root}")

    def compute(images: FolderImages) -> FeatureStats:
        feats, _ = compute_features(images.batches(batch_size), extractor, on_progress=on_progress)
        return FeatureStats.from_features(feats, extractor=extractor.name, weights_sha256=extractor.weights_sha256,
                                          source=images.description)

    return cached_folder_stats(root, extractor, compute)


def cached_folder_stats(root: Path, extractor: FeatureExtractor, compute: Callable[[FolderImages], FeatureStats]
                        ) -> FeatureStats:
    """compute(the folder's images), cached by the folder's files and the extractor (name and weights): read back
    while they are unchanged, recomputed when the cache entry is damaged."""
    root = Path(root).absolute()
    cached = folder_stats_path(folder_cache_key(root, list_image_files(root), extractor))
    if cached.is_file():
        try:
            return load_stats(cached)
        except UsageError:
            pass  # a damaged cache entry is recomputed and replaced
    stats = compute(FolderImages(root))
    cached.parent.mkdir(parents=True, exist_ok=True)
    stats.save_npz(cached)
    return stats


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".npz") or "/" in ref or "\\" in ref or ref.startswith(".")


def resolve_reference(
    ref: str | Path, extractor: FeatureExtractor | None = None, *, on_download: DownloadProgressFn | None = None,
    on_progress: ImageProgressFn | None = None, batch_size: int | None = None,
) -> FeatureStats:
    """Reference statistics from a folder of images, a statistics .npz, or a catalog name (e.g. 'cifar10-train').

    With an extractor, statistics from another extractor are refused and unknown provenance sets `note`.
    """
    text, path = str(ref), Path(ref)
    if path.is_dir():
        if extractor is None:
            raise UsageError(f"{path} is a folder of images: its statistics need a feature extractor")
        stats = folder_stats(path, extractor, batch_size=batch_size, on_progress=on_progress)
    elif path.is_file():
        stats = load_stats(path)
    elif text in SHIPPED_REFERENCES:
        from simcli.assets import asset_path

        loaded = load_stats(asset_path(SHIPPED_REFERENCES[text]))
        stats = replace(loaded, source=f"shipped reference '{text}', {loaded.source}")
    elif text in FID_REFERENCES or any(text == r.file_name for r in FID_REFERENCES.values()):
        entry = get_fid_reference(text)
        loaded = load_stats(ensure_fid_reference_file(entry, on_progress=on_download))
        stats = replace(loaded, source=f"EDM reference '{entry.name}' ({entry.description}; {EDM_DETECTOR}), "
                                       f"{loaded.source}")
    elif _looks_like_path(text):
        raise UsageError(f"reference statistics not found: {path}")
    else:
        known = ", ".join([*SHIPPED_REFERENCES, *FID_REFERENCES])
        raise UsageError(f"unknown FID reference '{text}'",
                         hint=f"pass a known name ({known}), a statistics .npz or a folder of images")
    if extractor is None:
        return stats
    return replace(stats, note=check_compatible(stats, extractor))
