"""The conditioning of text-to-image denoisers: text-encoder hidden states and their attention mask.

A TextCondition takes the place of class labels as a denoiser's third argument: D(x, sigma, condition).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TextCondition(NamedTuple):
    """Embedded prompts: hidden states [B, L, C] of the text encoder and the mask [B, L] (1: token, 0: padding)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCondition:
        """On device (the embeddings in dtype when given; the mask keeps its dtype)."""
        embeds = self.embeds.to(device=device, dtype=dtype) if dtype is not None else self.embeds.to(device)
        return TextCondition(embeds, self.mask.to(device))

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(parts: list[TextCondition]) -> TextCondition:
        """Batches stacked along the batch dimension (all padded to the same length L)."""
        return TextCondition(torch.cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]))
