"""A small CNN for 8x8 digits whose 64-d layer is the feature space of FID on the digits data set.

Input is uint8 [B, 1, 8, 8], the form every sample takes after EDM's uint8 conversion
(x * 127.5 + 128, clipped), so real digits and generated ones go through exactly the same path.
Pure torch: nothing from the rest of simcli.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DigitsClassifier(nn.Module):
    """Three 3x3 conv layers, a 64-d feature layer and a 10-way linear head.

    forward(images_uint8 [B, 1, 8, 8]) -> (features [B, 64], logits [B, 10]). The features are the
    feature layer's pre-activation output (every unit carries variance, which a Frechet distance wants);
    the head sees their ReLU.
    """

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 64), feature_dim: int = 64, num_classes: int = 10,
                 dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)  # 8x8
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)  # 8x8 -> pool -> 4x4
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)  # 4x4 -> pool -> 2x2
        self.fc = nn.Linear(c3 * 2 * 2, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (or integer-valued) [B, 1, 8, 8] -> float32 about [-1, 1] as (u - 128) / 127.5."""
        return (images_uint8.to(torch.float32) - 128) / 127.5

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.to_float(images_uint8)  # [B, 1, 8, 8]
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [B, c2, 4, 4]
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # [B, c3, 2, 2]
        features = self.fc(x.flatten(1))  # [B, 64]
        logits = self.head(self.dropout(F.relu(features)))  # [B, 10]
        return features, logits
