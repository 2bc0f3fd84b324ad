"""The conditioning every denoiser declares (simcli.nets.denoiser.Conditioning) and the typed switches beside it:
what each kind of network says it takes, and what the switches refuse for networks that take no such thing."""

from __future__ import annotations

import pytest
import torch

from simcli.nets.denoiser import Conditioning, Denoiser
from simcli.nets.edm_precond import EDMPrecond
from simcli.nets.mlp import MLPDenoiser
from simcli.nets.text_condition import TextCondition
from simcli.teachers.gmm import ring

TINY_UNET = dict(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[4])


@pytest.mark.parametrize(
    ("net", "expected", "checkpointing"),
    [
        (EDMPrecond(**TINY_UNET, augment_dim=9), Conditioning(augment_dim=9), True),
        (EDMPrecond(**TINY_UNET, label_dim=10), Conditioning(label_dim=10), True),
        (MLPDenoiser(dim=2), Conditioning(), False),
        (ring(num_modes=4), Conditioning(), False),
    ],
    ids=["edm-augment", "edm-classes", "mlp", "mixture"],
)
def test_networks_declare_what_they_take(net, expected, checkpointing):
    assert net.conditioning == expected
    assert not net.conditioning.takes_text
    assert net.supports_activation_checkpointing is checkpointing


def test_unguided_networks_refuse_guidance_and_a_null_condition():
    net = MLPDenoiser(dim=2)
    net.set_guidance_scale(1.0)  # unguided is always allowed
    assert net.guidance_scale == 1.0
    with pytest.raises(ValueError, match="MLPDenoiser takes no guidance"):
        net.set_guidance_scale(4.5)
    with pytest.raises(ValueError, match="MLPDenoiser takes no null condition"):
        net.set_null_condition(TextCondition(torch.zeros(1, 2, 4), torch.ones(1, 2)))
    with pytest.raises(ValueError, match="MLPDenoiser has no activation checkpointing"):
        net.set_activation_checkpointing(True)


def test_the_base_class_declares_class_labels_only():
    class Labelled(Denoiser):
        label_dim = 3

    assert Labelled().conditioning == Conditioning(label_dim=3)
    assert Conditioning(text_dim=4).takes_text and not Conditioning(label_dim=4).takes_text


def test_pixart_declares_text_guidance_and_its_micro_conditions(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from simcli.teachers.registry import load_teacher, teacher_pipeline
    from tests.helpers.tiny_pixart import TINY_CAPTION_CHANNELS, write_tiny_pixart

    name = f"diffusers:{write_tiny_pixart(tmp_path / 'pipe')}"
    net = load_teacher(name).denoiser
    assert net.conditioning == Conditioning(text_dim=TINY_CAPTION_CHANNELS, guidance="cfg")
    assert net.conditioning.takes_text and net.supports_activation_checkpointing
    net.transformer.use_additional_conditions = True  # as diffusers sets it for the 1024 px models
    assert net.conditioning.added == ("resolution", "aspect_ratio")
    net.set_guidance_scale(4.5)
    assert net.guidance_scale == 4.5
    assert teacher_pipeline(name) is not None
    assert teacher_pipeline("gmm-ring8") is None and teacher_pipeline("edm-cifar10") is None


def test_set_dropout_reaches_every_unet_block_and_the_record():
    from simcli.nets.registry import build_network, with_dropout
    from simcli.nets.unet_block import UNetBlock

    architecture = {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": {**TINY_UNET, "dropout": 0.25}}
    net = build_network(architecture)
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    assert blocks and {b.dropout for b in blocks} == {0.25}
    net.set_dropout(0.05)
    assert {b.dropout for b in blocks} == {0.05}
    rebuilt = build_network(with_dropout(architecture, 0.05))
    assert {m.dropout for m in rebuilt.modules() if isinstance(m, UNetBlock)} == {0.05}
    assert architecture["init_kwargs"]["dropout"] == 0.25  # the record given is not changed
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        net.set_dropout(1.5)
    with pytest.raises(ValueError, match="MLPDenoiser has no dropout setting"):
        MLPDenoiser(dim=2).set_dropout(0.1)
    with pytest.raises(ValueError, match="'mlp' network records no EDM dropout"):
        with_dropout({"kind": "mlp", "dim": 2}, 0.1)
    # dropout on: two train-mode passes differ; off: they agree
    x, sigma = torch.randn(2, 3, 8, 8), torch.full((2,), 1.0)
    net.train().set_dropout(0.0)
    assert torch.equal(net(x, sigma), net(x, sigma))
    net.set_dropout(0.5)
    assert not torch.equal(net(x, sigma), net(x, sigma))
