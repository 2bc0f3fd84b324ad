"""EDM2's magnitude-preserving U-Net and its preconditioner (simcli.nets.edm2_*) against NVlabs/edm2 itself.

tests/data/edm2-reference.pt holds outputs of the official `Precond` (training/networks_edm2.py at 4bf8162) for
every official configuration at reduced width, written by tests/tools/make_edm2_reference.py (see its docstring
for what was reduced). Each network is rebuilt from its init kwargs, the official state_dict is loaded strictly
and D, u(sigma), the train-mode output and the weights after forced weight normalisation must be bitwise equal.

CPU kernels may sum in another order on another CPU or torch build; where the torch version or CPU capability
differs from the generator's (recorded in the file), the comparisons fall back to a 1e-5 tolerance and the
digests of the weights are not compared. The fp16 trunk (CUDA only) is not exercised here.
"""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from simcli.nets.denoiser import Denoiser
from simcli.nets.discriminator_head import DiscriminatorHead
from simcli.nets.edm2_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample
from simcli.nets.edm2_precond import UPSTREAM_CLASS_NAMES, EDM2Precond
from simcli.nets.edm2_unet import EDM2Block, EDM2UNet

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "edm2-reference.pt"
CASES = (
    "img512-xs", "img512-s", "img512-m", "img512-l", "img512-xl", "img512-xxl", "img512-xs-uncond",
    "img512-s-uncond", "img64-xs", "img64-s", "img64-m", "img64-l", "img64-xl",
)

# Parameter counts of the full-size img512 networks (img_resolution 64, img_channels 4, label_dim 1000), counted
# from the official Precond on the meta device by tests/tools/make_edm2_reference.py (teacher-families.md 8:
# XS 124.7M, S 280.2M, M 497.8M, L 777.5M, XL 1119.3M, XXL 1523.2M).
FULL_SIZE_PARAMETERS = {
    "img512-xs": 124_713_253,
    "img512-s": 280_212_837,
    "img512-m": 497_807_781,
    "img512-l": 777_498_085,
    "img512-xl": 1_119_283_749,
    "img512-xxl": 1_523_164_773,
}

TINY = dict(img_resolution=16, img_channels=4, label_dim=10, model_channels=4, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[8], channels_per_head=4, use_fp16=False)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def bitwise_here(reference: dict) -> bool:
    return (reference["torch_version"] == str(torch.__version__)
            and reference["cpu_capability"] == torch.backends.cpu.get_cpu_capability())


def assert_same(actual: torch.Tensor, expected: torch.Tensor, exact: bool, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if exact:
        diff = (actual - expected).abs().max().item()
        assert torch.equal(actual, expected), f"{what}: not bitwise equal (max |diff| {diff:.3g})"
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=what)


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    """The generator's packed state_dict (keys, shapes, one flat tensor) as an ordered float32 state_dict."""
    state, start = {}, 0
    for key, shape in zip(packed["keys"], packed["shapes"], strict=True):
        size = math.prod(shape)
        state[key] = packed["values"][start : start + size].reshape(shape).to(torch.float32)
        start += size
    assert start == packed["values"].numel()
    return state


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def labels_of(case: dict) -> torch.Tensor | None:
    label_dim = case["init_kwargs"]["label_dim"]
    return F.one_hot(case["labels"], label_dim).to(torch.float32) if label_dim else None


def build(case: dict) -> EDM2Precond:
    net = EDM2Precond(**case["init_kwargs"])
    state = unpack(case["state_dict"])
    assert list(net.state_dict()) == list(state)  # the same keys in the same order
    net.load_state_dict(state, strict=True)
    return net


# ---------------------------------------------------------------------------------------------------------------
# Against the official classes.


def test_fixture_covers_every_official_configuration(reference):
    assert reference["format"] == 1
    assert tuple(reference["cases"]) == CASES
    counts = reference["full_size"]["parameter_counts"]
    assert {name: counts[name] for name in FULL_SIZE_PARAMETERS} == FULL_SIZE_PARAMETERS


