"""clean-fid backend: clean-fid's Inception networks and per-mode resizing, for FID/KID features (no logits).

Sources (clean-fid 0.1.35, read in site-packages):
- features.py `feature_extractor` / `build_feature_extractor`: legacy_tensorflow and clean use NVIDIA's
  TorchScript Inception from the directory "/tmp" ("./" on Windows), resizing inside the network only for
  legacy_tensorflow; legacy_pytorch uses the pytorch-fid Inception called as `model(x / 255)[0]`.
- downloads_helper.py: `inception_url`; `check_download_inception(dir)` fetches it to `<dir>/inception-2015-12-05.pt`
  with urllib when the file is absent (no hash check).
- inception_torchscript.py `InceptionV3W.forward`: with resize_inside `base(x, return_features=True)`; otherwise
  it expects 299x299 and runs `base.layers((x - 128) / 128)`.
- inception_pytorch.py: `FID_WEIGHTS_URL`; `fid_inception_v3` loads it with torch.hub's
  `load_state_dict_from_url` (cache: `<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth`).
- resize.py `build_resizer(mode)` and utils.py `ResizeDataset.__getitem__`: an HxWx3 uint8 image is resized by
  the mode's function (identity for legacy_tensorflow; float32 results for the other two), then turned into a
  CHW tensor by torchvision's ToTensor: uint8 becomes x / 255 * 255 (float32), float32 is kept as is.

`CleanFidExtractor.preprocess` reproduces that folder pipeline with clean-fid's own resizer, so a callable given
to clean-fid as `custom_feat_extractor` sees the same tensors through simcli as through `compute_fid`.

Weights are read in place from `feature_weights`, never copied: the TorchScript file is opened with
`torch.jit.load(path)` by a small wrapper doing what `InceptionV3W.forward` does (InceptionV3W itself only takes
a directory holding the fixed file name). The pytorch-fid network cannot be given a path through clean-fid's
API, so while it is being built simcli swaps clean-fid's module-level `load_state_dict_from_url` for a reader
of the local file and restores it right after (not safe against building two of them at once from threads).
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.eval.backends.common import (
    CLEAN_FID_MODES,
    DEFAULT_MODE,
    check_images,
    import_backend_library,
    load_error,
    locate_weights,
    weights_file_sha256,
)

Tensor = torch.Tensor

TORCHSCRIPT_FILE = "inception-2015-12-05.pt"  # the name check_download_inception writes


def cleanfid_inception_dir() -> Path:
    """The fixed directory clean-fid downloads its TorchScript Inception to ("/tmp", or "./" on Windows)."""
    return Path("./") if platform.system() == "Windows" else Path("/tmp")


def torchscript_location() -> tuple[str, str, Path]:
    """(file name, URL, clean-fid's fixed path) of the TorchScript Inception (modes clean, legacy_tensorflow)."""
    helper = import_backend_library("cleanfid.downloads_helper", "clean-fid")
    return TORCHSCRIPT_FILE, helper.inception_url, cleanfid_inception_dir() / TORCHSCRIPT_FILE


def pytorch_inception_location() -> tuple[str, str, Path]:
    """(file name, URL, torch hub cache path) of the pytorch-fid Inception weights (mode legacy_pytorch)."""
    module = import_backend_library("cleanfid.inception_pytorch", "clean-fid")
    url = module.FID_WEIGHTS_URL
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return path.name, url, path


class CleanFidExtractor:
    """Any clean-fid style feature callable (float [0, 255] images in, [B, F] out) behind simcli's interface."""

    has_logits = False

    def __init__(
        self,
        model_fn: Callable[[Tensor], Tensor],
        *,
        mode: str = DEFAULT_MODE,
        name: str | None = None,
        feature_dim: int,
        device: str | torch.device = "cpu",
        weights_path: Path | None = None,
    ):
        if mode not in CLEAN_FID_MODES:
            raise UsageError(f"unknown clean-fid mode {mode!r}", hint=f"use one of: {', '.join(CLEAN_FID_MODES)}")
        resize = import_backend_library("cleanfid.resize", "clean-fid")
        self._resize = resize.build_resizer(mode)
        self.model_fn = model_fn
        self.mode = mode
        self.name = name or f"clean-fid/{mode}"
        self.feature_dim = int(feature_dim)
        self.device = torch.device(device)
        self.weights_path = None if weights_path is None else Path(weights_path)

    @property
    def weights_sha256(self) -> str | None:
        return None if self.weights_path is None else weights_file_sha256(self.weights_path)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, 3, h, w] in [0, 255] on the CPU, as clean-fid's folder loader makes it."""
        check_images(images)
        images = images.detach().to("cpu")
        if self.mode == "legacy_tensorflow":  # identity resizer, then ToTensor() * 255 of uint8
            return images.to(torch.float32).div(255).mul(255)
        out = []
        for img in images.permute(0, 2, 3, 1).numpy():  # HxWx3 uint8, as PIL gives it
            resized = np.asarray(self._resize(img), dtype=np.float32)
            out.append(torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))))
        return torch.stack(out)

    def features(self, images: Tensor) -> tuple[Tensor, None]:
        """uint8 [B, 3, H, W] -> (pool features [B, F] float32 on the CPU, None)."""
        x = self.preprocess(images).to(self.device)
        with torch.no_grad():
            feats = self.model_fn(x)
        return torch.as_tensor(feats).detach().to("cpu").reshape(x.shape[0], -1), None

    def __repr__(self) -> str:
        return f"CleanFidExtractor(name={self.name!r}, weights={self.weights_path}, device={self.device})"


