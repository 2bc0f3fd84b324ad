"""The digits feature network: a small classifier whose 64-d layer plays Inception's part for 8x8 digits.

Trained by examples/digits/train_classifier.py on the training split of scikit-learn's digits and shipped as
simcli/assets/digits/classifier.safetensors. Images reach it as every backend gets them, uint8 [B, 3, H, W]
(grayscale repeated); it reads the first channel, which must be 8x8. Features are the 64-d layer, logits the
10-way head (so the Inception-style score is at most 10).
"""

from __future__ import annotations

from pathlib import Path

import torch

from simcli.errors import UsageError
from simcli.eval.backends.common import check_images, load_error, weights_file_sha256
from simcli.nets.digits_classifier import DigitsClassifier
from simcli.rundir.network_file import CLASSIFIER_FORMAT, load_network_file

Tensor = torch.Tensor

DIGITS_BACKEND = "digits"
CLASSIFIER_FILE = "digits/classifier.safetensors"  # in simcli/assets
IMAGE_SIZE = 8


def load_digits_classifier(path: Path) -> tuple[DigitsClassifier, dict]:
    """The classifier of a weights file (eval mode, frozen) and its decoded metadata."""
    tensors, meta = load_network_file(path, CLASSIFIER_FORMAT)
    try:
        architecture = dict(meta["architecture"])
        architecture.pop("class_name", None)
        net = DigitsClassifier(**architecture)
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise load_error("digits classifier", path, exc) from None
    return net.eval().requires_grad_(False), meta


class DigitsExtractor:
    """`FeatureExtractor` over the digits classifier: features [B, 64], logits [B, 10], float32 on the CPU."""

    has_logits = True

    def __init__(self, weights_path: Path, device: torch.device):
        self.weights_path = Path(weights_path)
        self.device = torch.device(device)
        net, self.metadata = load_digits_classifier(self.weights_path)
        self.net = net.to(self.device)
        self.name = f"{DIGITS_BACKEND}/classifier-{net.feature_dim}"
        self.feature_dim = net.feature_dim
        self.num_classes = net.num_classes

    @property
    def weights_sha256(self) -> str:
        return weights_file_sha256(self.weights_path)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        check_images(images)
        if tuple(images.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise UsageError(f"the digits backend scores 8x8 images, got {images.shape[2]}x{images.shape[3]}",
                             hint="use --backend torch-fidelity or clean-fid for other images")
        with torch.no_grad():
            feats, logits = self.net(images[:, :1].to(self.device))
        return feats.to("cpu", torch.float32), logits.to("cpu", torch.float32)

    def __repr__(self) -> str:
        return f"DigitsExtractor(weights={self.weights_path}, device={self.device})"


def make_digits_extractor(*, feature_weights: Path | None, device: torch.device, mode: str) -> DigitsExtractor:
    """The shipped classifier, or the one in `feature_weights`; `mode` does not apply."""
    if feature_weights is None:
        from simcli.assets import asset_path

        feature_weights = asset_path(CLASSIFIER_FILE)
    return DigitsExtractor(feature_weights, device)
