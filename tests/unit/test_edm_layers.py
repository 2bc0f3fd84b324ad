"""EDM building blocks (simcli.nets.layers, simcli.nets.unet_block) against the closed forms of edm-spec 3.1."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from simcli.nets.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    attention_weights,
    init_bound,
    weight_init,
)
from simcli.nets.unet_block import UNetBlock


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("mode", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"])
def test_edm_weight_init_modes_follow_their_formula(mode):
    fan_in, fan_out = 300, 100
    w = weight_init([200, 300], mode=mode, fan_in=fan_in, fan_out=fan_out)
    bound = init_bound(mode, fan_in, fan_out)
    expected_bound = {
        "xavier_uniform": math.sqrt(6 / 400),
        "xavier_normal": math.sqrt(2 / 400),
        "kaiming_uniform": math.sqrt(3 / 300),
        "kaiming_normal": math.sqrt(1 / 300),
    }[mode]
    assert bound == pytest.approx(expected_bound)
    if mode.endswith("uniform"):
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.99 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    else:
        assert w.std().item() == pytest.approx(bound, rel=0.02)
    with pytest.raises(ValueError, match="invalid init mode"):
        weight_init([2], mode="orthogonal", fan_in=1, fan_out=1)


def test_edm_linear_init_and_forward():
    lin = Linear(64, 32, init_mode="xavier_uniform", init_weight=0.5)
    assert lin.weight.shape == (32, 64) and lin.bias.shape == (32,)
    assert lin.weight.abs().max() <= 0.5 * math.sqrt(6 / 96)
    assert torch.count_nonzero(lin.bias) == 0  # init_bias defaults to 0
    x = torch.randn(5, 64)
    torch.testing.assert_close(lin(x), x @ lin.weight.t() + lin.bias, rtol=0, atol=0)
    with_bias = Linear(64, 32, init_mode="kaiming_uniform", init_bias=1.0)
    assert with_bias.bias.abs().max() <= math.sqrt(3 / 64) and torch.count_nonzero(with_bias.bias) == 32
    assert Linear(4, 3, bias=False).bias is None
    assert list(Linear(4, 3, bias=False).state_dict()) == ["weight"]


def test_edm_conv2d_resample_filters_and_state():
    plain = Conv2d(4, 6, kernel=3)
    assert list(plain.state_dict()) == ["weight", "bias"] and plain.resample_filter is None
    down = Conv2d(4, 6, kernel=3, down=True, resample_filter=[1, 3, 3, 1])
    assert list(down.state_dict()) == ["weight", "bias", "resample_filter"]
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    torch.testing.assert_close(down.resample_filter, expected[None, None], rtol=0, atol=0)
    box = Conv2d(4, 4, kernel=0, down=True)
    assert list(box.state_dict()) == ["resample_filter"] and box.weight is None and box.bias is None
    torch.testing.assert_close(box.resample_filter, torch.full([1, 1, 2, 2], 0.25), rtol=0, atol=0)


def test_edm_conv2d_with_box_filter_is_avgpool_and_nearest():
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, kernel=0, down=True)
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    up = Conv2d(3, 3, kernel=0, up=True)
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_edm_conv2d_forward_orders():
    x = torch.randn(2, 3, 8, 8)
    conv = Conv2d(3, 5, kernel=3, down=True, resample_filter=[1, 3, 3, 1], init_bias=1.0)
    f = conv.resample_filter
    # Non-fused: blur+stride first, then the convolution, then the bias.
    ref = F.conv2d(F.conv2d(x, f.tile([3, 1, 1, 1]), groups=3, stride=2, padding=1), conv.weight, padding=1)
    torch.testing.assert_close(conv(x), ref + conv.bias.reshape(1, -1, 1, 1))
    # Fused down (NCSN++ aux_residual): convolve with w_pad + f_pad, then blur and stride without padding.
    conv.fused_resample = True
    ref = F.conv2d(F.conv2d(x, conv.weight, padding=2), f.tile([5, 1, 1, 1]), groups=5, stride=2)
    out = conv(x)
    assert out.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out, ref + conv.bias.reshape(1, -1, 1, 1))
    fused_up = Conv2d(3, 5, kernel=3, up=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused_up(x).shape == (2, 5, 16, 16)


def test_edm_group_norm_groups_and_eps():
    assert GroupNorm(256).num_groups == 32
    assert GroupNorm(16).num_groups == 4  # min(32, C // 4)
    gn = GroupNorm(16, eps=1e-6)
    x = torch.randn(3, 16, 4, 4)
    torch.testing.assert_close(gn(x), F.group_norm(x, 4, gn.weight, gn.bias, eps=1e-6), rtol=0, atol=0)
    assert torch.all(gn.weight == 1) and torch.all(gn.bias == 0)


@pytest.mark.parametrize("endpoint", [False, True])
def test_edm_positional_embedding_closed_form(endpoint):
    emb = PositionalEmbedding(8, endpoint=endpoint)
    assert list(emb.state_dict()) == []
    x = torch.tensor([0.0, 0.5, -2.0])
    denom = 4 - (1 if endpoint else 0)
    freqs = torch.tensor([(1 / 10000) ** (i / denom) for i in range(4)])
    angles = x[:, None] * freqs[None]
    torch.testing.assert_close(emb(x), torch.cat([angles.cos(), angles.sin()], dim=1))  # cos first
    assert emb(x)[0, :4].eq(1).all() and emb(x)[0, 4:].eq(0).all()


def test_edm_fourier_embedding_closed_form():
    emb = FourierEmbedding(4096)
    assert list(emb.state_dict()) == ["freqs"] and emb.freqs.shape == (2048,)
    assert emb.freqs.std().item() == pytest.approx(16, rel=0.05)
    x = torch.tensor([0.1, -0.3])
    angles = 2 * math.pi * x[:, None] * emb.freqs[None]
    torch.testing.assert_close(emb(x), torch.cat([angles.cos(), angles.sin()], dim=1), rtol=1e-4, atol=1e-4)


def test_edm_attention_weights_are_scaled_softmax():
    q, k = torch.randn(6, 8, 5), torch.randn(6, 8, 7)
    w = attention_weights(q, k)
    assert w.shape == (6, 5, 7)
    ref = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(8), dim=2)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(w.sum(2), torch.ones(6, 5))
    assert attention_weights(q.half(), k.half()).dtype == torch.float16


def _block_reference(blk: UNetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """UNetBlock forward written out from edm-spec 3.1, attention with per-channel interleaved q, k, v."""
    h = blk.conv0(F.silu(blk.norm0(x)))
    p = blk.affine(emb)[:, :, None, None]
    if blk.adaptive_scale:
        c = p.shape[1] // 2
        scale, shift = p[:, :c], p[:, c:]
        h = F.silu(shift + blk.norm1(h) * (scale + 1))
    else:
        h = F.silu(blk.norm1(h + p))
    h = blk.conv1(h)
    h = (h + (blk.skip(x) if blk.skip is not None else x)) * blk.skip_scale
    if blk.num_heads:
        n, c, hh, ww = h.shape
        heads, d = blk.num_heads, c // blk.num_heads
        t = blk.qkv(blk.norm2(h)).reshape(n, heads, d, 3, hh * ww)  # channel = head*3d + 3c + j
        q, k, v = t[:, :, :, 0], t[:, :, :, 1], t[:, :, :, 2]  # [N, heads, d, HW]
        w = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / math.sqrt(d), dim=3)
        a = torch.einsum("nhqk,nhck->nhcq", w, v).reshape(n, c, hh, ww)
        h = (blk.proj(a) + h) * blk.skip_scale
    return h


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("resample", ["none", "up", "down"])
def test_edm_unet_block_matches_spec_formula(adaptive, resample):
    init = dict(init_mode="xavier_uniform")
    blk = UNetBlock(
        16,
        32,
        emb_channels=24,
        up=resample == "up",
        down=resample == "down",
        attention=True,
        num_heads=2,
        skip_scale=math.sqrt(0.5),
        eps=1e-6,
        adaptive_scale=adaptive,
        init=init,
        init_zero=init,  # nonzero proj
    ).eval()
    assert blk.num_heads == 2 and blk.affine.out_features == (64 if adaptive else 32)
    x, emb = torch.randn(3, 16, 8, 8), torch.randn(3, 24)
    out = blk(x, emb)
    side = {"none": 8, "up": 16, "down": 4}[resample]
    assert out.shape == (3, 32, side, side)
    torch.testing.assert_close(out, _block_reference(blk, x, emb), rtol=1e-5, atol=1e-5)


def test_edm_unet_block_structure():
    plain = UNetBlock(16, 16, emb_channels=8)
    assert plain.skip is None and plain.num_heads == 0
    assert list(dict(plain.named_children())) == ["norm0", "conv0", "affine", "norm1", "conv1"]
    assert torch.count_nonzero(plain.conv1.weight) == 0  # default init_zero has init_weight=0
    attn = UNetBlock(16, 128, emb_channels=8, attention=True)  # heads = out // channels_per_head
    assert attn.num_heads == 2
    assert list(dict(attn.named_children())) == [
        "norm0",
        "conv0",
        "affine",
        "norm1",
        "conv1",
        "skip",
        "norm2",
        "qkv",
        "proj",
    ]
    resampler = UNetBlock(16, 16, emb_channels=8, down=True)  # ADM-style: kernel-0 skip with a filter buffer
    assert list(resampler.skip.state_dict()) == ["resample_filter"]
    projected = UNetBlock(16, 16, emb_channels=8, down=True, resample_proj=True)  # DDPM++-style 1x1 skip
    assert list(projected.skip.state_dict()) == ["weight", "bias", "resample_filter"]
