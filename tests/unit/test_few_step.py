"""Few-step generators (issue 19, --generator-steps): the noise levels, K-step sampling and backward simulation
against their definitions, computed step by step here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simcli.distill.few_step import simulate_generator
from simcli.nets.denoiser import generate
from simcli.nets.few_step import generate_steps, generator_sigmas, step_sigmas


class Affine(nn.Module):
    """D(x; sigma) = a x / (1 + sigma) + b sigma: a denoiser whose every output depends on x and sigma."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.tensor(0.3))

    def forward(self, x, sigma, labels=None):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.a * x / (1 + s) + self.b * s


def test_the_levels_are_edm_s_ramp_from_sigma_init():
    assert step_sigmas(2.5, 1) == (2.5,)
    levels = step_sigmas(2.5, 4)
    a, b = 2.5 ** (1 / 7), 0.002 ** (1 / 7)
    expected = [(a + k / 4 * (b - a)) ** 7 for k in range(4)]
    assert levels == pytest.approx(expected, rel=1e-12)
    assert levels[0] == pytest.approx(2.5) and all(x > y for x, y in zip(levels, levels[1:], strict=False))
    assert levels[1] == pytest.approx(0.7389, abs=1e-3)  # the second of four levels below 2.5
    assert generator_sigmas(2.5, 3, [1.0, 0.1]) == (2.5, 1.0, 0.1)
    assert generator_sigmas(2.5, 3) == step_sigmas(2.5, 3)
    with pytest.raises(ValueError):
        step_sigmas(2.5, 0)


def test_k_step_sampling_renoises_between_steps():
    net, z = Affine(), torch.randn(5, 3)
    eps = [torch.randn(5, 3), torch.randn(5, 3)]
    draws = iter(eps)
    sigmas = (2.5, 0.7, 0.1)
    out = generate_steps(net, z, sigmas, renoise=lambda x: next(draws))
    x0 = 0.7 * 2.5 * z / 3.5 + 0.3 * 2.5
    for sigma, e in zip(sigmas[1:], eps, strict=True):
        x0 = 0.7 * (x0 + sigma * e) / (1 + sigma) + 0.3 * sigma
    torch.testing.assert_close(out, x0)
    # one step is SIM's generator, and draws no noise
    torch.testing.assert_close(generate_steps(net, z, (2.5,)), generate(net, z, 2.5))
    with pytest.raises(ValueError, match="renoise"):
        generate_steps(net, z, sigmas)


def test_backward_simulation_trains_each_sample_at_its_level_on_its_own_trajectory():
    net, sigmas = Affine(), (2.5, 0.7, 0.1)
    z = torch.randn(64, 2)
    rng = torch.Generator().manual_seed(3)
    out = simulate_generator(net, z, sigmas, None, rng)
    replay = torch.Generator().manual_seed(3)
    level = torch.randint(3, (64,), generator=replay)
    eps = torch.randn((2, 64, 2), generator=replay)
    assert set(level.tolist()) == {0, 1, 2}  # every level is drawn in a batch this size
    assert torch.equal(rng.get_state(), replay.get_state())  # exactly these draws, in this order
    with torch.no_grad():
        x0, inputs = generate(net, z, 2.5), [2.5 * z]
        for k in (1, 2):
            inputs.append(x0 + sigmas[k] * eps[k - 1])
            x0 = net(inputs[-1], torch.full((64,), sigmas[k]))
    for i in range(64):
        k = int(level[i])
        expected = net(inputs[k][i : i + 1], torch.tensor([sigmas[k]]))
        torch.testing.assert_close(out[i : i + 1], expected)
    # the gradient reaches theta through the last evaluation only: d out_i / d b = sigma at the sample's level
    (grad_b,) = torch.autograd.grad(out.sum(), net.b)
    assert math.isclose(float(grad_b), 2 * sum(sigmas[int(k)] for k in level), rel_tol=1e-5)


def test_one_step_simulation_is_the_generator_and_draws_nothing():
    net, z = Affine(), torch.randn(4, 2)
    rng = torch.Generator().manual_seed(0)
    state = rng.get_state()
    torch.testing.assert_close(simulate_generator(net, z, (2.5,), None, rng), generate(net, z, 2.5))
    assert torch.equal(rng.get_state(), state)
