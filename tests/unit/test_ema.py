"""The generator EMA (simcli.distill.ema): beta from a half-life in images, and the update itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simcli.distill.ema import ema_beta, update_ema


@pytest.mark.parametrize(("batch", "halflife_kimg"), [(256, 500.0), (32, 0.5), (1, 20.0)])
def test_beta_without_rampup(batch, halflife_kimg):
    expected = 0.5 ** (batch / (halflife_kimg * 1000))
    for cur_nimg in (0, batch, 10**9):  # the images seen do not matter without the ramp-up
        assert ema_beta(batch, cur_nimg, halflife_kimg, rampup_ratio=None) == pytest.approx(expected, rel=1e-12)


def test_beta_with_rampup_uses_the_shorter_halflife():
    # 0.05 * 10_000 = 500 images < 500 kimg: the ramp-up decides
    assert ema_beta(256, 10_000, 500.0, rampup_ratio=0.05) == pytest.approx(0.5 ** (256 / 500), rel=1e-12)
    # 0.05 * 2e7 = 1e6 images > 500 kimg: the half-life decides
    assert ema_beta(256, 20_000_000, 500.0, rampup_ratio=0.05) == pytest.approx(0.5 ** (256 / 500_000), rel=1e-12)
    # exactly at the crossover both give the same beta
    assert ema_beta(256, 10_000_000, 500.0, 0.05) == pytest.approx(0.5 ** (256 / 500_000), rel=1e-12)


def test_beta_grows_during_rampup():
    betas = [ema_beta(64, n, 500.0, 0.05) for n in (64, 640, 6400, 64_000)]
    assert betas == sorted(betas) and len(set(betas)) == 4


def test_halflife_means_half_the_weight_after_halflife_images():
    batch, halflife_kimg = 128, 2.56  # 2560 images = 20 updates
    beta = ema_beta(batch, 0, halflife_kimg, rampup_ratio=None)
    assert beta**20 == pytest.approx(0.5, rel=1e-12)


def test_zero_halflife_gives_beta_zero():
    assert ema_beta(256, 10**6, 0.0, rampup_ratio=None) == 0.0
    assert ema_beta(256, 10**6, 0.0, rampup_ratio=0.05) == 0.0
    assert ema_beta(256, 0, 500.0, rampup_ratio=0.05) == 0.0  # nothing seen yet: the ramp-up halflife is 0


class Net(nn.Module):
    """A layer with parameters and a buffer (BatchNorm-like running statistics)."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 3, generator=g))
            self.lin.bias.copy_(torch.randn(2, generator=g))
        self.register_buffer("running", torch.randn(4, generator=g))
        self.register_buffer("count", torch.tensor(seed))


def test_update_ema_lerps_parameters_and_copies_buffers():
    ema, net = Net(1), Net(2)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    net_state = {k: v.clone() for k, v in net.state_dict().items()}
    beta = 0.9
    update_ema(ema, net, beta)
    for name in ("lin.weight", "lin.bias"):
        expected = beta * before[name] + (1 - beta) * net_state[name]
        torch.testing.assert_close(ema.state_dict()[name], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(ema.running, net.running) and int(ema.count) == 2
    for k, v in net.state_dict().items():  # the trained network is left alone
        assert torch.equal(v, net_state[k])


def test_update_ema_extremes():
    ema, net = Net(1), Net(2)
    update_ema(ema, net, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), net.state_dict().values(), strict=True))
    ema, net = Net(1), Net(2)
    old_weight = ema.lin.weight.clone()
    update_ema(ema, net, 1.0)
    assert torch.equal(ema.lin.weight, old_weight)


def test_repeated_updates_follow_the_closed_form():
    """k updates towards a fixed net: ema_k = net + beta^k (ema_0 - net)."""
    ema, net = Net(1), Net(2)
    start = ema.lin.weight.detach().clone()
    beta, k = 0.7, 5
    for _ in range(k):
        update_ema(ema, net, beta)
    expected = net.lin.weight.detach() + beta**k * (start - net.lin.weight.detach())
    torch.testing.assert_close(ema.lin.weight.detach(), expected, rtol=1e-6, atol=1e-6)
    assert ema.lin.weight.grad is None


def test_update_ema_refuses_mismatched_networks():
    with pytest.raises(ValueError):
        update_ema(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)), 0.5)
