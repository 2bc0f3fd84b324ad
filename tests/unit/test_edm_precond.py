"""EDM/VP/VE/iDDPM preconditioners against the closed forms of edm-spec 3.4, and the EDM network registry.

The inner UNet is replaced by a recording stub that returns a known F, so D = c_skip x + c_out F, c_in x and
c_noise can be checked exactly; a few tests also run the real tiny UNets end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.dhariwal_unet import DhariwalUNet
from simcli.nets.edm_precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from simcli.nets.mlp import MLPDenoiser
from simcli.nets.registry import EDM_CLASSES, build_edm_network, build_network
from simcli.nets.song_unet import SongUNet

TINY_SONG = dict(
    model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)
TINY_ADM = dict(
    model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)
SIGMAS = [0.002, 0.5, 2.5, 80.0]


class RecordingUNet(nn.Module):
    """Stands in for SongUNet/DhariwalUNet: records its inputs and returns a fixed F [N, out_channels, 8, 8]."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.F = torch.randn(4, out_channels, 8, 8, generator=torch.Generator().manual_seed(7))
        self.calls: list[dict] = []

    def forward(self, x, noise_labels, class_labels, **kwargs):
        self.calls.append(dict(x=x, noise_labels=noise_labels, class_labels=class_labels, **kwargs))
        return self.F[: x.shape[0]].to(x.dtype)


def _stubbed(cls, label_dim=0, **kwargs):
    net = cls(
        img_resolution=8,
        img_channels=3,
        label_dim=label_dim,
        **(TINY_ADM if cls is iDDPMPrecond else TINY_SONG),
        **kwargs,
    )
    net.model = RecordingUNet(6 if cls is iDDPMPrecond else 3)  # iDDPM's UNet has 2 * img_channels outputs
    return net


def _x(n=4):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _closed_form(cls, net, s: np.ndarray):
    """(c_skip, c_out, c_in, c_noise) in float64 from edm-spec 3.4."""
    if cls is EDMPrecond:
        sd = 0.5
        return sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4
    if cls is VPPrecond:
        t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log(1 + s**2)) - 0.1) / 19.9
        return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999 * t
    if cls is VEPrecond:
        return np.ones_like(s), s, np.ones_like(s), np.log(s / 2)
    u = net.u.double().numpy()
    index = np.abs(s[:, None] - u[None]).argmin(1)
    return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999.0 - index


@pytest.mark.parametrize("cls", [EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond])
def test_edm_precond_coefficients_match_closed_form(cls):
    net = _stubbed(cls)
    # VP's c_noise takes log(1 + sigma^2) in float32, which loses ~1e-2 relative accuracy at sigma = 0.002.
    sigmas = [0.05, 0.5, 2.5, 80.0] if cls is VPPrecond else SIGMAS
    x, sigma = _x(), torch.tensor(sigmas, dtype=torch.float64)
    d = net(x.double(), sigma)
    c_skip, c_out, c_in, c_noise = (
        torch.as_tensor(c, dtype=torch.float64) for c in _closed_form(cls, net, sigma.numpy())
    )
    call = net.model.calls[-1]
    col = (-1, 1, 1, 1)
    assert d.dtype == torch.float32 and d.shape == (4, 3, 8, 8)
    assert call["x"].dtype == torch.float32 and call["noise_labels"].shape == (4,)
    torch.testing.assert_close(
        call["noise_labels"].double(), c_noise, rtol=1e-4 if cls is VPPrecond else 1e-5, atol=1e-5
    )
    torch.testing.assert_close(call["x"].double(), c_in.reshape(col) * x.double(), rtol=1e-5, atol=1e-6)
    F = net.model.F.double()[:, :3]  # iDDPM: only the first img_channels of its 2*img_channels outputs
    expected = c_skip.reshape(col) * x.double() + c_out.reshape(col) * F
    torch.testing.assert_close(d.double(), expected, rtol=1e-5, atol=1e-4)
    assert call["class_labels"] is None


