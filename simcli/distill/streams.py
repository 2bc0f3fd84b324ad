"""The random streams of one iteration: one per (phase, micro-batch), so draws do not depend on who computes them.

Every random number of iteration k (latents, labels, noise levels, augmentations, noise, dropout masks) comes
from streams seeded by (run seed, k, phase, micro-batch index). A micro-batch computes the same numbers whichever
process runs it and whatever ran before it, so a run gives the same result for any number of processes that
shares its micro-batches out, and a resumed run repeats, number for number, what the uninterrupted run did.
"""

from __future__ import annotations

import numpy as np
import torch

GENERATOR_PHASE = 0
"""The generator update's phase; the online updates of an iteration are phases 1, 2, ... (online_phase)."""


def online_phase(update: int) -> int:
    """The phase of the iteration's online update number `update` (0-based)."""
    return 1 + update


def stream_seed(*key: int) -> int:
    """A 63-bit seed for a key of non-negative integers (run seed, iteration, phase, micro-batch, ...)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class IterationStreams:
    """The streams of iteration `step` of a run seeded `seed`, on `device`."""

    def __init__(self, seed: int, step: int, device: torch.device):
        self.seed, self.step, self.device = seed, step, device

    def begin(self, phase: int, micro_batch: int) -> torch.Generator:
        """Start a micro-batch: reseed torch's global RNG (which dropout draws from) and return the generator that
        every other draw of the micro-batch takes its numbers from."""
        torch.manual_seed(stream_seed(self.seed, self.step, phase, micro_batch, 1))
        return torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, self.step, phase, micro_batch, 0))

    def real_data(self, phase: int, micro_batch: int) -> torch.Generator:
        """A CPU generator for the real images a micro-batch draws (simcli.data.real_data): a stream apart from its
        other draws, so that adding real images leaves the latents and noise as they were, and the images drawn do not
        depend on the device."""
        return torch.Generator().manual_seed(stream_seed(self.seed, self.step, phase, micro_batch, REAL_STREAM))


REAL_STREAM = 2
"""The key of a micro-batch's real-data stream (0: its draws, 1: the dropout reseed): IterationStreams.real_data."""
