"""EDM2's learned uncertainty u(sigma) in SiD's and SiDA's EDM2 losses (mingyuanzhou/SiD@a5510fdf, branch sida,
sida_training_edm2/sida_loss_edm2.py): the two loss functions against closed forms, and the online and generator
updates that use them, each loss recomputed here from the same batch."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from simcli.config.spec import AdversarialSpec, KarrasUniformNoise, LognormalNoise, LossSpec
from simcli.distill.batches import BatchPlan
from simcli.distill.losses import (
    discriminator_loss,
    generator_adversarial_loss,
    online_dsm_loss,
    sid_generator_loss,
    sid_normaliser,
    uncertainty_dsm_loss,
    uncertainty_scaled,
)
from simcli.distill.steps import Context, generator_update, make_generator_loss, noisy_generator_batch, online_update
from simcli.distill.streams import GENERATOR_PHASE, IterationStreams, online_phase
from simcli.nets.edm2_layers import MPConv
from simcli.nets.lora import add_lora, lora_targets, set_trainable, shared_copy
from tests.helpers.edm2_pickle_writer import tiny_edm2

DT = torch.float64
SHAPE = (4, 8, 8)  # C, H, W
N = math.prod(SHAPE)  # 256 elements per sample


def edm_lambda(sigma: float, sigma_data: float = 0.5) -> float:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# ---------------------------------------------------------------------------------------------- the two functions


def test_uncertainty_dsm_loss_is_lambda_over_e_u_times_the_squared_error_plus_n_u():
    sigma, u, c = [0.3, 4.0, 1.0], [0.7, -1.2, 0.0], [0.5, -2.0, 0.1]  # D - x0 = c everywhere in sample b
    x0 = torch.randn(3, *SHAPE, dtype=DT, generator=torch.Generator().manual_seed(0))
    online = x0 + torch.tensor(c, dtype=DT).view(3, 1, 1, 1)
    got = uncertainty_dsm_loss(online, x0, torch.tensor(sigma, dtype=DT), torch.tensor(u, dtype=DT).view(3, 1, 1, 1))
    expected = [edm_lambda(s) / math.exp(v) * N * cb**2 + N * v for s, v, cb in zip(sigma, u, c, strict=True)]
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-12, atol=0)
    # sigma = 1, u = 0, c = 0.1: lambda(1) = 1.25 / 0.25 = 5, so 5 * 256 * 0.01 = 12.8 and no u term
    assert got[2].item() == pytest.approx(12.8, rel=1e-12)


def test_it_is_edm2s_per_element_loss_summed_and_edms_at_u_0():
    g = torch.Generator().manual_seed(1)
    x0, online = torch.randn(5, *SHAPE, dtype=DT, generator=g), torch.randn(5, *SHAPE, dtype=DT, generator=g)
    sigma = torch.exp(torch.randn(5, dtype=DT, generator=g))
    logvar = torch.randn(5, 1, 1, 1, dtype=DT, generator=g)
    weight = ((sigma**2 + 0.25) / (sigma * 0.5) ** 2).view(5, 1, 1, 1)
    per_element = (weight / logvar.exp()) * ((online - x0) ** 2) + logvar  # EDM2Loss, sida_loss_edm2.py:493
    torch.testing.assert_close(uncertainty_dsm_loss(online, x0, sigma, logvar), per_element.sum([1, 2, 3]),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(uncertainty_dsm_loss(online, x0, sigma, torch.zeros(5, dtype=DT)),
                               online_dsm_loss(online, x0, sigma), rtol=0, atol=0)
    # sigma_data is a parameter: 1.0 gives lambda = (sigma^2 + 1) / sigma^2
    other = uncertainty_dsm_loss(online, x0, sigma, torch.zeros(5, dtype=DT), sigma_data=1.0)
    torch.testing.assert_close(other, (sigma**2 + 1) / sigma**2 * ((online - x0) ** 2).sum([1, 2, 3]))


def test_the_loss_is_smallest_where_e_u_is_the_weighted_mean_squared_error():
    """d/du [A e^-u + n u] = 0 at e^u* = A / n, where the loss is n (1 + u*): u learns the log of the weighted error."""
    g = torch.Generator().manual_seed(2)
    x0, online = torch.randn(2, *SHAPE, dtype=DT, generator=g), torch.randn(2, *SHAPE, dtype=DT, generator=g)
    sigma = torch.tensor([0.2, 3.0], dtype=DT)
    a = [edm_lambda(s) * ((online[i] - x0[i]) ** 2).sum().item() for i, s in enumerate((0.2, 3.0))]
    best = torch.tensor([math.log(a[0] / N), math.log(a[1] / N)], dtype=DT, requires_grad=True)
    loss = uncertainty_dsm_loss(online, x0, sigma, best)
    torch.testing.assert_close(loss.detach(), N * (1 + best.detach()), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), best)
    assert grad.abs().max().item() < 1e-9
    for shift in (-0.1, 0.1):  # and it is a minimum
        assert (uncertainty_dsm_loss(online, x0, sigma, best.detach() + shift) > loss.detach()).all()


def test_uncertainty_scaled_divides_each_sample_by_e_u():
    per_sample = torch.tensor([2.0, 3.0, 5.0], dtype=DT)
    u = torch.tensor([math.log(2.0), 0.0, -math.log(5.0)], dtype=DT)
    expected = torch.tensor([1.0, 3.0, 25.0], dtype=DT)
    torch.testing.assert_close(uncertainty_scaled(per_sample, u), expected)
    torch.testing.assert_close(uncertainty_scaled(per_sample, u.view(3, 1, 1, 1)), expected)


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_adapts_the_uncertainty_layer_at_full_rank():
    """logvar_linear (an MPConv, kernel [], weight [1, logvar_channels]) is a LoRA target; its adapter's rank is
    clamped to 1, which spans every [1, fan_in] update, so an online model with LoRA learns u(sigma) as a whole one."""
    net, _ = tiny_edm2(seed=0)
    assert "logvar_linear" in dict(lora_targets(net))
    online = set_trainable(add_lora(shared_copy(net), 4, generator=torch.Generator().manual_seed(0)), True).train()
    delta = online.logvar_linear.parametrizations.weight[0]
    assert tuple(delta.lora_A.shape) == (1, 8) and tuple(delta.lora_B.shape) == (1, 1)
    x0 = torch.randn(2, *SHAPE)
    sigma = torch.tensor([0.5, 2.0])
    denoised, logvar = online(x0 + sigma.view(2, 1, 1, 1) * torch.randn_like(x0), sigma, None, return_logvar=True)
    uncertainty_dsm_loss(denoised, x0, sigma, logvar).sum().backward()
    assert delta.lora_B.grad.abs().item() > 0  # u's adapter is trained (lora_A starts with no gradient: B = 0)


# ---------------------------------------------------------------------------------------------- the updates


BATCH, MICRO = 8, 4


def networks():
    """(generator, online model, teacher): tiny EDM2 networks of different weights, 10 classes."""
    return tiny_edm2(seed=2)[0], tiny_edm2(seed=1)[0], tiny_edm2(seed=0)[0]


def context(seed: int = 3) -> Context:
    plan = BatchPlan(2.5, BATCH, MICRO, SHAPE, 10, torch.device("cpu"))
    return Context(plan, IterationStreams(seed, 0, torch.device("cpu")))


class StubReal(SimpleNamespace):
    """SiDA's real data (simcli.distill.adversarial.RealData) as the updates read it: fixed images per micro-batch."""

    def draw(self, streams, phase, micro_batch, n, device, augment=None):
        g = torch.Generator().manual_seed(100 * phase + micro_batch)
        labels = torch.nn.functional.one_hot(torch.randint(10, (n,), generator=g), 10).float()
        return torch.randn(n, *SHAPE, generator=g), labels, {}


