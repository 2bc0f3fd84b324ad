"""DMD2's pure pieces (Yin et al. 2024): the classifier head, the losses, the noise grid, clipping and warm-up, each
against closed forms on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from simcli.distill.grad_clip import grad_sq_norm, scale_to_norm_, warmup_factor
from simcli.distill.losses import dmd_discriminator_loss, dmd_generator_gan_loss, dmd_generator_loss
from simcli.distill.noise import karras_grid, sample_karras_grid_sigma
from simcli.nets.discriminator_head import DiscriminatorHead, head_geometry, head_parameter_count, norm_groups


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ---- the classifier head -------------------------------------------------------------------------------------------


def test_at_8x8_the_head_is_dmd2s_layers_exactly():
    head = DiscriminatorHead(channels=64, resolution=8)
    conv1, norm1, act1, conv2, norm2, act2, conv3 = head.layers
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((4, 4), (2, 2), (1, 1))
    assert (conv2.kernel_size, conv2.stride, conv2.padding) == ((4, 4), (4, 4), (0, 0))
    assert (conv3.kernel_size, conv3.out_channels) == ((1, 1), 1)
    assert conv1.in_channels == conv1.out_channels == conv2.out_channels == 64
    assert all(c.bias is not None for c in (conv1, conv2, conv3))
    assert norm1.num_groups == norm2.num_groups == 32 and norm1.affine and norm1.eps == 1e-5
    assert isinstance(act1, torch.nn.SiLU) and isinstance(act2, torch.nn.SiLU)
    out = head(torch.randn(2, 64, 8, 8, dtype=torch.bfloat16))
    assert out.shape == (2, 1, 1, 1) and out.dtype == torch.float32


@pytest.mark.parametrize(("resolution", "side"), [(16, 2), (8, 1), (7, 1), (4, 1), (3, 1), (2, 1), (1, 1)])
def test_every_bottleneck_side_gives_the_expected_logit_map(resolution, side):
    head = DiscriminatorHead(channels=8, resolution=resolution, groups=4)
    assert head.out_side == side == head_geometry(resolution)[2]
    assert head(torch.randn(3, 8, resolution, resolution)).shape == (3, 1, side, side)


def test_small_maps_use_the_adapted_kernels():
    assert head_geometry(4) == ((4, 2, 1), 2, 1)  # 4 -> 2 -> 1
    assert head_geometry(2) == ((4, 2, 1), 1, 1)  # 2 -> 1 -> 1
    assert head_geometry(1) == ((1, 1, 0), 1, 1)
    assert head_geometry(6) == ((4, 2, 1), 3, 1)  # 6 -> 3 -> 1


def test_the_norm_groups_are_the_largest_divisor_at_most_groups():
    assert [norm_groups(c) for c in (768, 256, 96, 64, 40, 7, 1)] == [32, 32, 32, 32, 20, 7, 1]
    assert norm_groups(96, groups=20) == 16 and norm_groups(40, groups=32) == 20
    assert DiscriminatorHead(40, 4).layers[1].num_groups == 20


def test_the_head_runs_the_layers_in_order():
    torch.manual_seed(0)
    head = DiscriminatorHead(channels=6, resolution=4, groups=32)  # 6 groups of 1 channel
    x = torch.randn(2, 6, 4, 4)
    c1, n1, _, c2, n2, _, c3 = head.layers
    h = F.silu(F.group_norm(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1), 6, n1.weight, n1.bias))
    h = F.silu(F.group_norm(F.conv2d(h, c2.weight, c2.bias, stride=2), 6, n2.weight, n2.bias))
    torch.testing.assert_close(head(x), F.conv2d(h, c3.weight, c3.bias))


@pytest.mark.parametrize(("channels", "resolution", "groups"),
                         [(768, 8, 32), (256, 8, 32), (96, 2, 32), (64, 4, 32), (40, 1, 32), (12, 16, 5)])
def test_the_parameter_count_matches_the_module(channels, resolution, groups):
    module = DiscriminatorHead(channels, resolution, groups)
    assert head_parameter_count(channels, resolution, groups) == sum(p.numel() for p in module.parameters())


def test_dmd2s_head_has_its_closed_form_count():
    c = 768
    assert head_parameter_count(c, 8) == 2 * (16 * c * c + c) + 4 * c + c + 1 == 18_879_745


# ---- the losses ----------------------------------------------------------------------------------------------------


def test_the_dm_loss_has_dmd2s_gradient_and_its_value():
    torch.manual_seed(0)
    b, shape = 3, (2, 2, 2)
    x0 = torch.randn(b, *shape, requires_grad=True)
    teacher, online = torch.randn(b, *shape), torch.randn(b, *shape)
    loss = dmd_generator_loss(x0, online, teacher)
    assert loss.shape == (b,)
    (got,) = torch.autograd.grad(loss.mean(), x0)

    x = x0.detach()
    w = (x - teacher).abs().mean(dim=(1, 2, 3), keepdim=True)
    g = ((x - teacher) - (x - online)) / w  # (p_real - p_fake) / mean|p_real|
    torch.testing.assert_close(got, g / (b * 8))
    torch.testing.assert_close(loss.detach(), 0.5 * g.pow(2).mean(dim=(1, 2, 3)))
    # DMD2's own form, 0.5 mse(x0, sg(x0 - g)) over batch and pixels: the same value (the batch mean) and gradient
    leaf = x.clone().requires_grad_(True)
    dmd2_loss = 0.5 * F.mse_loss(leaf, (leaf - g).detach())
    (dmd2,) = torch.autograd.grad(dmd2_loss, leaf)
    torch.testing.assert_close(got, dmd2)
    torch.testing.assert_close(loss.detach().mean(), dmd2_loss.detach())


def test_the_dm_gradient_points_from_the_online_model_to_the_teacher():
    x0 = torch.zeros(1, 1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[[1.0, -3.0]]]])  # mean |x0 - D_phi| = 2
    online = torch.tensor([[[[0.0, -1.0]]]])
    dmd_generator_loss(x0, online, teacher).mean().backward()
    # g = (D_psi - D_phi) / 2 = ([-1, 2]) / 2, divided by B C H W = 2
    torch.testing.assert_close(x0.grad, torch.tensor([[[[-0.25, 0.5]]]]))


def test_the_dm_normaliser_is_floored_and_nans_are_zeroed():
    x0 = torch.ones(2, 1, 1, 2, requires_grad=True)
    teacher = torch.ones(2, 1, 1, 2)  # |x0 - D_phi| = 0: the floor 1e-5
    online = torch.tensor([[[[1.0, 1.5]]], [[[float("nan"), 1.0]]]])
    dmd_generator_loss(x0, online, teacher).mean().backward()
    torch.testing.assert_close(x0.grad, torch.tensor([[[[0.0, 0.5 / 1e-5 / 4]]], [[[0.0, 0.0]]]]))


def test_the_discriminator_loss_is_the_two_softplus_means():
    real = torch.tensor([[2.0], [-1.0]])  # [2, 1] as DMD2's squeezed logits
    fake = torch.tensor([[0.5], [-3.0]])
    expected = (softplus(0.5) + softplus(-3.0)) / 2 + (softplus(-2.0) + softplus(1.0)) / 2
    got = dmd_discriminator_loss(real, fake)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_the_generator_gan_loss_is_the_softplus_of_minus_the_logits():
    fake = torch.tensor([[[[0.5]]], [[[-3.0]]], [[[2.0]]]])  # [3, 1, 1, 1]
    expected = (softplus(-0.5) + softplus(3.0) + softplus(-2.0)) / 3
    assert dmd_generator_gan_loss(fake).item() == pytest.approx(expected, rel=1e-6)
    leaf = fake.clone().requires_grad_(True)
    dmd_generator_gan_loss(leaf).backward()
    assert (leaf.grad < 0).all()  # pushes the fake logits towards "real"


# ---- the noise grid ------------------------------------------------------------------------------------------------


def test_the_grid_is_ascending_with_dmd2s_endpoints_and_the_karras_formula():
    grid = karras_grid(1000)
    assert grid.shape == (1000,) and grid.dtype == torch.float32
    assert (grid[1:] > grid[:-1]).all()
    assert grid[0].item() == pytest.approx(0.002, rel=1e-5) and grid[-1].item() == pytest.approx(80.0, rel=1e-6)
    i, rho = 400, 7.0
    frac = (999 - i) / 999  # the flipped ramp
    expected = (80.0 ** (1 / rho) + frac * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    assert grid[i].item() == pytest.approx(expected, rel=1e-5)


def test_the_small_grid_by_hand():
    grid = karras_grid(3, sigma_min=1.0, sigma_max=16.0, rho=2.0)  # ramp over 4 and 1: [1, 2.5^2, 4^2]
    torch.testing.assert_close(grid, torch.tensor([1.0, 6.25, 16.0]))


def test_dmd2s_dm_index_range_is_the_method_default():
    """DMD2's [int(0.02 * 1000), int(0.98 * 1000)] (edm_guidance.py:69-70), as config/methods.py writes it."""
    from simcli.config.methods import METHOD_DEFAULTS

    noise = METHOD_DEFAULTS["dmd2"]["generator"]["noise"]
    assert (noise["index_min"], noise["index_max"]) == (int(0.02 * 1000), int(0.98 * 1000)) == (20, 980)


