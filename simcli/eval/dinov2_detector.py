"""EDM2's DINOv2 feature detector (calculate_metrics.py `DINOv2Detector`) as a simcli FeatureExtractor.

Preprocessing of uint8 images [B, 3, H, W], as EDM2 does it (facts read in NVlabs/edm2; code written here):
- resize to 224 x 224, bicubic:
    'torch' (EDM2's default, and how its reference statistics were made): F.interpolate of the images cast to
            float32, mode bicubic, antialias=True; the result is not clamped or rounded;
    'pil'   (EDM2's "slow reference implementation that matches the original dgm-eval codebase"): each image through
            PIL Image.resize((224, 224), BICUBIC) on uint8, so the result is uint8 again;
- then float32 / 255, minus the ImageNet mean (0.485, 0.456, 0.406), divided by the std (0.229, 0.224, 0.225);
- the network's output (the CLS token after the final norm, simcli.eval.dinov2) is the feature, 1024-d for
  ViT-L/14. EDM2 casts it to float64 before accumulating statistics (simcli.eval.fd_dinov2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simcli.errors import UsageError
from simcli.eval.backends.common import check_images, weights_file_sha256
from simcli.eval.dinov2 import Dinov2ViT
from simcli.eval.dinov2_weights import dinov2_weights_path, load_dinov2

Tensor = torch.Tensor

RESIZE = 224
RESIZE_MODES = ("torch", "pil")
DEFAULT_RESIZE_MODE = "torch"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_FORWARD_BATCH = 64  # images per network call (EDM2's default batch); features do not depend on it


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise UsageError(f"unknown DINOv2 resize mode {mode!r}", hint=f"use one of: {', '.join(RESIZE_MODES)}")
    return mode


def resize_224(images: Tensor, mode: str = DEFAULT_RESIZE_MODE) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, 224, 224] in pixel units (0..255, bicubic overshoot kept in 'torch')."""
    check_resize_mode(mode)
    if mode == "torch":
        return F.interpolate(images.to(torch.float32), size=(RESIZE, RESIZE), mode="bicubic", antialias=True)
    pixels = images.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(p), "RGB").resize((RESIZE, RESIZE),
                                                                                   Image.Resampling.BICUBIC))
               for p in pixels]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(images.device, torch.float32)


def normalize(x: Tensor) -> Tensor:
    """Pixels (float32, 0..255) -> x / 255, minus the ImageNet mean, divided by its std, per channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x / 255 - mean) / std


def preprocess(images: Tensor, mode: str = DEFAULT_RESIZE_MODE) -> Tensor:
    """EDM2's DINOv2 input: uint8 [B, 3, H, W] -> normalised float32 [B, 3, 224, 224]."""
    check_images(images)
    return normalize(resize_224(images, mode))


class Dinov2Extractor:
    """FD-DINOv2 features of uint8 images: `features(images)` -> (CLS features [B, D] float32 on the CPU, None)."""

    has_logits = False

    def __init__(self, model: Dinov2ViT, *, weights_path: Path | None = None, device: str | torch.device = "cpu",
                 resize_mode: str = DEFAULT_RESIZE_MODE):
        self.device = torch.device(device)
        self.model = model.requires_grad_(False).eval().to(self.device)
        self.resize_mode = check_resize_mode(resize_mode)
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.feature_dim = model.cfg.embed_dim
        self.name = f"{model.cfg.arch_name}/edm2-{resize_mode}-resize"

    @property
    def weights_sha256(self) -> str | None:
        return None if self.weights_path is None else weights_file_sha256(self.weights_path)

    def features(self, images: Tensor) -> tuple[Tensor, None]:
        check_images(images)
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], MAX_FORWARD_BATCH):
                x = preprocess(images[start : start + MAX_FORWARD_BATCH].to(self.device), self.resize_mode)
                out.append(self.model(x).to("cpu", torch.float32))
        if not out:
            return torch.zeros(0, self.feature_dim), None
        return torch.cat(out), None

    def __repr__(self) -> str:
        return f"Dinov2Extractor(name={self.name!r}, weights={self.weights_path}, device={self.device})"


def get_dinov2_extractor(
    weights: Path | str | None = None, *, device: str | torch.device = "cpu", resize_mode: str = DEFAULT_RESIZE_MODE
) -> Dinov2Extractor:
    """The FD-DINOv2 extractor with weights from `weights`, torch hub's cache or simcli's (see dinov2_weights)."""
    check_resize_mode(resize_mode)
    path = dinov2_weights_path(weights)
    return Dinov2Extractor(load_dinov2(path), weights_path=path, device=device, resize_mode=resize_mode)
