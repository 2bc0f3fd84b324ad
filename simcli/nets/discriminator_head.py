"""DMD2's GAN classifier head ("cls_pred_branch") on the fake-score network's bottleneck features.

DMD2 (Yin et al. 2024), main/edm/edm_guidance.py:47-57, for its EDM ImageNet-64 DhariwalUNet (bottleneck: the last
encoder block's output, 768 channels at 8x8; third_party/edm/training/networks.py:451-458, main/edm/edm_network.py:3-13).
"""

from __future__ import annotations

import torch
from torch import nn

DMD2_KERNEL = 4
"""Both strided convolutions' kernel (edm_guidance.py:49, :52)."""
DMD2_FIRST_STRIDE, DMD2_FIRST_PADDING = 2, 1
"""The first convolution: 8x8 -> 4x4 (edm_guidance.py:49)."""
DMD2_GROUPS = 32
"""GroupNorm groups (edm_guidance.py:50, :53)."""


def norm_groups(channels: int, groups: int = DMD2_GROUPS) -> int:
    """The largest divisor of `channels` that is <= `groups` (DMD2's 32 for 768 channels, edm_guidance.py:50)."""
    if channels < 1 or groups < 1:
        raise ValueError(f"channels and groups must be positive, got {channels} and {groups}")
    return max(g for g in range(1, min(channels, groups) + 1) if channels % g == 0)


def head_geometry(resolution: int) -> tuple[tuple[int, int, int], int, int]:
    """((kernel, stride, padding) of the first convolution, kernel = stride of the second, the logit map's side)."""
    if resolution < 1:
        raise ValueError(f"the bottleneck's side must be positive, got {resolution}")
    first = (DMD2_KERNEL, DMD2_FIRST_STRIDE, DMD2_FIRST_PADDING) if resolution >= 2 else (1, 1, 0)
    k, s, p = first
    side = (resolution + 2 * p - k) // s + 1  # after the first convolution
    second = max(1, min(DMD2_KERNEL, side))  # DMD2's k4 s4 wherever side >= 4 (edm_guidance.py:52)
    return first, second, (side - second) // second + 1


class DiscriminatorHead(nn.Module):
    """DMD2's classifier head: Conv k4 s2 p1 -> GroupNorm -> SiLU -> Conv k4 s4 -> GroupNorm -> SiLU -> Conv k1 -> 1
    channel, every layer with the bottleneck's channel count, biases on, PyTorch's default initialisation (DMD2 sets
    none: edm_guidance.py:47-57), run in float32 on the features cast to float32 (edm_guidance.py:185-189).

    Adaptation for simcli's bottlenecks: with resolution >= 8 the layers are DMD2's exactly (8x8 -> 4x4 -> 1x1; a
    larger map leaves a larger logit map, e.g. 16 -> 8 -> 2). Below 8 the first convolution keeps k4 s2 p1 while the
    map is at least 2x2 (else it is k1 s1 p0), and the second uses kernel = stride = max(1, min(4, side after the
    first)), so small maps also end at 1x1 (4 -> 2 -> 1, 2 -> 1 -> 1, 1 -> 1 -> 1). GroupNorm uses the largest
    divisor of `channels` that is <= `groups` (32 for DMD2's 768 and CIFAR-10's 256; 32 for 64 and 96; 8 for 40).
    """

    def __init__(self, channels: int, resolution: int, groups: int = DMD2_GROUPS):
        super().__init__()
        (k1, s1, p1), k2, self.out_side = head_geometry(resolution)
        g = norm_groups(channels, groups)
        self.channels, self.resolution = channels, resolution
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=k1, stride=s1, padding=p1),
            nn.GroupNorm(num_groups=g, num_channels=channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=k2, stride=k2, padding=0),
            nn.GroupNorm(num_groups=g, num_channels=channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, kernel_size=1, stride=1, padding=0),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C, h, w] (any float dtype) -> logits [B, 1, h', w'] in float32."""
        return self.layers(features.float())  # [B, 1, h', w']


def head_parameter_count(channels: int, resolution: int, groups: int = DMD2_GROUPS) -> int:
    """The head's parameter count from its layer shapes, without building it (DMD2: 18,879,745 for 768 at 8x8)."""
    norm_groups(channels, groups)  # the same argument checks as the module
    (k1, _, _), k2, _ = head_geometry(resolution)
    conv1 = channels * channels * k1 * k1 + channels
    conv2 = channels * channels * k2 * k2 + channels
    norms = 2 * (2 * channels)  # two GroupNorms, weight and bias each
    conv3 = channels + 1
    return conv1 + conv2 + norms + conv3
