"""EDM preconditioning D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Table 1)."""

from __future__ import annotations

import torch
from torch import nn


def edm_coefficients(
    sigma: torch.Tensor, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDMPrecond for noise levels sigma (EDM Table 1, 'Ours')."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def precond_inputs(
    x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None, label_dim: int, use_fp16: bool,
    force_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype]:
    """What EDM's and EDM2's preconditioners do with their inputs first: x as float32 [N, C, R, R], sigma as float32
    [N or 1, 1, 1, 1], the labels as float32 [N or 1, label_dim] (the all-zero "no label" when a conditional model
    gets none; None for an unconditional one), and the trunk's dtype (float16 on CUDA when use_fp16 and not
    force_fp32, else float32)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, label_dim)
    dtype = torch.float16 if use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
    return x, sigma, class_labels, dtype


def set_block_dropout(net: nn.Module, block_type: type[nn.Module], p: float) -> None:
    """The dropout probability `dropout` of every block of `block_type` in net (active in train mode)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for block in net.modules():
        if isinstance(block, block_type):
            block.dropout = float(p)
