"""torch-fidelity backend: its registered feature extractors, with `inception-v3-compat` as the FID/IS network.

Sources (torch-fidelity 0.4.0, read in site-packages):
- feature_extractor_inceptionv3.py: `URL_INCEPTION_V3` (the weights' URL); `forward` takes uint8 Bx3xHxW,
  resizes to 299 with `interpolate_bilinear_2d_like_tensorflow1x` and scales (x - 128) / 128, then returns the
  requested layers: '2048' (pool3) and 'logits_unbiased' (pool3 @ fc.weight.T, no bias: the IS layer). With
  `feature_extractor_weights_path` it reads the file with `torch.load(path, weights_only=False)`; without it it
  calls `torch.hub.load_state_dict_from_url(URL)`, which downloads when the file is not cached.
- torch/hub.py `load_state_dict_from_url`: the cache file is `<torch.hub.get_dir()>/checkpoints/<basename of
  the URL path>`, and `get_dir()` is `$TORCH_HOME/hub` (default ~/.cache/torch/hub) unless `set_dir` was called.
- registry.py / utils.py `create_feature_extractor`: extractors are classes in `FEATURE_EXTRACTORS_REGISTRY`,
  built as `cls(name, features_list, **kwargs)`; `get_default_feature_layer_for_metric('fid' | 'isc')` names
  their layers.

simcli looks for the cached file itself and always passes a path, so torch-fidelity never reaches the download.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from simcli.errors import UsageError
from simcli.eval.backends.common import (
    DEFAULT_MODE,
    check_images,
    import_backend_library,
    load_error,
    locate_weights,
    weights_file_sha256,
)

Tensor = torch.Tensor

INCEPTION_NAME = "inception-v3-compat"
_KNOWN_DIMS = {INCEPTION_NAME: (2048, 1008)}  # pool3 width, classes of 'logits_unbiased'


def inception_weights_url() -> str:
    """torch-fidelity's URL for the Inception weights (read from the installed library)."""
    module = import_backend_library("torch_fidelity.feature_extractor_inceptionv3", "torch-fidelity")
    return module.URL_INCEPTION_V3


def hub_checkpoint_path(url: str) -> Path:
    """Where `torch.hub.load_state_dict_from_url(url)` keeps its file (honours TORCH_HOME and hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def inception_weights_location() -> tuple[str, str, Path]:
    """(file name, URL, hub cache path) of the `inception-v3-compat` weights."""
    url = inception_weights_url()
    path = hub_checkpoint_path(url)
    return path.name, url, path


class TorchFidelityExtractor:
    """A torch-fidelity registered extractor behind simcli's `FeatureExtractor` interface.

    Pool features are the extractor's 'fid' layer; logits are its 'isc' layer when it has one.
    """

    def __init__(
        self,
        fe_name: str,
        *,
        weights_path: Path | None = None,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ):
        if fe_name == INCEPTION_NAME and weights_path is None:
            raise ValueError("inception-v3-compat needs a weights path (torch-fidelity would download otherwise)")
        registry = import_backend_library("torch_fidelity.registry", "torch-fidelity")
        cls = registry.FEATURE_EXTRACTORS_REGISTRY.get(fe_name)
        if cls is None:
            known = ", ".join(sorted(registry.FEATURE_EXTRACTORS_REGISTRY))
            raise UsageError(f"torch-fidelity has no feature extractor {fe_name!r}", hint=f"known: {known}")
        feature_layer = cls.get_default_feature_layer_for_metric("fid")
        try:
            logits_layer = cls.get_default_feature_layer_for_metric("isc")
        except (KeyError, NotImplementedError):
            logits_layer = None
        layers = [feature_layer] + ([logits_layer] if logits_layer else [])
        kwargs: dict = {"verbose": False}
        if weights_path is not None:
            kwargs["feature_extractor_weights_path"] = str(weights_path)
        try:
            module = cls(fe_name, layers, **kwargs)
        except Exception as exc:  # torch.load / load_state_dict failures on a bad file
            if weights_path is None:
                raise
            raise load_error(f"torch-fidelity {fe_name}", weights_path, exc) from exc

        self.device = torch.device(device)
        self.module = module.requires_grad_(False).eval().to(self.device)
        self.name = name or f"torch-fidelity/{fe_name}"
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.has_logits = logits_layer is not None
        if fe_name in _KNOWN_DIMS:
            self.feature_dim, self.num_classes = _KNOWN_DIMS[fe_name]
        else:  # ask the network itself
            feats, logits = self.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
            self.feature_dim = int(feats.shape[1])
            self.num_classes = None if logits is None else int(logits.shape[1])

    @property
    def weights_sha256(self) -> str | None:
        return None if self.weights_path is None else weights_file_sha256(self.weights_path)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """uint8 [B, 3, H, W] -> (pool features [B, F], logits [B, K] or None), float32 on the CPU."""
        check_images(images)
        with torch.no_grad():
            out = self.module(images.to(self.device))
        feats = out[0].detach().to("cpu")
        logits = out[1].detach().to("cpu") if self.has_logits else None
        return feats, logits

    def __repr__(self) -> str:
        return f"TorchFidelityExtractor(name={self.name!r}, weights={self.weights_path}, device={self.device})"


def make_inception_extractor(
    *, feature_weights: Path | None, device: str | torch.device = "cpu", mode: str = DEFAULT_MODE
) -> TorchFidelityExtractor:
    """torch-fidelity's `inception-v3-compat`, weights from `feature_weights` or torch hub's cache (no download)."""
    if mode != "legacy_tensorflow":
        raise UsageError(
            f"torch-fidelity resizes like TensorFlow 1 only (mode legacy_tensorflow), not {mode!r}",
            hint="use --backend clean-fid for the clean or legacy_pytorch modes",
        )
    file_name, url, library_path = inception_weights_location()
    path = locate_weights("torch-fidelity Inception (inception-v3-compat)", file_name, url, library_path, feature_weights)
    return TorchFidelityExtractor(
        INCEPTION_NAME, weights_path=path, device=device, name=f"torch-fidelity/{INCEPTION_NAME}"
    )