@pytest.mark.parametrize("name", CASES)
def test_eval_outputs_equal_the_official(reference, name):
    case = reference["cases"][name]
    exact = bitwise_here(reference)
    net = build(case).eval()
    x = case["x"].to(torch.float32)
    with torch.no_grad():
        D, logvar = net(x, case["sigma"], labels_of(case), return_logvar=True)
        D_scalar, logvar_scalar = net(x, torch.tensor(case["scalar_sigma"]), None, return_logvar=True)
        D_float = net(x, case["scalar_sigma"], None)  # a Python number (upstream takes tensors only)
    assert_same(D, case["eval_D"], exact, f"{name} D")
    assert_same(logvar, case["eval_logvar"], exact, f"{name} logvar")
    assert_same(D_scalar, case["scalar_D"], exact, f"{name} D at a 0-d sigma without labels")
    assert_same(logvar_scalar, case["scalar_logvar"], exact, f"{name} logvar at a 0-d sigma")
    assert torch.equal(D_float, D_scalar)
    assert not torch.equal(D, x)  # the U-Net contributes (the generator set the zero-initialised gains)


@pytest.mark.parametrize("name", CASES)
def test_train_mode_forward_and_forced_weight_normalization_equal_the_official(reference, name):
    case = reference["cases"][name]
    exact = bitwise_here(reference)
    net = build(case).train()
    with torch.no_grad():
        torch.manual_seed(case["train_seed"])
        D, logvar = net(case["x"].to(torch.float32), case["sigma"], labels_of(case), return_logvar=True)
    assert_same(D, case["train_D"], exact, f"{name} train-mode D")
    assert_same(logvar, case["train_logvar"], exact, f"{name} train-mode logvar")
    after = net.state_dict()
    if "train_state_dict" in case:
        for key, expected in unpack(case["train_state_dict"]).items():
            assert_same(after[key], expected, exact, f"{name} {key} after the train-mode forward")
    if exact:
        differing = [k for k, d in zip(after, case["train_state_digests"], strict=True) if digest(after[k]) != d]
        assert not differing, f"{name}: weights after forced normalisation differ: {differing[:5]}"


@pytest.mark.parametrize("name", CASES)
def test_seeded_initialisation_draws_as_the_official(reference, name):
    case = reference["cases"][name]
    torch.manual_seed(case["seed"])
    net = EDM2Precond(**case["init_kwargs"])
    h = hashlib.sha256()
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    assert h.hexdigest() == case["init_digest"]


def test_forced_normalization_changes_the_train_output(reference):
    """Negative control: without the in-place overwrite the train-mode output of a dropout-free net is its eval
    output, which differs from the official train-mode output."""
    case = reference["cases"]["img512-s"]
    net = build(case).train()
    for module in net.modules():
        if isinstance(module, MPConv):
            module.force_normalization = False
    with torch.no_grad():
        D = net(case["x"].to(torch.float32), case["sigma"], labels_of(case))
    assert torch.equal(D, case["eval_D"]) or not bitwise_here(reference)
    assert not torch.equal(D, case["train_D"])
    assert torch.equal(net.state_dict()["unet.out_conv.weight"], unpack(case["state_dict"])["unet.out_conv.weight"])


@pytest.mark.parametrize("name", ["img512-xs", "img512-xs-uncond", "img64-xs"])
def test_full_size_state_dict_keys_and_shapes_equal_the_official(reference, name):
    kwargs = reference["full_size"]["init_kwargs"][name]
    with torch.device("meta"):
        net = EDM2Precond(**kwargs)
    mine = [[key, list(t.shape)] for key, t in net.state_dict().items()]
    assert mine == reference["full_size"]["state_dict_shapes"][name]
    assert "unet.enc.64x64_conv.weight" in net.state_dict() and "unet.emb_noise.weight" in net.state_dict()


