"""The moves that turn a diffusers network's state dict into its family's original single-file layout: a tensor
renamed, several tensors concatenated into one fused projection (rows in order), the two halves of an adaLN
projection swapped (shift, scale <-> scale, shift). Each family's module (single_file_<family>.py) lists its moves;
`Layout` applies them to a copy of the state dict and refuses a tensor no move placed, so nothing is dropped silently.
No tensor's values change except by concatenation and the half swap."""

from __future__ import annotations

from collections.abc import Mapping

import torch

LEAVES = ("weight", "bias")


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with the two halves of its rows exchanged: [a; b] -> [b; a] (its own inverse)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


class Layout:
    """A diffusers state dict being moved into an original layout: `rename`, `fuse` and `swap` consume diffusers
    tensors and set original ones; `result` returns the original dict once every diffusers tensor is placed."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.left = dict(state)
        self.out: dict[str, torch.Tensor] = {}

    def has(self, diffusers_module: str) -> bool:
        """Whether the module (its weight, or a tensor of that exact name) is still to be placed."""
        return f"{diffusers_module}.weight" in self.left or diffusers_module in self.left

    def tensor(self, original: str, diffusers: str) -> None:
        """One tensor, renamed (a parameter without .weight/.bias, e.g. a scale-shift table), when it is there."""
        if diffusers in self.left:
            self.out[original] = self.left.pop(diffusers)

    def rename(self, original: str, diffusers: str, leaves: tuple[str, ...] = LEAVES) -> None:
        """A module renamed: each of its leaves (weight, bias) that the diffusers module has."""
        for leaf in leaves:
            if f"{diffusers}.{leaf}" in self.left:
                self.out[f"{original}.{leaf}"] = self.left.pop(f"{diffusers}.{leaf}")

    def fuse(self, original: str, pieces: tuple[str, ...]) -> None:
        """Several diffusers projections as one original projection, their output rows concatenated in order (a
        leaf is fused when every piece has it)."""
        for leaf in LEAVES:
            names = [f"{piece}.{leaf}" for piece in pieces]
            if all(name in self.left for name in names):
                self.out[f"{original}.{leaf}"] = torch.cat([self.left.pop(name) for name in names], dim=0)

    def concat(self, original: str, diffusers: list[str]) -> None:
        """One original tensor from whole diffusers tensors (rows in order), when every one of them is there."""
        if diffusers and all(name in self.left for name in diffusers):
            parts = [self.left.pop(name) for name in diffusers]
            self.out[original] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def swap(self, original: str, diffusers: str) -> None:
        """An adaLN projection whose (shift, scale) halves the two layouts order differently."""
        for leaf in LEAVES:
            if f"{diffusers}.{leaf}" in self.left:
                self.out[f"{original}.{leaf}"] = swap_halves(self.left.pop(f"{diffusers}.{leaf}"))

    def result(self, layout: str) -> dict[str, torch.Tensor]:
        """The original state dict; ValueError naming the tensors no move placed."""
        if self.left:
            names = sorted(self.left)
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise ValueError(f"the {layout} layout has no name for {', '.join(names[:3])}{more}")
        return self.out


def block_indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """The block numbers N of keys `prefix.N.…`, sorted."""
    found = {int(key[len(prefix) + 1:].split(".", 1)[0]) for key in state if key.startswith(prefix + ".")
             and key[len(prefix) + 1:].split(".", 1)[0].isdigit()}
    return sorted(found)
