"""What every feature backend shares: the image contract, weights lookup and download, one-line errors.

The backends import this module, never `simcli.eval.features` (which builds them), so the two stay a one-way
street: features -> backends -> common.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from simcli.errors import UsageError
from simcli.store.torch_files import unpickler_detail

Tensor = torch.Tensor

DEFAULT_MODE = "legacy_tensorflow"
CLEAN_FID_MODES = ("legacy_tensorflow", "clean", "legacy_pytorch")

_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def weights_file_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) and then served from memory."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        digest = _SHA256_CACHE[key] = h.hexdigest()
    return digest


def check_images(images: Tensor) -> None:
    """The input contract of `FeatureExtractor.features`: a uint8 tensor [B, 3, H, W]."""
    if not torch.is_tensor(images) or images.dtype != torch.uint8:
        raise ValueError(f"feature extractors take uint8 images, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"feature extractors take images [B, 3, H, W], got {list(images.shape)}")


def missing_weights_error(what: str, file_name: str, url: str, destination: Path, why: str = "") -> UsageError:
    """The one-line error for absent weights: names the file, its URL and where simcli reads it from."""
    because = f" ({why})" if why else ""
    return UsageError(
        f"{what} weights {file_name} are not available{because}; URL: {url}",
        hint=f"download it and pass --feature-weights PATH, or save it as {destination}",
    )


def weights_cache_path(file_name: str) -> Path:
    """Where simcli keeps feature-extractor weights it downloads: <cache>/weights/<file name>."""
    from simcli.store.cache import cache_dir

    return cache_dir() / "weights" / file_name


def locate_weights(what: str, file_name: str, url: str, library_path: Path, feature_weights: Path | None) -> Path:
    """The weights file to read: --feature-weights, else the library's own cache, else simcli's cache, where
    it is downloaded (resumable, size-checked) unless offline; never into the library's own directories."""
    if feature_weights is not None:
        return feature_weights
    if library_path.is_file():
        return library_path
    from simcli.store.download import ensure_file

    dest = weights_cache_path(file_name)
    try:
        return ensure_file(url, dest)
    except (UsageError, OSError) as exc:
        why = "offline" if "OFFLINE" in str(exc) else "the download failed"
        raise missing_weights_error(what, file_name, url, dest, why) from None


def load_error(what: str, path: Path, exc: BaseException) -> UsageError:
    """A one-line UsageError for a weights file that exists but cannot be loaded."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, pickle.UnpicklingError):  # torch's weights_only refusal: its one telling line, not its advice
        first = unpickler_detail(str(exc))
    return UsageError(
        f"could not load {what} weights from {path}: {type(exc).__name__}: {first}",
        hint="the file is truncated or is not the expected weights file; download it again",
    )


def import_backend_library(module: str, package: str, extra: str = "eval"):
    """Import an optional library, or raise UsageError naming the simcli extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"the {package} backend needs the {package} package ({exc})",
            hint=f"pip install 'simcli[{extra}]' (in a checkout: pip install -e '.[{extra}]')",
        ) from None