@pytest.mark.parametrize("name", CASES)
def test_full_size_parameter_counts(reference, name):
    with torch.device("meta"):
        net = EDM2Precond(**reference["full_size"]["init_kwargs"][name])
    count = sum(p.numel() for p in net.parameters())
    assert count == reference["full_size"]["parameter_counts"][name]
    if name in FULL_SIZE_PARAMETERS:
        assert count == FULL_SIZE_PARAMETERS[name]


# ---------------------------------------------------------------------------------------------------------------
# Magnitude preservation against closed forms.


def _normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_mp_sum_and_mp_cat_keep_unit_variance():
    a, b = _normal(200_000, seed=1), _normal(200_000, seed=2)
    for t in (0.3, 0.5, 0.8):
        s = mp_sum(a, b, t)
        torch.testing.assert_close(s, ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t**2))
        assert abs(s.var().item() - 1) < 0.02
    a4, b4 = _normal(1000, 6, 8, 8, seed=3), _normal(1000, 10, 8, 8, seed=4)
    for t in (0.5, 0.7):
        c = mp_cat(a4, b4, dim=1, t=t)
        assert c.shape == (1000, 16, 8, 8)
        scale = math.sqrt(16 / ((1 - t) ** 2 + t**2))
        torch.testing.assert_close(c[:, :6], a4 * (scale / math.sqrt(6) * (1 - t)))
        torch.testing.assert_close(c[:, 6:], b4 * (scale / math.sqrt(10) * t))
        if t == 0.5:  # equal balance: every element has unit variance
            assert abs(c.var().item() - 1) < 0.02


def test_mp_silu_keeps_unit_magnitude():
    z = _normal(1_000_000, seed=5)
    torch.testing.assert_close(mp_silu(z), F.silu(z) / 0.596)
    assert abs(mp_silu(z).square().mean().sqrt().item() - 1) < 0.01


def test_normalize_gives_unit_rms_rows_with_eps():
    x = _normal(5, 3, 4, 4, seed=6) * torch.tensor([0.5, 1, 2, 3, 10]).reshape(5, 1, 1, 1)
    y = normalize(x)
    rms_in = x.flatten(1).norm(dim=1) / math.sqrt(48)
    rms_out = y.flatten(1).norm(dim=1) / math.sqrt(48)
    torch.testing.assert_close(rms_out, rms_in / (1e-4 + rms_in))  # x / (eps + rms(x))
    pixel = normalize(x, dim=1)  # pixel norm: over channels, per position
    rms_pixel = x.norm(dim=1) / math.sqrt(3)
    torch.testing.assert_close(pixel.norm(dim=1) / math.sqrt(3), rms_pixel / (1e-4 + rms_pixel))


def test_mp_fourier_is_sqrt2_cos_of_2pi_f_x_plus_p():
    torch.manual_seed(0)
    layer = MPFourier(16, bandwidth=2)
    assert set(dict(layer.named_buffers())) == {"freqs", "phases"} and set(layer.state_dict()) == {"freqs", "phases"}
    f, p = layer.freqs / (2 * math.pi), layer.phases / (2 * math.pi)
    assert (p >= 0).all() and (p < 1).all()
    x = torch.linspace(-3, 3, 7)
    expected = math.sqrt(2) * torch.cos(2 * math.pi * (f[None, :] * x[:, None] + p[None, :]))
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=0)
    assert layer(x.to(torch.float64)).dtype == torch.float64


