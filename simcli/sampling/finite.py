"""Samples are checked finite before anything is made of them: NaN becomes 0 in a uint8 image (all-black PNGs) and
is written as NaN into an npz, and either looks like a result. A non-finite sample fails the command (exit 1) with
one line naming its seeds, before any file is written or any image is scored."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from simcli.errors import RunFailed
from simcli.nets.registry import listing

GENERATOR_HINT = "the generator's weights give NaN or Inf for these inputs; try an earlier snapshot of its run"
TEACHER_HINT = "the teacher's network gives NaN or Inf for these inputs; check its file, or try other sampler settings"


def nonfinite_seeds(x: torch.Tensor, seeds: Sequence[int]) -> list[int]:
    """The seeds (x[i] is seed seeds[i]'s sample) whose samples hold NaN or Inf."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    return [seeds[i] for i in bad.nonzero().flatten().tolist()]


def check_finite(x: torch.Tensor, seeds: Sequence[int], what: str, consequence: str, hint: str) -> None:
    """RunFailed (exit 1) naming the seeds when any sample of x is not finite: '<what> gave NaN or Inf for k of n
    seeds (...); <consequence>'."""
    bad = nonfinite_seeds(x, seeds)
    if bad:
        raise RunFailed(f"{what} gave NaN or Inf for {len(bad)} of {len(seeds)} seeds "
                        f"({listing([str(s) for s in bad], 5)}); {consequence}", hint=hint)
