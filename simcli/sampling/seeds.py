"""One random stream per seed, so sample i is the same whatever the batch it is drawn in.

Follows EDM's `generate.py` (`StackedRandomGenerator`, NVlabs/edm; edm-spec.md section 3.5): every seed
gets its own `torch.Generator(device).manual_seed(seed % 2**32)`, which first draws that sample's latent,
then its class label, then the sampler's churn noise. Each draw is per sample and the results are stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor

SEED_MODULUS = 2**32  # torch generators take 64-bit seeds; EDM reduces seeds mod 2^32


def seed_list(seeds: Sequence[int] | Tensor) -> list[int]:
    """Seeds as a list of Python ints (accepts a list or a 1-D integer tensor)."""
    if isinstance(seeds, Tensor):
        if seeds.ndim != 1 or seeds.is_floating_point():
            raise ValueError(f"seeds must be a 1-D integer tensor, got {seeds.dtype} of shape {tuple(seeds.shape)}")
        return [int(s) for s in seeds.tolist()]
    return [int(s) for s in seeds]


def seed_generators(
    seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu", modulus: int = SEED_MODULUS
) -> list[torch.Generator]:
    """One freshly seeded torch.Generator per seed, on the given device."""
    return [torch.Generator(device=device).manual_seed(s % modulus) for s in seed_list(seeds)]


def per_seed_randn(
    seeds: Sequence[int] | Tensor,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal latents [len(seeds), *shape], row i drawn first from seed i's own generator."""
    return SeedRNG(seeds, device=device).randn(shape, dtype=dtype)


class SeedRNG:
    """A stack of per-seed generators: each draw takes one slice per seed and stacks them on dim 0."""

    def __init__(self, seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu"):
        self.seeds = seed_list(seeds)
        self.device = torch.device(device)
        self.generators = seed_generators(self.seeds, self.device)

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws [B, *shape], one [*shape] draw from each seed's generator."""
        shape = tuple(shape)
        if not self.generators:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        draws = [torch.randn(shape, generator=g, dtype=dtype, device=self.device) for g in self.generators]
        return torch.stack(draws)

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal draws shaped like x [B, ...] (B = number of seeds), in x's dtype."""
        if x.shape[0] != len(self):
            raise ValueError(f"randn_like: batch of {x.shape[0]} but {len(self)} seeds")
        if x.device != self.device:
            raise ValueError(f"randn_like: tensor on {x.device} but generators on {self.device}")
        return self.randn(x.shape[1:], dtype=x.dtype)

    def randint(self, high: int, size: Sequence[int] = ()) -> Tensor:
        """Integers in [0, high) [B, *size] (int64), one [*size] draw from each seed's generator."""
        size = tuple(size)
        if not self.generators:
            return torch.empty((0, *size), dtype=torch.int64, device=self.device)
        draws = [torch.randint(high, size, generator=g, device=self.device) for g in self.generators]
        return torch.stack(draws)


def seed_noise(rng: SeedRNG, device: torch.device | str) -> Callable[[Tensor], Tensor]:
    """A few-step generator's noise between its steps (simcli.nets.few_step.Renoise): each seed's next draws, made
    where the seeds' generators are and moved to `device`, so samples are the same on any device."""
    return lambda x: rng.randn(x.shape[1:], dtype=torch.float32).to(device=device, dtype=x.dtype)
