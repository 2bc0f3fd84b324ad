"""Gradient-norm clipping split in two, so that it works on sharded gradients, and the learning-rate warm-up.

DMD2 clips both networks' gradients to max_grad_norm 10 (main/edm/train_edm.py:257, :285, :485) with accelerate's
clip_grad_norm_, i.e. torch.nn.utils.clip_grad_norm_ (torch/nn/utils/clip_grad.py:164-168), and warms both
learning rates up with diffusers' "constant_with_warmup" over warmup_step 500 (train_edm.py:110-123, :469).
With shards: the caller sums grad_sq_norm over the shards (an all-reduce), takes the square root and hands the
total to scale_to_norm_ on every shard.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

TORCH_CLIP_EPS = 1e-6
"""clip_coef = max_norm / (total_norm + 1e-6) (torch/nn/utils/clip_grad.py:164)."""


def grad_sq_norm(grads: list[Tensor]) -> Tensor:
    """sum_g ||g||^2 over the local tensors, accumulated in float32 (float64 if any tensor is float64): scalar."""
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    total = torch.zeros((), dtype=dtype, device=grads[0].device)
    for g in grads:
        total = total + g.detach().to(dtype).pow(2).sum().to(total.device)
    return total


def scale_to_norm_(grads: list[Tensor], total_norm: float, max_norm: float, eps: float = TORCH_CLIP_EPS) -> None:
    """Multiply every tensor in place by min(1, max_norm / (total_norm + eps)) (torch's rule, clip_grad.py:164-181)."""
    coef = min(1.0, max_norm / (float(total_norm) + eps))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)


def warmup_factor(updates_done: int, warmup_steps: int) -> float:
    """diffusers' constant_with_warmup factor: updates_done / max(1, warmup_steps) below warmup_steps, else 1
    (diffusers/optimization.py get_constant_schedule_with_warmup; DMD2 train_edm.py:111-123). 0 at the first update,
    as LambdaLR applies the factor of step 0 before any scheduler step."""
    if updates_done < 0:
        raise ValueError(f"updates_done must be >= 0, got {updates_done}")
    if updates_done < warmup_steps:
        return updates_done / max(1, warmup_steps)
    return 1.0