def test_sampled_sigmas_lie_on_the_grid_and_hit_both_bounds():
    grid = karras_grid(1000)
    g = torch.Generator().manual_seed(0)
    sigma = sample_karras_grid_sigma(4000, 1000, 20, 22, generator=g)
    index = torch.searchsorted(grid, sigma)
    assert torch.equal(grid[index], sigma)
    assert set(index.tolist()) == {20, 21, 22}
    full = sample_karras_grid_sigma(20000, generator=torch.Generator().manual_seed(1))
    assert full.min() == grid[0] and full.max() == grid[-1]
    assert torch.equal(sample_karras_grid_sigma(5, 1000, 7, 7), grid[7].expand(5))


def test_a_bad_index_range_is_refused():
    with pytest.raises(ValueError):
        sample_karras_grid_sigma(2, 1000, 10, 1000)
    with pytest.raises(ValueError):
        sample_karras_grid_sigma(2, 1000, 10, 9)


# ---- clipping and warm-up ------------------------------------------------------------------------------------------


def _grads(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=g, dtype=dtype) * 3 for s in ((4, 5), (7,), (2, 3, 3))]


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-7), (torch.float32, 1e-6)])
@pytest.mark.parametrize("max_norm", [1.0, 10.0, 1e3])
def test_clipping_matches_torch(dtype, rtol, max_norm):
    ours, theirs = _grads(dtype), _grads(dtype)
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in theirs]
    for p, t in zip(params, theirs, strict=True):
        p.grad = t
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    sq = grad_sq_norm(ours)
    assert sq.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(sq.sqrt(), expected_norm.to(sq.dtype), rtol=rtol, atol=0)
    scale_to_norm_(ours, sq.sqrt().item(), max_norm)
    for a, p in zip(ours, params, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=rtol, atol=0)


