"""SongUNet (DDPM++/NCSN++) and DhariwalUNet (ADM): tiny forwards, full-size state_dicts and counts, init modes.

Full-size networks are built once on CPU (CIFAR-10 DDPM++) or on the meta device (the other rows of the
edm-spec section 2 table), with no forward pass at full size.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from simcli.nets import unet_block
from simcli.nets.dhariwal_unet import DhariwalUNet
from simcli.nets.edm_precond import EDMPrecond
from simcli.nets.song_unet import SongUNet

TSV_NAME = "edm-cifar10-ddpmpp-state-dict.tsv"

# Official `_init_kwargs` (edm-spec 2.1).
CIFAR_VP = {
    "model_type": "SongUNet",
    "embedding_type": "positional",
    "encoder_type": "standard",
    "decoder_type": "standard",
    "channel_mult_noise": 1,
    "resample_filter": [1, 1],
    "model_channels": 128,
    "channel_mult": [2, 2, 2],
    "augment_dim": 9,
    "dropout": 0.13,
    "use_fp16": False,
    "img_resolution": 32,
    "img_channels": 3,
    "label_dim": 0,
}
CIFAR_VE = {
    **CIFAR_VP,
    "embedding_type": "fourier",
    "encoder_type": "residual",
    "channel_mult_noise": 2,
    "resample_filter": [1, 3, 3, 1],
}
IMAGENET_ADM = {
    "model_type": "DhariwalUNet",
    "model_channels": 192,
    "channel_mult": [1, 2, 3, 4],
    "dropout": 0.1,
    "use_fp16": True,
    "img_resolution": 64,
    "img_channels": 3,
    "label_dim": 1000,
}
# (name, init_kwargs, parameters, parameter tensors, buffer tensors) from edm-spec sections 2 and 3.8.
OFFICIAL_ROWS = [
    ("cifar10-cond-vp", {**CIFAR_VP, "label_dim": 10}, 55_735_299, 419, 8),
    ("cifar10-uncond-ve", CIFAR_VE, 56_397_827, 421, 11),
    ("cifar10-cond-ve", {**CIFAR_VE, "label_dim": 10}, 56_400_643, 423, 11),
    ("ffhq-vp", {**CIFAR_VP, "channel_mult": [1, 2, 2, 2], "img_resolution": 64, "dropout": 0.05}, 61_805_571, 541, 12),
    (
        "afhqv2-ve",
        {**CIFAR_VE, "channel_mult": [1, 2, 2, 2], "img_resolution": 64, "dropout": 0.25},
        62_761_091,
        547,
        16,
    ),
    ("imagenet-adm", IMAGENET_ADM, 295_899_267, 541, 12),
]

TINY_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
TINY_DDPMPP = dict(TINY_SONG, embedding_type="positional", encoder_type="standard", resample_filter=[1, 1])
TINY_NCSNPP = dict(
    TINY_SONG, embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]
)
TINY_ADM = dict(model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
TINY_VARIANTS = [(SongUNet, TINY_DDPMPP), (SongUNet, TINY_NCSNPP), (DhariwalUNet, TINY_ADM)]
TINY_IDS = ["ddpmpp", "ncsnpp", "adm"]


def _tsv_path() -> Path:
    """The parameter and buffer listing (name, shape) of the official CIFAR-10 DDPM++ checkpoint, kept with the tests."""
    return Path(__file__).resolve().parents[1] / "data" / TSV_NAME


def _count(net: torch.nn.Module) -> tuple[int, int, int]:
    """(parameter elements, parameter tensors, buffer tensors)."""
    params = list(net.parameters())
    return sum(p.numel() for p in params), len(params), len(list(net.buffers()))


def _tiny(cls, kwargs, label_dim=0, augment_dim=0, seed=0):
    torch.manual_seed(seed)
    return cls(img_resolution=8, in_channels=3, out_channels=3, label_dim=label_dim, augment_dim=augment_dim, **kwargs)


def _inputs(n=3, label_dim=0, augment_dim=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    noise = torch.randn(n, generator=g)
    labels = torch.nn.functional.one_hot(torch.arange(n) % max(label_dim, 1), max(label_dim, 1)).float()
    aug = torch.randn(n, augment_dim, generator=g) if augment_dim else None
    return x, noise, (labels if label_dim else None), aug


@pytest.fixture(scope="module")
def cifar_ddpmpp():
    torch.manual_seed(0)
    return EDMPrecond(**CIFAR_VP)


def test_edm_cifar10_ddpmpp_state_dict_matches_listing(cifar_ddpmpp):
    rows = [line.rstrip("\n").split("\t") for line in _tsv_path().read_text().splitlines() if line.strip()]
    assert len(rows) == 425
    ours = [(name, str(list(t.shape))) for name, t in cifar_ddpmpp.state_dict().items()]
    assert ours == [(name, shape) for name, shape in rows]  # names, shapes and order


def test_edm_cifar10_ddpmpp_counts_and_buffers(cifar_ddpmpp):
    assert _count(cifar_ddpmpp) == (55_733_891, 417, 8)
    assert sum(b.numel() for b in cifar_ddpmpp.buffers()) == 32
    for name, buf in cifar_ddpmpp.named_buffers():
        assert name.endswith("resample_filter") and torch.equal(buf, torch.full([1, 1, 2, 2], 0.25)), name
    assert cifar_ddpmpp.model.map_augment.in_features == 9 and cifar_ddpmpp.model.map_augment.bias is None
    assert cifar_ddpmpp.sample_shape == (3, 32, 32) and cifar_ddpmpp.label_dim == 0


def test_edm_cifar10_ddpmpp_fresh_forward_is_near_skip(cifar_ddpmpp):
    """One batch-1 full-size forward: aux_conv starts at 1e-5 scale, so D ~ c_skip x but not exactly."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = cifar_ddpmpp.eval()(x, torch.tensor([2.0]), augment_labels=torch.zeros(1, 9))
    residual = (d - 0.25 / (4 + 0.25) * x).abs().max().item()
    assert d.shape == (1, 3, 32, 32) and 0 < residual < 1e-3