def test_edm_precond_exact_float32_operations():
    """EDMPrecond computes its coefficients in float32 from the float32 sigma, in upstream order."""
    net = _stubbed(EDMPrecond)
    x, sigma = _x(), torch.tensor(SIGMAS)
    d = net(x, sigma)
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (0.25 + s**2).sqrt()
    assert torch.equal(net.model.calls[-1]["x"], c_in * x)
    assert torch.equal(net.model.calls[-1]["noise_labels"], s.log().flatten() / 4)
    assert torch.equal(d, c_skip * x + c_out * net.model.F)


def test_edm_precond_label_handling_and_passthrough():
    uncond = _stubbed(EDMPrecond)
    uncond(_x(), torch.tensor(SIGMAS), class_labels=torch.eye(10)[:4])
    assert uncond.model.calls[-1]["class_labels"] is None  # label_dim 0 drops labels
    cond = _stubbed(EDMPrecond, label_dim=10)
    cond(_x(), torch.tensor(SIGMAS))
    zeros = cond.model.calls[-1]["class_labels"]
    assert zeros.shape == (1, 10) and zeros.dtype == torch.float32 and torch.count_nonzero(zeros) == 0
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 3, 5, 7]), 10).double()
    aug = torch.randn(4, 9)
    cond(_x(), torch.tensor(SIGMAS), class_labels=one_hot, augment_labels=aug)
    call = cond.model.calls[-1]
    assert call["class_labels"].dtype == torch.float32 and torch.equal(call["class_labels"], one_hot.float())
    assert call["augment_labels"] is aug


def test_edm_precond_fp16_only_on_cuda_and_scalar_sigma():
    net = _stubbed(EDMPrecond, use_fp16=True)
    d = net(_x(), 2.5)  # a Python float sigma broadcasts over the batch
    assert net.model.calls[-1]["x"].dtype == torch.float32  # CPU: never fp16
    assert net.model.calls[-1]["noise_labels"].shape == (1,)
    torch.testing.assert_close(d, net(_x(), torch.full([4], 2.5)))
    net(_x(), torch.full([4], 2.5), force_fp32=True)
    assert net.model.calls[-1]["x"].dtype == torch.float32


def test_edm_precond_attributes_and_defaults():
    edm = EDMPrecond(img_resolution=8, img_channels=3, label_dim=10, **TINY_SONG)
    assert isinstance(edm, Denoiser) and edm.sample_shape == (3, 8, 8) and edm.label_dim == 10
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0, math.inf, 0.5)
    ve = VEPrecond(img_resolution=8, img_channels=3, **TINY_SONG)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    s = torch.tensor([0.3, 7.0], dtype=torch.float64)
    for net in (edm, ve):
        assert torch.equal(net.round_sigma(s), s)  # identity for EDM, VP, VE
    defaults = {
        EDMPrecond: DhariwalUNet,
        VPPrecond: SongUNet,
        VEPrecond: SongUNet,
        iDDPMPrecond: DhariwalUNet,
    }  # upstream default model_type of each preconditioner
    for cls, model_cls in defaults.items():
        with torch.device("meta"):
            net = cls(
                img_resolution=8, img_channels=3, model_channels=64, channel_mult=[1], num_blocks=1, attn_resolutions=[]
            )
        assert type(net.model) is model_cls
    with pytest.raises(UsageError, match="FancyUNet"):
        EDMPrecond(img_resolution=8, img_channels=3, model_type="FancyUNet")


def test_edm_vp_precond_sigma_range_float32_quirk():
    vp = VPPrecond(img_resolution=8, img_channels=3, **TINY_SONG)
    assert vp.sigma_min == 0.0009765625  # float32 sigma(1e-5), not the analytic 0.003164
    assert vp.sigma_max == pytest.approx(152.1670, abs=1e-3)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(vp.sigma_inv(vp.sigma(t)), t)
    assert (vp.beta_d, vp.beta_min, vp.M, vp.epsilon_t) == (19.9, 0.1, 1000, 1e-5)


