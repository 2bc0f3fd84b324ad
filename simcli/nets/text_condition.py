"""The conditioning of text-to-image denoisers: text-encoder hidden states, their attention mask, and (for the
families that take one) a pooled text embedding.

A TextCondition takes the place of class labels as a denoiser's third argument: D(x, sigma, condition).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TextCondition(NamedTuple):
    """Embedded prompts: hidden states [B, L, C], the mask [B, L] (1: token, 0: padding) and, for SD3, FLUX and
    SDXL, the pooled embedding [B, P] (None for families without one)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCondition:
        """On device (the embeddings in dtype when given; the mask keeps its dtype)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return TextCondition(move(self.embeds), self.mask.to(device), None if self.pooled is None else move(self.pooled))

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def rows(self, batch: int) -> TextCondition:
        """This condition for a batch of `batch`: itself, or its one row repeated (as a view)."""
        if self.embeds.shape[0] == batch:
            return self
        if self.embeds.shape[0] == 1:
            pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
            return TextCondition(self.embeds.expand(batch, -1, -1), self.mask.expand(batch, -1), pooled)
        raise ValueError(f"the condition has {self.embeds.shape[0]} rows for a batch of {batch}")

    def padded(self, length: int) -> TextCondition:
        """Padded with masked-out zero tokens to `length` tokens (no copy when it has them already)."""
        missing = length - self.embeds.shape[1]
        if missing <= 0:
            return self
        embeds = torch.cat([self.embeds, self.embeds.new_zeros(self.embeds.shape[0], missing, self.embeds.shape[2])], 1)
        return TextCondition(embeds, torch.cat([self.mask, self.mask.new_zeros(self.mask.shape[0], missing)], 1),
                             self.pooled)

    def cat_padded(self, other: TextCondition) -> TextCondition:
        """[self; other] along the batch, the shorter padded to the longer's length, on other's device."""
        length = max(self.embeds.shape[1], other.embeds.shape[1])
        first = self.padded(length).to(other.embeds.device)
        return TextCondition.cat([TextCondition(first.embeds, first.mask.to(other.mask.dtype), first.pooled),
                                  other.padded(length)])

    @staticmethod
    def cat(parts: list[TextCondition]) -> TextCondition:
        """Batches stacked along the batch dimension (all padded to the same length L; all with or all without
        pooled embeddings)."""
        pooled = [p.pooled for p in parts]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot stack conditions with and without pooled embeddings")
        return TextCondition(torch.cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]),
                             None if pooled[0] is None else torch.cat(pooled))