@pytest.mark.parametrize("name,kwargs,params,n_params,n_buffers", OFFICIAL_ROWS, ids=[r[0] for r in OFFICIAL_ROWS])
def test_edm_official_configs_parameter_counts(name, kwargs, params, n_params, n_buffers):
    with torch.device("meta"):  # structure only: no memory, no init cost
        net = EDMPrecond(**kwargs)
    assert _count(net) == (params, n_params, n_buffers)


def test_edm_ncsnpp_and_adm_layout():
    with torch.device("meta"):
        ve, adm = EDMPrecond(**CIFAR_VE), EDMPrecond(**IMAGENET_ADM)
    ve_sd, adm_sd = ve.state_dict(), adm.state_dict()
    assert ve_sd["model.map_noise.freqs"].shape == (128,)
    assert ve_sd["model.enc.16x16_aux_residual.weight"].shape == (256, 3, 3, 3)
    assert ve_sd["model.enc.8x8_aux_residual.weight"].shape == (256, 256, 3, 3)
    assert ve_sd["model.enc.8x8_aux_residual.resample_filter"].shape == (1, 1, 4, 4)
    assert ve.model.enc["8x8_aux_residual"].fused_resample
    assert adm_sd["model.map_label.weight"].shape == (768, 1000) and "model.map_label.bias" not in adm_sd
    assert "model.enc.32x32_down.skip.resample_filter" in adm_sd and "model.enc.32x32_down.skip.weight" not in adm_sd
    assert adm.model.map_augment is None
    heads = {name: blk.num_heads for name, blk in adm.model.enc.items() if name.endswith("block0")}
    assert heads == {"64x64_block0": 0, "32x32_block0": 6, "16x16_block0": 9, "8x8_block0": 12}
    assert list(adm_sd)[-4:] == [
        "model.out_norm.weight",
        "model.out_norm.bias",
        "model.out_conv.weight",
        "model.out_conv.bias",
    ]


@pytest.mark.slow
def test_edm_imagenet_adm_builds_on_cpu():
    torch.manual_seed(0)
    net = EDMPrecond(**IMAGENET_ADM)
    assert _count(net) == (295_899_267, 541, 12)
    assert torch.count_nonzero(net.model.out_conv.weight) == 0


@pytest.mark.parametrize("cls,kwargs", TINY_VARIANTS, ids=TINY_IDS)
@pytest.mark.parametrize("label_dim,augment_dim", [(0, 0), (0, 9), (10, 0), (10, 9)])
def test_edm_tiny_unet_forward(cls, kwargs, label_dim, augment_dim):
    net = _tiny(cls, kwargs, label_dim, augment_dim).eval()
    for p in net.parameters():  # give the zero/1e-5-initialised output layers real weights
        p.data.add_(0.05 * torch.randn_like(p))
    x, noise, labels, aug = _inputs(3, label_dim, augment_dim)
    with torch.no_grad():
        out = net(x, noise, labels, augment_labels=aug)
        again = net(x, noise, labels, augment_labels=aug)
        singles = torch.cat(
            [
                net(
                    x[i : i + 1],
                    noise[i : i + 1],
                    None if labels is None else labels[i : i + 1],
                    augment_labels=None if aug is None else aug[i : i + 1],
                )
                for i in range(3)
            ]
        )
        other_noise = net(x, noise + 1, labels, augment_labels=aug)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out, again)  # deterministic in eval mode
    torch.testing.assert_close(out, singles, rtol=1e-4, atol=1e-5)  # no mixing across the batch
    assert (out - other_noise).abs().max() > 1e-3  # the noise level matters
    if augment_dim:
        with torch.no_grad():  # map_augment has no bias: zeros == None
            torch.testing.assert_close(
                net(x, noise, labels, augment_labels=torch.zeros(3, augment_dim)), net(x, noise, labels), rtol=0, atol=0
            )
    if label_dim:
        with torch.no_grad():
            relabeled = net(x, noise, labels.roll(1, dims=1), augment_labels=aug)
        assert (out - relabeled).abs().max() > 1e-3  # the label matters


