"""What a generator sample is conditioned on, drawn per micro-batch: nothing, a class label, or a prompt.

Every kind draws from the micro-batch's random stream (simcli.distill.streams), so conditions repeat on resume
and do not depend on the number of processes. Prompts come from an on-disk store of their text-encoder embeddings
(simcli.data.text_embeddings), or, without the store, are embedded as they are drawn by a text encoder kept loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from simcli.nets.text_condition import TextCondition


class Conditions(Protocol):
    """Draws the conditioning of n samples."""

    def draw(self, n: int, rng: torch.Generator, device: torch.device) -> Any: ...


class ClassLabels:
    """Uniformly random one-hot class labels [n, label_dim]; None for unconditional models (label_dim 0)."""

    def __init__(self, label_dim: int):
        self.label_dim = label_dim

    def draw(self, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        classes = torch.randint(self.label_dim, (n,), generator=rng, device=device)
        return torch.nn.functional.one_hot(classes, self.label_dim).to(torch.float32)


def draw_prompt_indices(n: int, count: int, rng: torch.Generator) -> torch.Tensor:
    """n prompt indices, uniform over count prompts, on the CPU (drawn on the stream's device)."""
    return torch.randint(count, (n,), generator=rng, device=rng.device).cpu()


class StoredPrompts:
    """Prompts drawn uniformly from a store of their embeddings (`store.get(indices)`: embeds, mask and pooled
    rows, as simcli.data.text_embeddings.EmbeddingStore returns them)."""

    def __init__(self, store: Any):
        self.store = store

    def draw(self, n: int, rng: torch.Generator, device: torch.device) -> TextCondition:
        return self.rows(draw_prompt_indices(n, len(self.store), rng).tolist(), device)

    def rows(self, indices: list[int], device: torch.device) -> TextCondition:
        """The embeddings of the prompts at these indices (with their pooled embeddings where the store has them)."""
        return TextCondition(*self.store.get(indices)).to(device)

    def __len__(self) -> int:
        return len(self.store)


class LivePrompts:
    """Prompts drawn uniformly from a list and embedded as they are drawn (the text encoder stays loaded)."""

    def __init__(self, prompts: Sequence[str], encode: Callable[[list[str]], TextCondition]):
        self.prompts, self.encode = list(prompts), encode

    def draw(self, n: int, rng: torch.Generator, device: torch.device) -> TextCondition:
        return self.rows(draw_prompt_indices(n, len(self.prompts), rng).tolist(), device)

    def rows(self, indices: list[int], device: torch.device) -> TextCondition:
        """The prompts at these indices, embedded now (embeddings and pooled embeddings in float32)."""
        with torch.no_grad():
            condition = self.encode([self.prompts[i] for i in indices])
        return condition.to(device, torch.float32)

    def __len__(self) -> int:
        return len(self.prompts)