class TorchScriptInception(torch.nn.Module):
    """NVIDIA's TorchScript Inception read from any path; forward as clean-fid's `InceptionV3W.forward`."""

    def __init__(self, path: Path, *, resize_inside: bool, device: torch.device):
        super().__init__()
        self.base = torch.jit.load(str(path), map_location=device).eval()
        self.resize_inside = resize_inside

    def forward(self, x: Tensor) -> Tensor:
        if self.resize_inside:
            return self.base(x, return_features=True).reshape(x.shape[0], -1)
        if x.shape[2:] != (299, 299):
            raise ValueError(f"the clean-mode Inception expects 299x299 inputs, got {tuple(x.shape[2:])}")
        return self.base.layers((x - 128) / 128).reshape(x.shape[0], -1)


@contextlib.contextmanager
def _swapped(module, attr: str, value):
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


def load_pytorch_inception(path: Path, device: torch.device) -> Callable[[Tensor], Tensor]:
    """clean-fid's pytorch-fid Inception with weights from `path`, as the callable clean-fid builds for it."""
    module = import_backend_library("cleanfid.inception_pytorch", "clean-fid")

    def read_local(url, *args, **kwargs):  # stands in for torch.hub's load_state_dict_from_url
        return torch.load(str(path), map_location="cpu", weights_only=True)

    with _swapped(module, "load_state_dict_from_url", read_local), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation inside fid_inception_v3
        net = module.InceptionV3(output_blocks=[3], resize_input=False)
    net = net.requires_grad_(False).eval().to(device)

    def model_fn(x: Tensor) -> Tensor:
        return net(x / 255)[0].squeeze(-1).squeeze(-1)

    model_fn.net = net  # keep a handle for inspection
    return model_fn


def make_clean_fid_extractor(
    *, feature_weights: Path | None, device: str | torch.device = "cpu", mode: str = DEFAULT_MODE
) -> CleanFidExtractor:
    """clean-fid's Inception for `mode`, weights from `feature_weights` or clean-fid's own location (no download)."""
    if mode not in CLEAN_FID_MODES:
        raise UsageError(f"unknown clean-fid mode {mode!r}", hint=f"use one of: {', '.join(CLEAN_FID_MODES)}")
    device = torch.device(device)
    torchscript = mode != "legacy_pytorch"
    file_name, url, library_path = torchscript_location() if torchscript else pytorch_inception_location()
    path = locate_weights(f"clean-fid Inception ({mode})", file_name, url, library_path, feature_weights)
    try:
        if torchscript:
            model_fn = TorchScriptInception(path, resize_inside=mode == "legacy_tensorflow", device=device)
        else:
            model_fn = load_pytorch_inception(path, device)
    except Exception as exc:  # not TorchScript / not a state dict / wrong keys
        raise load_error(f"clean-fid Inception ({mode})", path, exc) from exc
    return CleanFidExtractor(
        model_fn, mode=mode, name=f"clean-fid/{mode}", feature_dim=2048, device=device, weights_path=path
    )