def test_sharded_norm_is_the_sum_of_the_shards():
    grads = _grads(torch.float32)
    shards = [grads[:1], grads[1:]]
    total = sum(grad_sq_norm(s) for s in shards)
    torch.testing.assert_close(total, grad_sq_norm(grads))
    assert grad_sq_norm([torch.tensor([3.0, 4.0])]).item() == 25.0
    assert grad_sq_norm([torch.tensor([1.0], dtype=torch.bfloat16)]).dtype == torch.float32


def test_the_clip_coefficient_is_torchs_rule():
    g = [torch.tensor([3.0, 4.0])]
    scale_to_norm_(g, total_norm=5.0, max_norm=1.0)
    torch.testing.assert_close(g[0], torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))
    g = [torch.tensor([3.0, 4.0])]
    scale_to_norm_(g, total_norm=5.0, max_norm=10.0)  # below the limit: untouched
    assert torch.equal(g[0], torch.tensor([3.0, 4.0]))
    g = [torch.tensor([3e-6, 4e-6])]
    scale_to_norm_(g, total_norm=1e-6, max_norm=1e-6)  # eps 1e-6 halves it
    torch.testing.assert_close(g[0], torch.tensor([1.5e-6, 2e-6]), rtol=1e-6, atol=0)


def test_warmup_is_diffusers_constant_with_warmup():
    assert [warmup_factor(i, 4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(3, 1) == 1.0
    assert warmup_factor(250, 500) == 0.5
    with pytest.raises(ValueError):
        warmup_factor(-1, 10)


# ---- the update's norm clip and warm-up ----------------------------------------------------------------------------


def test_an_update_clips_the_gradient_norm_and_warms_the_learning_rate_up():
    from simcli.distill.precision import LossScaler
    from simcli.distill.steps import finish_update
    from simcli.world import World

    def step(max_grad_norm, lr_factor=1.0):
        p = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([p], lr=1.0)
        p.grad = torch.tensor([3.0, 4.0])  # norm 5
        finish_update(opt, [p], 1.0, World(), LossScaler(), max_grad_norm=max_grad_norm, lr_factor=lr_factor)
        return p.detach(), opt.param_groups[0]["lr"]

    moved, lr = step(None)
    torch.testing.assert_close(moved, torch.tensor([-3.0, -4.0]))
    moved, _ = step(2.0)  # scaled to norm 2 (torch's rule, 1e-6 below it)
    torch.testing.assert_close(moved, torch.tensor([-1.2, -1.6]), rtol=1e-5, atol=0)
    moved, _ = step(10.0)  # below the bound: untouched
    torch.testing.assert_close(moved, torch.tensor([-3.0, -4.0]))
    moved, lr = step(None, lr_factor=0.25)  # a quarter of the rate for this step; the optimiser keeps its own
    torch.testing.assert_close(moved, torch.tensor([-0.75, -1.0]))
    assert lr == 1.0