def test_edm_iddpm_precond_table_and_round_sigma():
    net = iDDPMPrecond(img_resolution=8, img_channels=3, **TINY_ADM)
    u = net.u
    assert u.shape == (1001,) and u.dtype == torch.float32 and u[1000] == 0
    assert u[0].item() == pytest.approx(20291.17, rel=1e-6) and u[999].item() == pytest.approx(0.006422, rel=1e-3)
    assert torch.all(u[:-1] > u[1:])  # strictly decreasing
    assert (net.sigma_min, net.sigma_max) == (u[999].item(), u[0].item())
    assert list(net.state_dict())[0] == "u" and net.model.out_conv.out_channels == 6
    s = torch.tensor([0.0065, 1.0, 3.0, 100.0, 5e4], dtype=torch.float64)
    nearest = (s[:, None] - u.double()[None]).abs().argmin(1)
    assert torch.equal(net.round_sigma(s, return_index=True), nearest)
    rounded = net.round_sigma(s)
    assert rounded.dtype == torch.float64 and torch.equal(rounded, u.double()[nearest])
    assert net.round_sigma(torch.tensor(2.0)).shape == ()


@pytest.mark.parametrize("cls", [EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond])
@pytest.mark.parametrize("model", ["SongUNet", "DhariwalUNet"])
def test_edm_precond_with_real_tiny_unets(cls, model):
    torch.manual_seed(0)
    arch = dict(TINY_SONG if model == "SongUNet" else TINY_ADM)
    arch["model_type"] = model
    net = cls(img_resolution=8, img_channels=3, label_dim=10, augment_dim=9, **arch).eval()
    x, sigma = _x(), torch.tensor([0.02, 0.5, 2.5, 80.0])
    with torch.no_grad():
        d = net(x, sigma, class_labels=torch.eye(10)[:4], augment_labels=torch.zeros(4, 9))
        d_none = net(x, sigma)  # zero labels, no augment labels
    assert d.shape == (4, 3, 8, 8) and torch.isfinite(d).all()
    c_skip = 0.25 / (sigma**2 + 0.25) if cls is EDMPrecond else torch.ones(4)
    skip_only = c_skip.reshape(-1, 1, 1, 1) * x
    if model == "DhariwalUNet":  # fresh ADM: out_conv is exactly zero, so D = c_skip x exactly
        assert torch.equal(d, skip_only) and torch.equal(d_none, skip_only)
    else:  # fresh SongUNet: aux_conv at 1e-5 scale, so D ~ c_skip x but not exactly
        assert 0 < (d - skip_only).abs().max() < 1e-2 * (1 + sigma.max())


def test_edm_registry_builds_and_rejects():
    assert set(EDM_CLASSES) == {"EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "Precond"}  # Precond: EDM2's
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, **TINY_SONG)
    net = build_edm_network("VEPrecond", kwargs)
    assert type(net) is VEPrecond and net.sample_shape == (3, 8, 8)
    via_arch = build_network({"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": kwargs})
    assert type(via_arch) is EDMPrecond and type(via_arch.model) is SongUNet
    with pytest.raises(UsageError, match="NoSuchPrecond"):
        build_edm_network("NoSuchPrecond", kwargs)
    with pytest.raises(UsageError, match="EDMPrecond"):
        build_edm_network("EDMPrecond", {**kwargs, "not_a_kwarg": 1})
    with pytest.raises(UsageError, match="unknown EDM network class None"):
        build_network({"kind": "edm", "init_kwargs": kwargs})
    mlp = build_network({"kind": "mlp", "dim": 2, "hidden_dim": 8, "num_layers": 1})
    assert isinstance(mlp, MLPDenoiser)
