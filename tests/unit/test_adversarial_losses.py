"""SiDA's adversarial term (issue 19): the losses against closed forms, and the discriminator's logits (the channel
mean of an EDM UNet's encoder output) against the encoder run by hand."""

from __future__ import annotations

import math

import pytest
import torch

from simcli.distill.losses import discriminator_loss, edm_weight, generator_adversarial_loss
from simcli.nets.registry import build_edm_network
from tests.helpers.tiny_edm import TINY_DDPMPP


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_the_discriminator_loss_is_the_weighted_mean_of_the_two_cross_entropies():
    real = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.0]]]])  # [2, 1, 1, 2]
    fake = torch.tensor([[[[-3.0, 1.0]]], [[[0.0, 4.0]]]])
    sigma = torch.tensor([0.5, 2.0])
    # BCE(l, 1) = softplus(-l) and BCE(l, 0) = softplus(l), each averaged over the micro-batch and the logit map
    bce_real = sum(softplus(-v) for v in (2.0, -1.0, 0.5, 0.0)) / 4
    bce_fake = sum(softplus(v) for v in (-3.0, 1.0, 0.0, 4.0)) / 4
    expected = [(s**2 + 0.25) / (s * 0.5) ** 2 * 0.5 * (bce_real + bce_fake) for s in (0.5, 2.0)]
    got = discriminator_loss(real, fake, sigma)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=0)
    torch.testing.assert_close(got / edm_weight(sigma), torch.full((2,), 0.5 * (bce_real + bce_fake)))


def test_the_generator_loss_is_clamped_normalised_and_scaled_by_the_pixels():
    logits = torch.tensor([[[[30.0, -30.0]]], [[[1.0, -2.0]]]])
    normaliser = torch.tensor([0.5, 4.0])
    bce = sum(softplus(-v) for v in (10.0, -10.0, 1.0, -2.0)) / 4  # the logits clamped to [-10, 10]
    got = generator_adversarial_loss(logits, normaliser, pixels=192)
    torch.testing.assert_close(got, torch.tensor([bce * 192 / 0.5, bce * 192 / 4.0]), rtol=1e-6, atol=0)
    # the samples' gradient pushes their logits up (towards "real"), not at all where clamped
    leaf = logits.clone().requires_grad_(True)
    generator_adversarial_loss(leaf, normaliser, pixels=192).sum().backward()
    assert leaf.grad[1, 0, 0, 0] < 0 and leaf.grad[1, 0, 0, 1] < 0 and leaf.grad[0].abs().max() == 0


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_the_logits_are_the_channel_mean_of_the_encoders_output(model_type):
    torch.manual_seed(0)
    if model_type == "SongUNet":
        kwargs = {**TINY_DDPMPP, "label_dim": 0}
    else:
        kwargs = {"model_type": "DhariwalUNet", "img_resolution": 8, "img_channels": 3, "label_dim": 0,
                  "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
                  "augment_dim": 0, "dropout": 0.0, "use_fp16": False}
    net = build_edm_network("EDMPrecond", kwargs).eval()
    seen = {}
    last = list(net.model.enc.values())[-1]
    last.register_forward_hook(lambda m, i, o: seen.setdefault("encoder", o))
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.7, 5.0])
    with torch.no_grad():
        plain = net(x, sigma)
        seen.clear()
        out, logits = net(x, sigma, return_logits=True)
        encoder = seen["encoder"]
        alone = net(x, sigma, return_logits=True, decode=False)
    assert torch.equal(out, plain)  # the output unchanged
    assert logits.shape == (2, 1, *encoder.shape[2:]) and torch.equal(alone, logits)
    torch.testing.assert_close(logits, encoder.mean(dim=1, keepdim=True))
    assert net.supports_discriminator
