"""A tiny deterministic feature extractor for FID/IS tests, plugged into simcli, torch-fidelity and clean-fid.

The network (fixed seed, no weights file): float images in [0, 255] -> (x - 128) / 128 -> average-pooled to
32x32 when larger (clean-fid's clean/legacy_pytorch modes hand it 299x299) -> 3x3 conv (16) + ReLU -> 4x4/4 conv
(64) + tanh -> mean over space = 64-d features -> linear = 10 logits.

`register_tiny_extractors()` registers it (idempotently, since pytest may import this module twice):
- with torch-fidelity as feature extractor TINY_NAME (layers 'feat' for FID/KID/PRC and 'logits' for IS), so
  `torch_fidelity.calculate_metrics(feature_extractor=TINY_NAME, ...)` runs with it;
- with simcli as backend TINY_NAME (simcli's torch-fidelity plumbing around that registered class) and as
  backend TINY_CLEANFID_NAME (simcli's clean-fid plumbing, feeding `tiny_cleanfid_fn` the same tensors that
  clean-fid's `compute_fid(..., custom_feat_extractor=tiny_cleanfid_fn, mode=...)` feeds it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TINY_NAME = "simcli-test-tiny"
TINY_CLEANFID_NAME = "simcli-test-tiny-cleanfid"
FEATURE_DIM = 64
NUM_CLASSES = 10
SEED = 1234


class TinyNet(torch.nn.Module):
    """Fixed-seed conv net: float [B, 3, H, W] in [0, 255] -> (features [B, 64], logits [B, 10])."""

    def __init__(self, seed: int = SEED):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, FEATURE_DIM, 4, stride=4)
        self.fc = torch.nn.Linear(FEATURE_DIM, NUM_CLASSES)
        gen = torch.Generator().manual_seed(seed)  # leaves the global RNG alone
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x.to(torch.float32) - 128) / 128
        if x.shape[-1] > 32 or x.shape[-2] > 32:
            x = F.adaptive_avg_pool2d(x, (32, 32))
        x = F.relu(self.conv1(x))
        x = torch.tanh(self.conv2(x))  # not ReLU: no dead feature dims, so covariances stay full rank
        feats = x.mean(dim=(2, 3))
        return feats, self.fc(feats)


_NET: TinyNet | None = None


def tiny_net() -> TinyNet:
    """The shared instance (built on first use)."""
    global _NET
    if _NET is None:
        _NET = TinyNet()
    return _NET


def tiny_cleanfid_fn(x: torch.Tensor) -> torch.Tensor:
    """clean-fid `custom_feat_extractor`: float [B, 3, h, w] in [0, 255] -> features [B, 64]."""
    return tiny_net().to(x.device)(x)[0]


def _tiny_fidelity_class():
    """A torch-fidelity FeatureExtractorBase subclass around the tiny net (built lazily: imports torch_fidelity)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class TinyFidelityExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = TinyNet()

        def forward(self, x):
            if not (torch.is_tensor(x) and x.dtype == torch.uint8):
                raise ValueError("Expecting image as torch.Tensor with dtype=torch.uint8")
            feats, logits = self.net(x)
            out = {"feat": feats, "logits": logits}
            return tuple(out[a] for a in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return "feat", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    return TinyFidelityExtractor


def _simcli_fidelity_factory(*, feature_weights=None, device="cpu", mode="legacy_tensorflow"):
    from simcli.eval.backends.torch_fidelity_backend import TorchFidelityExtractor

    return TorchFidelityExtractor(TINY_NAME, weights_path=None, device=device, name=TINY_NAME)


def _simcli_cleanfid_factory(*, feature_weights=None, device="cpu", mode="legacy_tensorflow"):
    from simcli.eval.backends.clean_fid_backend import CleanFidExtractor

    return CleanFidExtractor(
        tiny_cleanfid_fn, mode=mode, name=f"{TINY_CLEANFID_NAME}/{mode}", feature_dim=FEATURE_DIM, device=device
    )


def register_tiny_extractors() -> None:
    """Register the tiny extractor with torch-fidelity (TINY_NAME) and simcli (TINY_NAME, TINY_CLEANFID_NAME)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from simcli.eval.features import register_extractor

    if TINY_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # registering a taken name raises ValueError
        torch_fidelity.register_feature_extractor(TINY_NAME, _tiny_fidelity_class())
    register_extractor(TINY_NAME, _simcli_fidelity_factory, replace=True)
    register_extractor(TINY_CLEANFID_NAME, _simcli_cleanfid_factory, replace=True)
