"""Feature extractors for FID/KID/IS: one interface over torch-fidelity, clean-fid, the digits classifier and
registered test extractors.

Every extractor takes uint8 images [B, 3, H, W] (any size, any device) and returns pool features [B, F] and,
when it has a classifier head, logits [B, K] for the Inception Score. Both come back on the CPU in the dtype the
backend produces (float32 for both libraries; accumulate statistics in float64). Each image is processed on
its own (eval-mode networks, per-image resizing), so results do not depend on the batch size beyond float
rounding.

Backends (the names `get_extractor` resolves; see eval-notes.md sections 2 and 3):
    torch-fidelity   its `inception-v3-compat` network: pool3 features '2048' and 'logits_unbiased' (1008
                     classes, no fc bias, as torch-fidelity's IS uses), TF1-exact bilinear resize to 299.
                     Code: simcli/eval/backends/torch_fidelity_backend.py.
    clean-fid        FID/KID features only (`has_logits` is False, so IS must be refused by the caller), with
                     the resize of `mode`: legacy_tensorflow (default; resize inside NVIDIA's TorchScript
                     Inception), clean (PIL bicubic on float) or legacy_pytorch (torch bilinear + pytorch-fid
                     Inception). Code: simcli/eval/backends/clean_fid_backend.py.
    digits           the shipped 8x8 digits classifier: a 64-d feature layer and 10 logits (FID and IS on the
                     digits teacher; no extra library). Code: simcli/eval/backends/digits_backend.py.
    any other name   a factory added with `register_extractor` (tests plug in tiny networks this way).

simcli never downloads Inception weights. Without `feature_weights` the backend looks for the file where its
library would cache it; when the file is missing it raises UsageError naming the file, its URL and where to
put it, before the library could try the network. This holds with and without SIMCLI_OFFLINE=1.

The libraries are an optional extra (`simcli[eval]`) and are imported only when a backend is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from simcli.errors import UsageError
from simcli.eval.backends.common import CLEAN_FID_MODES, DEFAULT_MODE, weights_file_sha256

Tensor = torch.Tensor

DEFAULT_BACKEND = "torch-fidelity"


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the FID/IS/KID code consumes.

    name            identifies the pipeline in statistics metadata, e.g. 'torch-fidelity/inception-v3-compat',
                    'clean-fid/legacy_tensorflow' or a registered test name
    feature_dim     F, the width of the pool features (2048 for Inception)
    weights_sha256  sha256 of the weights file used (computed on first access, then cached), None when unknown
    has_logits      whether `features` returns logits (needed for IS)
    """

    name: str
    feature_dim: int
    has_logits: bool

    @property
    def weights_sha256(self) -> str | None: ...

    def features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """uint8 [B, 3, H, W] on any device -> (pool features [B, F], logits [B, K] or None), on the CPU."""
        ...


ExtractorFactory = Callable[..., FeatureExtractor]
"""Called as factory(feature_weights=Path | None, device=torch.device, mode=str) -> FeatureExtractor."""

_REGISTRY: dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory, *, replace: bool = False) -> None:
    """Make `get_extractor(name)` build an extractor with `factory(feature_weights=, device=, mode=)`.

    Registering the same factory twice is a no-op (pytest may import a helper module twice); another factory
    under a taken name raises ValueError unless `replace` is set.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"extractor name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(factory):
        raise ValueError(f"extractor factory for {name!r} is not callable")
    current = _REGISTRY.get(name)
    if current is not None and current is not factory and not replace:
        raise ValueError(f"feature extractor {name!r} is already registered")
    _REGISTRY[name] = factory


def unregister_extractor(name: str) -> None:
    """Remove a registered name (tests clean up with this); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered_extractors() -> list[str]:
    """All names `get_extractor` accepts, sorted."""
    return sorted(_REGISTRY)


def lookup_extractor(name: str) -> ExtractorFactory:
    """The factory registered under `name`; UsageError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(registered_extractors())
        raise UsageError(f"unknown feature backend {name!r}", hint=f"use one of: {known}") from None


def get_extractor(
    backend: str = DEFAULT_BACKEND,
    *,
    feature_weights: Path | str | None = None,
    device: str | torch.device = "cpu",
    mode: str = DEFAULT_MODE,
) -> FeatureExtractor:
    """Build the feature extractor of `backend` (a registered name) on `device`.

    feature_weights  a local weights file, read in place (never copied); None: the library's usual cache
                     location, and a UsageError when the file is not there (nothing is downloaded)
    mode             clean-fid's resize mode (legacy_tensorflow, clean, legacy_pytorch); torch-fidelity only
                     does legacy_tensorflow (TF1-exact bilinear)
    """
    factory = lookup_extractor(backend)
    weights = None if feature_weights is None else Path(feature_weights).expanduser()
    if weights is not None and not weights.is_file():
        raise UsageError(
            f"feature weights file not found: {weights}",
            hint="--feature-weights must name an existing weights file",
        )
    return factory(feature_weights=weights, device=torch.device(device), mode=mode)


def _torch_fidelity_factory(*, feature_weights: Path | None, device: torch.device, mode: str) -> FeatureExtractor:
    from simcli.eval.backends.torch_fidelity_backend import make_inception_extractor

    return make_inception_extractor(feature_weights=feature_weights, device=device, mode=mode)


def _clean_fid_factory(*, feature_weights: Path | None, device: torch.device, mode: str) -> FeatureExtractor:
    from simcli.eval.backends.clean_fid_backend import make_clean_fid_extractor

    return make_clean_fid_extractor(feature_weights=feature_weights, device=device, mode=mode)


def _digits_factory(*, feature_weights: Path | None, device: torch.device, mode: str) -> FeatureExtractor:
    from simcli.eval.backends.digits_backend import make_digits_extractor

    return make_digits_extractor(feature_weights=feature_weights, device=device, mode=mode)


register_extractor("torch-fidelity", _torch_fidelity_factory)
register_extractor("clean-fid", _clean_fid_factory)
register_extractor("digits", _digits_factory)

__all__ = [
    "CLEAN_FID_MODES",
    "DEFAULT_BACKEND",
    "DEFAULT_MODE",
    "FeatureExtractor",
    "get_extractor",
    "lookup_extractor",
    "register_extractor",
    "registered_extractors",
    "unregister_extractor",
    "weights_file_sha256",
]