def sida_real(**settings) -> StubReal:
    return StubReal(style="sida", settings=AdversarialSpec(**settings))


# Note: SiDA's discriminator path runs the online model twice (fake, then real images) before one backward. An EDM2
# network in train mode overwrites its MPConv weights in place in every pass (forced weight normalisation), which
# invalidates the first pass's graph ("modified by an inplace operation"), with EDM's weighting as with EDM2's: an
# issue of EDM2 networks under --data, not of the uncertainty. The SiDA case here switches the overwrite off
# (MPConv.force_normalization, as SiDA's --force_normalization 0) to check the loss itself.
@pytest.mark.parametrize("path", ["plain", "sida", "per-pixel"])
def test_the_online_loss_is_edm2s_with_its_own_uncertainty(path):
    generator, online, _ = networks()
    real = sida_real(online_weight=0.7) if path == "sida" else None
    if path == "sida":  # two train-mode passes before one backward: forced weight normalisation off (see the note)
        for layer in online.modules():
            if isinstance(layer, MPConv):
                layer.force_normalization = False
    ctx, noise = context(), LognormalNoise(p_mean=-0.4, p_std=1.0)
    # The same batches by hand, on copies (a train-mode pass of an EDM2 network renormalises its weights in place).
    gen, on = copy.deepcopy(generator).eval(), copy.deepcopy(online).train()
    expected = 0.0
    for index in range(BATCH // MICRO):
        rng = ctx.streams.begin(online_phase(0), index)
        with torch.no_grad():
            b = noisy_generator_batch(gen, ctx.plan, noise, rng)
        denoised, logits_fake, logvar = on(b.x, b.sigma, b.labels, return_logits=True, return_logvar=True)
        u = logvar.flatten()
        assert u.shape == (MICRO,) and u.std() > 0  # one u per sample, a function of its sigma
        w = (b.sigma**2 + 0.25) / (b.sigma * 0.5) ** 2
        loss = (w / u.exp() * ((denoised - b.x0) ** 2).sum([1, 2, 3]) + N * u).mean()
        if path == "per-pixel":
            loss = loss / N
        if path == "sida":  # the discriminator's loss divided by e^u too (sida_loss_edm2.py:341-342)
            real_x0, real_labels, _ = real.draw(ctx.streams, online_phase(0), index, MICRO, b.x0.device)
            logits_real = on(real_x0 + (b.x - b.x0), b.sigma, real_labels, return_logits=True, decode=False)
            loss = loss + 0.7 * (discriminator_loss(logits_real, logits_fake, b.sigma) / u.exp()).mean()
        expected += loss.item() / (BATCH // MICRO)
    got, finite = online_update(generator, online, torch.optim.SGD(online.parameters(), lr=0.0), ctx, online_phase(0),
                                noise, weighting="uncertainty", real=real, per_pixel=path == "per-pixel")
    assert finite and got == pytest.approx(expected, rel=1e-6)
    # the control: EDM's weighting of the same batches is another number
    again = copy.deepcopy(online)
    edm, _ = online_update(copy.deepcopy(generator), again, torch.optim.SGD(again.parameters(), lr=0.0), context(),
                           online_phase(0), noise, weighting="edm", real=real, per_pixel=path == "per-pixel")
    assert edm != pytest.approx(got, rel=1e-3)


def count_calls(net: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    net.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("method, adversarial", [("sid", False), ("sid", True), ("sim", False), ("di", False)])
def test_the_generator_loss_is_divided_by_e_u_of_the_online_model_from_its_one_pass(method, adversarial):
    generator, online, teacher = networks()
    with torch.no_grad():  # the online model's u apart from the teacher's, so that taking the teacher's would show
        online.logvar_linear.weight.add_(torch.randn(online.logvar_linear.weight.shape,
                                                     generator=torch.Generator().manual_seed(9)))
    real = sida_real(generator_weight=0.3) if adversarial else None
    ctx, noise = context(), KarrasUniformNoise()
    loss_fn = make_generator_loss(LossSpec(method=method, sid_alpha=1.0), "none", N)
    shared = method == "di"  # Diff-Instruct: both score networks in train mode, no graph through them
    gen = copy.deepcopy(generator).train()
    on, te = copy.deepcopy(online).train(shared), copy.deepcopy(teacher).train(shared)
    expected = []
    for index in range(BATCH // MICRO):
        rng = ctx.streams.begin(GENERATOR_PHASE, index)
        b = noisy_generator_batch(gen, ctx.plan, noise, rng)
        with torch.no_grad():
            te_out = te(b.x, b.sigma, b.labels)
            on_out, logits, logvar = on(b.x, b.sigma, b.labels, return_logits=True, return_logvar=True)
            teacher_u = te.eval()(b.x, b.sigma, b.labels, return_logvar=True)[1]
            te.train(shared)
        assert not torch.allclose(logvar, teacher_u)
        per_sample = (sid_generator_loss(b.x0, on_out, te_out, alpha=1.0) if method == "sid"
                      else loss_fn(b.x0, on_out, te_out, b.sigma))
        if adversarial:
            per_sample = per_sample + 0.3 * generator_adversarial_loss(logits, sid_normaliser(b.x0, te_out), N)
        expected.append((per_sample / logvar.flatten().exp()).mean().item() / (BATCH // MICRO))
    calls = count_calls(online)
    got, finite = generator_update(generator, online, teacher, torch.optim.SGD(generator.parameters(), lr=0.0), loss_fn,
                                   ctx, noise, grad_through_networks=not shared,
                                   score_dropout="shared-mask" if shared else "off", real=real, adversarial=adversarial,
                                   uncertainty_scaling=True)
    assert finite and got == pytest.approx(sum(expected), rel=1e-5)
    assert len(calls) == BATCH // MICRO  # u comes from the pass that gives the denoised output: no extra pass


def test_u_is_float32_under_autocast():
    """u is computed outside autocast (simcli's bf16 and fp16 precisions), as upstream computes it in float32."""
    net, _ = tiny_edm2(seed=0)
    x, sigma = torch.randn(3, *SHAPE), torch.tensor([0.02, 0.5, 20.0])
    plain = net(x, sigma, None, return_logvar=True)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, under = net(x, sigma, None, return_logvar=True)
    assert under.dtype == torch.float32 and torch.equal(under, plain)
