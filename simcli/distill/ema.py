"""Exponential moving average of the generator with a half-life in images (EDM/SiD convention)."""

from __future__ import annotations

import torch
from torch import nn

from simcli.distill.sharding import local
from simcli.nets.lora import trainable_parameters


def ema_beta(batch_size: int, cur_nimg: int, halflife_kimg: float, rampup_ratio: float | None = 0.05) -> float:
    """beta = 0.5^(batch / halflife), halflife = min(halflife_kimg*1000, rampup_ratio*cur_nimg) (EDM train loop).

    cur_nimg is the number of images seen *before* the update being averaged in: EDM's training_loop.py (and
    SiD's and Diff-Instruct's loops after it) computes the half-life from cur_nimg and only then adds the batch.
    With the ramp-up, the first update therefore has half-life 0 and beta 0: the EMA starts as the generator
    after one step. This is a convention of the EMA, the same for every method.
    """
    halflife_nimg = halflife_kimg * 1000.0
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    if halflife_nimg <= 0:
        return 0.0
    return 0.5 ** (batch_size / halflife_nimg)


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for every trained parameter (a LoRA network's adapters: its base is
    shared and frozen); buffers are copied."""
    ema_params, net_params = trainable_parameters(ema), trainable_parameters(net)
    if len(ema_params) != len(net_params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, the network {len(net_params)}")
    # One fused pass; sharded networks (simcli.distill.sharding) are sharded alike, so shard by shard.
    torch._foreach_lerp_([local(p) for p in ema_params], [local(p.detach()) for p in net_params], 1.0 - beta)
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net)