def test_edm_song_unet_embedding_formula():
    net = _tiny(SongUNet, TINY_DDPMPP, label_dim=10, augment_dim=9)
    _, noise, labels, aug = _inputs(3, 10, 9)
    e = net.map_noise(noise)  # [cos, sin]
    half = e.shape[1] // 2
    e = torch.cat([e[:, half:], e[:, :half]], dim=1)  # swapped to [sin, cos]
    e = e + net.map_label(labels * math.sqrt(10)) + net.map_augment(aug)
    ref = torch.nn.functional.silu(net.map_layer1(torch.nn.functional.silu(net.map_layer0(e))))
    torch.testing.assert_close(net.embed(noise, labels, aug, 3), ref)


def test_edm_dhariwal_unet_embedding_formula():
    net = _tiny(DhariwalUNet, TINY_ADM, label_dim=10, augment_dim=9)
    net.map_augment.weight.data.normal_()
    _, noise, labels, aug = _inputs(3, 10, 9)
    e = net.map_noise(noise) + net.map_augment(aug)  # no swap
    e = net.map_layer1(torch.nn.functional.silu(net.map_layer0(e))) + net.map_label(labels)  # labels unscaled
    torch.testing.assert_close(net.embed(noise, labels, aug, 3), torch.nn.functional.silu(e))


def test_edm_song_unet_fresh_init():
    net = _tiny(SongUNet, TINY_DDPMPP, label_dim=10)
    conv = net.enc["8x8_conv"]  # xavier_uniform, fan = C k^2
    bound = math.sqrt(6 / (3 * 9 + 16 * 9))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(conv.bias) == 0
    aux = net.dec["8x8_aux_conv"]  # init_zero = xavier_uniform * 1e-5, not exactly zero
    aux_bound = 1e-5 * math.sqrt(6 / (16 * 9 + 3 * 9))
    assert 0 < aux.weight.abs().max() <= aux_bound
    qkv = net.enc["4x4_block0"].qkv  # init_attn = xavier_uniform * sqrt(0.2)
    assert qkv.weight.abs().max() <= math.sqrt(0.2) * math.sqrt(6 / (32 + 96))
    block = net.enc["4x4_block0"]
    assert block.skip_scale == pytest.approx(math.sqrt(0.5)) and block.norm0.eps == 1e-6 and not block.adaptive_scale
    assert torch.all(block.norm0.weight == 1) and torch.all(block.norm0.bias == 0)


def test_edm_dhariwal_unet_fresh_init():
    net = _tiny(DhariwalUNet, TINY_ADM, label_dim=10, augment_dim=9)
    for zero in (
        net.out_conv.weight,
        net.out_conv.bias,
        net.map_augment.weight,
        net.enc["8x8_block0"].conv1.weight,
        net.enc["4x4_block0"].proj.weight,
    ):
        assert torch.count_nonzero(zero) == 0  # init_zero: exact zeros
    conv = net.enc["8x8_conv"]  # kaiming_uniform * sqrt(1/3) for weight and bias -> bound sqrt(1/fan_in)
    bound = math.sqrt(1 / (3 * 9))
    for t in (conv.weight, conv.bias):
        assert t.abs().max() <= bound + 1e-7 and torch.count_nonzero(t) == t.numel()
    label = net.map_label.weight  # kaiming_normal * sqrt(label_dim): std 1
    assert label.shape == (256, 10) and label.std().item() == pytest.approx(1.0, rel=0.1)
    block = net.enc["4x4_block0"]
    assert block.num_heads == 2 and block.adaptive_scale and block.norm0.eps == 1e-5 and block.skip_scale == 1


@pytest.mark.parametrize("cls,kwargs", TINY_VARIANTS, ids=TINY_IDS)
@pytest.mark.parametrize("train", [False, True])
def test_edm_activation_checkpointing_is_exact(cls, kwargs, train, monkeypatch):
    net = _tiny(cls, {**kwargs, "dropout": 0.2}, label_dim=10, augment_dim=9).train(train)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, noise, labels, aug = _inputs(2, 10, 9)
    calls = []
    real_checkpoint = unet_block.checkpoint
    monkeypatch.setattr(unet_block, "checkpoint", lambda *a, **k: calls.append(k) or real_checkpoint(*a, **k))

    def run(enabled):
        net.set_activation_checkpointing(enabled)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(123)  # same dropout masks in both runs
        out = net(xi, noise, labels, augment_labels=aug)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), xi.grad

    out_off, grad_off = run(False)
    assert not calls
    out_on, grad_on = run(True)
    n_blocks = sum(isinstance(m, unet_block.UNetBlock) for m in net.modules())
    assert len(calls) == n_blocks and all(k == {"use_reentrant": False} for k in calls)
    assert torch.equal(out_on, out_off)
    assert torch.equal(grad_on, grad_off)
    net.set_activation_checkpointing(False)
    assert not net.activation_checkpointing
