"""Precision of the network passes (fp32, tf32, bf16, fp16) and fp16's dynamic loss scaling."""

from __future__ import annotations

import math

import pytest
import torch

from simcli.config.spec import LognormalNoise, LossSpec
from simcli.distill.batches import BatchPlan
from simcli.distill.precision import LossScaler, Precision, set_tf32, tf32_settings
from simcli.distill.steps import Context, generator_update, make_generator_loss, online_update
from simcli.distill.streams import IterationStreams, online_phase
from simcli.nets.registry import build_edm_network
from tests.helpers.tiny_edm import TINY_DDPMPP

CPU = torch.device("cpu")


def tiny_net(seed: int = 0, use_fp16: bool = False):
    torch.manual_seed(seed)
    net = build_edm_network("EDMPrecond", {**TINY_DDPMPP, "label_dim": 0, "dropout": 0.0, "use_fp16": use_fp16})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


# ---------------------------------------------------------------------------------------------- loss scaling


def test_loss_scaler_grows_after_the_interval_and_halves_on_overflow():
    s = LossScaler(enabled=True, scale=8.0, growth_interval=3)
    assert s.factor == 8.0
    assert [s.update(True, True) for _ in range(2)] == [(True, True)] * 2 and s.scale == 8.0
    assert s.update(True, True) == (True, True) and s.scale == 16.0 and s.good_updates == 0
    # an overflow of the scaled gradients: skip the step, halve, and it is not a non-finite iteration
    assert s.update(True, False) == (False, True) and s.scale == 8.0 and s.overflows == 1
    assert s.good_updates == 0


def test_loss_scaler_counts_a_non_finite_loss_and_overflows_at_the_floor():
    s = LossScaler(enabled=True, scale=2.0, min_scale=1.0)
    assert s.update(False, False) == (False, False) and s.scale == 2.0  # the loss itself: not the scale's fault
    assert s.update(True, False) == (False, True) and s.scale == 1.0
    assert s.update(True, False) == (False, False) and s.scale == 1.0  # at the floor: a real non-finite gradient


def test_a_disabled_scaler_changes_nothing():
    s = LossScaler()
    assert s.factor == 1.0 and s.update(True, True) == (True, True) and s.update(True, False) == (False, False)
    g = [torch.full((3,), 4.0)]
    s.unscale_(g)
    assert torch.equal(g[0], torch.full((3,), 4.0))
    on = LossScaler(enabled=True, scale=4.0)
    on.unscale_(g)
    assert torch.equal(g[0], torch.ones(3))


# ---------------------------------------------------------------------------------------------- precision


def test_autocast_runs_the_trunk_in_bf16_and_the_output_stays_float32():
    net, x, sigma = tiny_net(), torch.randn(4, 3, 8, 8), torch.full((4,), 0.7)
    seen = []
    for module in net.model.modules():
        if type(module).__name__ == "Conv2d":
            module.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    ref = net(x, sigma)
    fp32_convs = set(seen)
    seen.clear()
    with Precision("bf16", CPU).autocast():
        out = net(x, sigma)
    assert fp32_convs == {torch.float32} and torch.bfloat16 in seen and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert 1e-4 < err < 0.1  # bf16 rounding: visible, small
    with Precision("fp32", CPU).autocast():
        assert torch.equal(net(x, sigma), ref)


def test_tf32_switches_follow_the_precision_and_are_restored():
    before = tf32_settings()
    try:
        set_tf32(True, True)
        with Precision("fp32", CPU).tf32():
            assert tf32_settings() == (False, False)  # SiD's fp32: TF32 explicitly off
        assert tf32_settings() == (True, True)
        set_tf32(False, False)
        for name in ("tf32", "bf16"):
            with Precision(name, CPU).tf32():
                assert tf32_settings() == (True, True)
            assert tf32_settings() == (False, False)
    finally:
        set_tf32(*before)


def test_an_fp16_trunk_gives_way_to_autocast_and_needs_scaling_otherwise():
    assert Precision("bf16", CPU).adapt([tiny_net(use_fp16=True)]) is False
    net = tiny_net(use_fp16=True)
    Precision("bf16", CPU).adapt([net])
    assert net.use_fp16 is False
    assert Precision("fp32", CPU).adapt([tiny_net(use_fp16=True)]) is False  # EDM's trunk is fp16 on CUDA only
    assert Precision("fp32", torch.device("cuda")).adapt([tiny_net(use_fp16=True)]) is True
    assert Precision("fp16", CPU).adapt([tiny_net()]) is True
    with pytest.raises(ValueError, match="unknown precision"):
        Precision("fp8", CPU)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_updates_under_autocast_keep_float32_weights_and_a_close_loss(name):
    results = {}
    for precision in ("fp32", name):
        teacher, generator, online = tiny_net(1), tiny_net(1), tiny_net(1)
        with torch.no_grad():  # the online model a little off the teacher, so the SIM loss is not zero
            for p in online.parameters():
                p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(3)))
        plan = BatchPlan(2.5, 8, 4, (3, 8, 8), 0, CPU)
        ctx = Context(plan, IterationStreams(0, 0, CPU), autocast=Precision(precision, CPU).autocast)
        scaler = LossScaler(enabled=precision == "fp16", scale=2.0**10)
        opt_o = torch.optim.Adam(online.parameters(), lr=1e-4)
        loss_o, ok_o = online_update(generator, online, opt_o, ctx, online_phase(0), LognormalNoise(), scaler=scaler)
        opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4)
        loss_g, ok_g = generator_update(generator, online, teacher, opt_g, make_generator_loss(LossSpec(), "none", 192),
                                        ctx, LognormalNoise(p_mean=-3.5, p_std=2.5), scaler=LossScaler(enabled=precision == "fp16"))
        assert ok_o and ok_g and math.isfinite(loss_o) and math.isfinite(loss_g)
        assert all(p.dtype == torch.float32 for p in generator.parameters())
        assert all(v.dtype == torch.float32 for s in opt_g.state.values() for v in s.values() if v.is_floating_point())
        results[precision] = (loss_o, loss_g, [p.detach().clone() for p in generator.parameters()])
    (o32, g32, w32), (o16, g16, w16) = results["fp32"], results[name]
    assert o16 == pytest.approx(o32, rel=0.05)
    assert g16 == pytest.approx(g32, rel=0.5, abs=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(w32, w16, strict=True))  # the low precision did something