def test_mp_conv_preserves_magnitude_and_forces_weight_normalization():
    torch.manual_seed(0)
    fc = MPConv(256, 64, kernel=[])
    x = _normal(4096, 256, seed=7)
    out = fc.eval()(x)
    assert abs(out.var().item() - 1) < 0.05
    torch.testing.assert_close(fc(x, gain=3.0), 3 * out)
    before = fc.weight.detach().clone()
    fc.eval()(x)
    assert torch.equal(fc.weight, before)  # eval mode leaves the weight alone
    fc.force_normalization = False
    fc.train()(x)
    assert torch.equal(fc.weight, before)  # switched off
    fc.force_normalization = True
    fc.train()(x)
    assert torch.equal(fc.weight, normalize(before))  # overwritten by its normalised value
    conv = MPConv(3, 5, kernel=[3, 3])
    assert conv(_normal(2, 3, 8, 8, seed=8)).shape == (2, 5, 8, 8)  # 'same' padding


def test_resample_down_and_up_with_the_box_filter():
    x = _normal(2, 3, 8, 8, seed=9)
    down = resample(x, mode="down")
    torch.testing.assert_close(down, F.avg_pool2d(x, 2))
    up = resample(x, mode="up")
    torch.testing.assert_close(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert torch.equal(resample(x, mode="keep"), x)
    torch.testing.assert_close(resample(up, mode="down"), x)
    with pytest.raises(ValueError):
        resample(x, mode="sideways")


# ---------------------------------------------------------------------------------------------------------------
# simcli's interface.


def _tiny(seed: int = 0, **overrides) -> EDM2Precond:
    torch.manual_seed(seed)
    net = EDM2Precond(**{**TINY, **overrides})
    with torch.no_grad():  # nonzero gains, else F = 0
        for name, p in net.named_parameters():
            if name.endswith("_gain"):
                p.fill_(0.5)
    return net


def _inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _normal(n, 4, 16, 16, seed=10)
    sigma = torch.tensor([0.3, 4.0, 20.0, 0.01][:n])
    labels = F.one_hot(torch.arange(n) % 10, 10).to(torch.float32)
    return x, sigma, labels


def test_denoiser_interface_and_upstream_names():
    net = _tiny()
    assert isinstance(net, Denoiser)
    assert net.sample_shape == (4, 16, 16) and net.label_dim == 10 and net.conditioning.label_dim == 10
    assert net.supports_activation_checkpointing and net.supports_dropout and net.supports_discriminator
    assert [name for name, _ in net.named_children()] == ["unet", "logvar_fourier", "logvar_linear"]
    assert EDM2Precond(8, 3, 0).use_fp16  # upstream's default
    assert UPSTREAM_CLASS_NAMES == {EDM2Precond: "Precond", EDM2UNet: "UNet", EDM2Block: "Block",
                                    MPConv: "MPConv", MPFourier: "MPFourier"}
    kinds = {type(m) for m in net.modules()} - {torch.nn.ModuleDict}
    assert kinds <= set(UPSTREAM_CLASS_NAMES)


def test_missing_labels_are_the_zero_label():
    net = _tiny().eval()
    x, sigma, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(net(x, sigma), net(x, sigma, torch.zeros(1, 10)))
    with pytest.raises(ValueError):
        net.unet(x, sigma.log() / 4, None)


def test_activation_checkpointing_gives_identical_outputs_gradients_and_weights():
    reference_net = _tiny(dropout=0.3).train()
    checkpointed = copy.deepcopy(reference_net)
    checkpointed.set_activation_checkpointing(True)
    x, sigma, labels = _inputs()
    results = []
    for net in (reference_net, checkpointed):
        torch.manual_seed(123)
        D, logvar = net(x, sigma, labels, return_logvar=True)
        (D.square().mean() + logvar.mean()).backward()
        results.append((D, {n: p.grad for n, p in net.named_parameters()}, net.state_dict()))
    (D0, g0, s0), (D1, g1, s1) = results
    assert torch.equal(D0, D1)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # normalised once, not again in the recomputation
    assert checkpointed.unet.activation_checkpointing


def test_set_dropout_reaches_every_block():
    net = _tiny()
    blocks = [m for m in net.modules() if isinstance(m, EDM2Block)]
    assert blocks and all(b.dropout == 0 for b in blocks)
    net.set_dropout(0.25)
    assert all(b.dropout == 0.25 for b in blocks)
    with pytest.raises(ValueError):
        net.set_dropout(1.0)
    x, sigma, labels = _inputs()
    net.train()
    for module in net.modules():
        if isinstance(module, MPConv):
            module.force_normalization = False  # so that repeated forwards see the same weights
    with torch.no_grad():
        torch.manual_seed(1)
        a = net(x, sigma, labels)
        torch.manual_seed(2)
        b = net(x, sigma, labels)
        net.set_dropout(0)
        torch.manual_seed(1)
        c = net(x, sigma, labels)
        torch.manual_seed(2)
        d = net(x, sigma, labels)
    assert not torch.equal(a, b) and torch.equal(c, d)


def test_return_logits_is_the_channel_mean_of_the_encoder_output():
    net = _tiny().eval()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        D_plain = net(x, sigma, labels)
        D, logits = net(x, sigma, labels, return_logits=True)
        only = net(x, sigma, labels, return_logits=True, decode=False)
        D3, logits3, logvar = net(x, sigma, labels, return_logits=True, return_logvar=True)
        only_lv = net(x, sigma, labels, return_logits=True, decode=False, return_logvar=True)
    assert torch.equal(D, D_plain) and torch.equal(D3, D_plain)
    assert logits.shape == (2, 1, 8, 8) and logits.dtype == torch.float32  # 16 >> 1: channel_mult [1, 2]
    assert torch.equal(only, logits) and torch.equal(logits3, logits)
    assert logvar.shape == (2, 1, 1, 1) and torch.equal(only_lv[0], logits) and torch.equal(only_lv[1], logvar)


def test_attach_discriminator_head_builds_it_for_the_encoder_output():
    net = _tiny().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    head = net.attach_discriminator_head(DiscriminatorHead)
    assert (head.channels, head.resolution) == (net.unet.encoder_channels, net.unet.encoder_resolution) == (8, 8)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items() if k in before)  # no probe pass
    assert any(k.startswith("unet.discriminator_head.") for k in net.state_dict())
    x, sigma, labels = _inputs()
    D, logits = net(x, sigma, labels, return_logits=True)
    assert logits.shape == (2, 1, 1, 1) and D.shape == x.shape
    logits.sum().backward()
    assert head.layers[0].weight.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_trunk_on_cuda_is_close_to_float32():
    net = _tiny(use_fp16=True).eval()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        expected = net(x, sigma, labels)
        net = net.cuda()
        half = net(x.cuda(), sigma.cuda(), labels.cuda())
        full = net(x.cuda(), sigma.cuda(), labels.cuda(), force_fp32=True)
    assert half.dtype == torch.float32
    torch.testing.assert_close(full.cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(half.cpu(), expected, atol=5e-2, rtol=5e-2)


def test_two_train_mode_passes_before_one_backward_normalise_the_weights_once():
    """SiDA's online step runs the network on fake and real images before one backward: the forced normalisation
    must not overwrite weights autograd saved from the first pass (it did: 'modified by an inplace operation')."""
    from simcli.nets.edm2_layers import MPConv, normalize

    torch.manual_seed(0)
    conv = MPConv(4, 3, kernel=[3, 3]).train()
    x = torch.randn(2, 4, 5, 5)
    once = normalize(conv.weight.detach().clone())
    out = conv(x).square().sum() + conv(x).square().sum()
    assert torch.equal(conv.weight.detach(), once)  # overwritten by the first pass only
    out.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    with torch.no_grad():
        conv.weight.add_(0.5)  # an optimizer step changes the weight: the next pass normalises it again
    conv(x)
    assert torch.allclose(conv.weight.detach().flatten(1).norm(dim=1), torch.full((3,), 6.0), atol=1e-3)
