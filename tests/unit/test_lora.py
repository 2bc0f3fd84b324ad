"""LoRA adapters as weight parametrizations over one shared frozen teacher (simcli.nets.lora).

The EDM cases use simcli's real EDMPrecond + SongUNet (simcli's own Linear / Conv2d layers); the diffusers case a
tiny PixArt transformer (torch.nn layers) wrapped by DiffusersDenoiser.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from simcli.errors import UsageError
from simcli.nets.layers import Conv2d, GroupNorm, Linear
from simcli.nets.lora import (
    LORA_TARGET_NDIMS,
    add_lora,
    is_lora,
    load_lora_state_dict,
    lora_config,
    lora_parameter_count,
    lora_parameters,
    lora_record,
    lora_settings,
    lora_state_dict,
    lora_targets,
    merged_state_dict,
    set_trainable,
    shared_copy,
    trainable_parameters,
)
from simcli.nets.registry import build_edm_network
from tests.helpers.tiny_edm import TINY_DDPMPP

EDM_KWARGS = {**TINY_DDPMPP, "label_dim": 0, "dropout": 0.0}


def tiny_edm(seed: int = 0) -> nn.Module:
    """The tiny DDPM++ EDMPrecond (8x8, 16 channels) with every weight perturbed, in eval mode."""
    torch.manual_seed(seed)
    net = build_edm_network("EDMPrecond", EDM_KWARGS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def edm_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.5, 3.0])


def randomize_adapters(net: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    """Non-zero A and B everywhere, so every adapter changes its layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(net):
            p.copy_(scale * torch.randn(p.shape, generator=g))


def closed_form_state(base: nn.Module, adapters: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The plain state dict with W + scale * B @ A for every adapted layer, computed here, not by the module."""
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for key in adapters:
        if key.endswith(".lora_A"):
            layer = key[: -len(".lora_A")]
            w = state[f"{layer}.weight"]
            b_mat, a_mat = adapters[f"{layer}.lora_B"], adapters[key]
            state[f"{layer}.weight"] = w + scale * (b_mat @ a_mat).reshape(w.shape)
    return state


def edm_layer_names(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, (Linear, Conv2d)) and m.weight is not None]


# ---------------------------------------------------------------------------------------------- targets


def test_targets_of_an_edm_network_are_its_linear_and_conv_layers():
    net = tiny_edm()
    names = [n for n, _ in lora_targets(net)]
    assert names == edm_layer_names(net) and "model.enc.8x8_conv" in names and "model.map_layer0" in names
    assert not any(isinstance(m, GroupNorm) for _, m in lora_targets(net))
    assert all(m.weight.ndim in LORA_TARGET_NDIMS for _, m in lora_targets(net))
    # the resampling-only convs (kernel 0) own no weight
    assert all(net.get_submodule(n).weight is not None for n in names)


class Mixed(nn.Module):
    """A module with every kind of weight lora_targets must tell apart."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 8)
        self.empty = nn.Linear(0, 4)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)
        self.conv1d = nn.Conv1d(8, 4, 3)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.lin(self.embed(tokens)))  # [B, 16, 8]
        h = self.gn(self.conv(h.transpose(1, 2).reshape(-1, 8, 4, 4)))  # [B, 4, 4, 4]
        return self.head(h.flatten(2).transpose(1, 2))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_targets_skip_embeddings_norms_other_ranks_and_empty_layers():
    torch.manual_seed(0)
    base = Mixed()
    assert [n for n, _ in lora_targets(base)] == ["lin", "conv", "head"]
    net = add_lora(shared_copy(base), rank=2)
    assert [k for k in lora_state_dict(net)] == [f"{n}.lora_{m}" for n in ("conv", "head", "lin") for m in "AB"]
    tokens = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert torch.equal(net(tokens), base(tokens))


# ---------------------------------------------------------------------------------------------- shared copies


def test_shared_copy_shares_every_parameter_and_buffer():
    teacher = tiny_edm()
    twin = shared_copy(teacher)
    assert twin is not teacher and twin.model is not teacher.model
    assert all(a is b for a, b in zip(twin.parameters(), teacher.parameters(), strict=True))
    buffers = list(teacher.buffers())
    assert buffers and all(a is b for a, b in zip(twin.buffers(), buffers, strict=True))
    x, sigma = edm_inputs()
    with torch.no_grad():
        assert torch.equal(twin(x, sigma), teacher(x, sigma))


def test_add_lora_keeps_and_freezes_the_base_weight():
    teacher = tiny_edm()
    old = teacher.model.enc["8x8_conv"].weight
    net = add_lora(shared_copy(teacher), rank=4)
    layer = net.model.enc["8x8_conv"]
    assert layer.parametrizations.weight.original is old and not old.requires_grad
    assert isinstance(layer, Conv2d) and is_lora(net) and not is_lora(teacher)
    assert layer.parametrizations.weight[0].lora_A.shape == (4, 3 * 3 * 3)
    assert layer.parametrizations.weight[0].lora_B.shape == (16, 4)
    assert not torch.count_nonzero(layer.parametrizations.weight[0].lora_B)
    # parametrize moves the base weight and the adapters under `parametrizations` in state_dict()
    keys = net.state_dict().keys()
    assert "model.enc.8x8_conv.parametrizations.weight.original" in keys
    assert "model.enc.8x8_conv.parametrizations.weight.0.lora_A" in keys and "model.enc.8x8_conv.weight" not in keys
    assert lora_config(net) == (4, 4.0) and lora_config(teacher) is None


def test_add_lora_refuses_bad_settings_and_a_second_call():
    for rank, alpha in ((0, None), (True, None), (2.0, None), (2, 0.0), (2, float("nan"))):
        with pytest.raises(ValueError, match="LoRA"):
            add_lora(tiny_edm(), rank, alpha)
    net = add_lora(tiny_edm(), 2)
    with pytest.raises(ValueError, match="already"):
        add_lora(net, 2)
    with pytest.raises(ValueError, match="no linear or conv layer"):
        add_lora(nn.Sequential(nn.LayerNorm(4)), 2)


def test_rank_is_clamped_per_layer_and_the_scale_is_alpha_over_rank():
    net = add_lora(tiny_edm(), rank=40, alpha=10)
    adapters = lora_state_dict(net)
    assert adapters["model.dec.8x8_aux_conv.lora_A"].shape == (3, 16 * 9)  # out = 3
    assert adapters["model.dec.8x8_aux_conv.lora_B"].shape == (3, 3)
    assert adapters["model.map_augment.lora_A"].shape == (9, 9)  # fan_in = 9
    assert adapters["model.enc.4x4_block0.qkv.lora_A"].shape == (32, 32)  # fan_in = 32 < 40 < out = 96
    assert adapters["model.map_layer1.lora_A"].shape == (40, 64)
    assert net.model.map_layer1.parametrizations.weight[0].scale == 0.25


def test_init_is_kaiming_uniform_like_nn_linear():
    net = add_lora(nn.Linear(400, 300), rank=200, generator=torch.Generator().manual_seed(0))
    a = lora_parameters(net)[0]
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3), bound = gain * sqrt(3 / fan_in)
    assert a.shape == (200, 400) and a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    assert abs(a.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    again = add_lora(nn.Linear(400, 300), rank=200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lora_parameters(again)[0], a)


# ---------------------------------------------------------------------------------------------- outputs


def test_a_fresh_adapter_changes_nothing():
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=4)
    x, sigma = edm_inputs()
    with torch.no_grad():
        assert torch.equal(net(x, sigma), teacher(x, sigma))


def test_output_is_the_closed_form_network():
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=3, alpha=6)
    randomize_adapters(net)
    plain = copy.deepcopy(teacher)
    plain.load_state_dict(closed_form_state(teacher, lora_state_dict(net), scale=2.0))
    x, sigma = edm_inputs()
    with torch.no_grad():
        out, expected, base = net(x, sigma), plain(x, sigma), teacher(x, sigma)
    assert (out - base).abs().max() > 1e-3  # the adapters matter
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 4), lambda: Linear(5, 4, init_bias=0.1)],
                         ids=["torch-linear", "simcli-linear"])
def test_gradients_of_one_linear_layer_are_the_closed_form(make):
    torch.manual_seed(0)
    layer = add_lora(make(), rank=2, alpha=3)
    randomize_adapters(layer, scale=0.5)
    a_mat, b_mat = (p.detach().clone() for p in lora_parameters(layer))
    x, g = torch.randn(6, 5), torch.randn(6, 4)
    (layer(x) * g).sum().backward()  # dL/dy = g
    s = 1.5
    grad_a, grad_b = (p.grad for p in lora_parameters(layer))
    torch.testing.assert_close(grad_b, s * g.t() @ x @ a_mat.t(), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_a, s * b_mat.t() @ g.t() @ x, rtol=0, atol=1e-6)
    base = base_weight(layer)
    assert base.grad is None and layer.bias.grad is None and not base.requires_grad


def test_backward_reaches_only_the_adapters():
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=4)
    x, sigma = edm_inputs()
    augment = torch.randn(2, EDM_KWARGS["augment_dim"], generator=torch.Generator().manual_seed(4))
    net(x, sigma, augment_labels=augment).square().mean().backward()  # augment labels: map_augment is used too
    for p in teacher.parameters():
        assert p.grad is None and not p.requires_grad
    adapters = lora_parameters(net)
    assert all(p.grad is not None for p in adapters)
    assert all(torch.count_nonzero(p.grad) for p in adapters[1::2])  # every lora_B (sorted: A, B per layer)
    assert trainable_parameters(net) == adapters


# ---------------------------------------------------------------------------------------------- three networks


def test_teacher_generator_and_online_share_one_base():
    teacher = tiny_edm()
    generator = add_lora(shared_copy(teacher), rank=4, generator=torch.Generator().manual_seed(1))
    online = add_lora(shared_copy(teacher), rank=4, generator=torch.Generator().manual_seed(2))
    for name, layer in lora_targets(teacher):
        for net in (generator, online):
            original = base_weight(net.get_submodule(name))
            assert original is layer.weight and original.data_ptr() == layer.weight.data_ptr()
    storage = {p.data_ptr(): p.numel() for net in (teacher, generator, online) for p in net.parameters()}
    teacher_count = sum(p.numel() for p in teacher.parameters())
    adapter_count = sum(p.numel() for p in lora_parameters(generator))
    assert adapter_count == sum(p.numel() for p in lora_parameters(online)) > 0
    assert sum(storage.values()) == teacher_count + 2 * adapter_count

    x, sigma = edm_inputs()
    with torch.no_grad():
        before = teacher(x, sigma)
    weights = [p.clone() for p in teacher.parameters()]
    optimizer = torch.optim.Adam(trainable_parameters(set_trainable(generator, True)), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        generator(x, sigma).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma), before)
        assert torch.equal(online(x, sigma), before)
        assert (generator(x, sigma) - before).abs().max() > 1e-4
    assert all(torch.equal(p, w) for p, w in zip(teacher.parameters(), weights, strict=True))


def test_a_copy_of_a_lora_network_shares_the_base_and_clones_the_adapters():
    teacher = tiny_edm()
    generator = add_lora(shared_copy(teacher), rank=2)
    randomize_adapters(generator)
    ema = shared_copy(generator)
    base = {id(p) for p in teacher.parameters()}
    assert {id(p) for p in ema.parameters()} - {id(p) for p in lora_parameters(ema)} == base
    for mine, theirs in zip(lora_parameters(ema), lora_parameters(generator), strict=True):
        assert mine is not theirs and torch.equal(mine, theirs)
    x, sigma = edm_inputs()
    with torch.no_grad():
        before = ema(x, sigma)
        lora_parameters(generator)[1].add_(1.0)
        assert torch.equal(ema(x, sigma), before) and not torch.equal(generator(x, sigma), before)
    aliased = shared_copy(generator, share_adapters=True)
    assert all(a is b for a, b in zip(lora_parameters(aliased), lora_parameters(generator), strict=True))


def test_set_trainable_never_unfreezes_a_shared_base_weight():
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=2)
    set_trainable(net, True)
    assert all(p.requires_grad for p in lora_parameters(net))
    assert not any(p.requires_grad for p in teacher.parameters())
    set_trainable(net, False)
    assert not any(p.requires_grad for p in net.parameters())
    plain = set_trainable(tiny_edm(), False)
    assert not any(p.requires_grad for p in plain.parameters())
    assert all(p.requires_grad for p in set_trainable(plain, True).parameters())


# ---------------------------------------------------------------------------------------------- saving and loading


def test_lora_state_dict_round_trip_and_checks(tmp_path):
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=3)
    randomize_adapters(net)
    state = lora_state_dict(net)
    assert list(state) == sorted(state) and "model.enc.8x8_conv.lora_A" in state and len(state) == 2 * len(
        lora_targets(teacher))
    assert all(not v.requires_grad for v in state.values())
    assert all(v.data_ptr() != p.data_ptr() for v, p in zip(state.values(), lora_parameters(net), strict=True))

    path = tmp_path / "adapters.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    other = add_lora(shared_copy(teacher), rank=3)
    assert load_lora_state_dict(other, loaded) == ([], [])
    x, sigma = edm_inputs()
    with torch.no_grad():
        assert torch.equal(other(x, sigma), net(x, sigma))

    bad = dict(state, **{"model.map_layer0.lora_B": torch.zeros(64, 5)})
    with pytest.raises(ValueError, match="'model.map_layer0.lora_B' has shape"):
        load_lora_state_dict(other, bad)
    with torch.no_grad():
        assert torch.equal(other(x, sigma), net(x, sigma))  # nothing was copied
    missing = {k: v for k, v in state.items() if k != "model.map_layer1.lora_A"}
    with pytest.raises(ValueError, match="missing key 'model.map_layer1.lora_A'"):
        load_lora_state_dict(other, missing)
    assert load_lora_state_dict(other, missing, strict=False) == (["model.map_layer1.lora_A"], [])
    with pytest.raises(ValueError, match="unexpected key 'model.nope.lora_A'"):
        load_lora_state_dict(other, dict(state, **{"model.nope.lora_A": torch.zeros(1)}))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        load_lora_state_dict(tiny_edm(), state)


def test_merged_state_dict_loads_into_a_plain_network():
    teacher = tiny_edm()
    net = add_lora(shared_copy(teacher), rank=3, alpha=1.5)
    randomize_adapters(net)
    merged = merged_state_dict(net)
    assert set(merged) == set(teacher.state_dict())
    plain = build_edm_network("EDMPrecond", EDM_KWARGS).eval()
    plain.load_state_dict(merged, strict=True)
    x, sigma = edm_inputs()
    with torch.no_grad():
        out = net(x, sigma)
        assert (out - teacher(x, sigma)).abs().max() > 1e-3
        torch.testing.assert_close(plain(x, sigma), out, rtol=0, atol=1e-6)
    assert merged["model.map_layer0.bias"].data_ptr() == teacher.model.map_layer0.bias.data_ptr()
    assert merged["model.map_layer0.weight"].data_ptr() != teacher.model.map_layer0.weight.data_ptr()


# ---------------------------------------------------------------------------------------------- records and sizes


def test_record_round_trip_and_refusals():
    record = {"kind": "edm", **lora_record(4, 8)}
    assert record["lora"] == {"rank": 4, "alpha": 8.0}
    assert lora_settings(json.loads(json.dumps(record))) == (4, 8.0)
    assert lora_record(4)["lora"]["alpha"] == 4.0
    assert lora_settings({"kind": "edm"}) is None and lora_settings({"lora": None}) is None
    for entry in ({"rank": 0, "alpha": 1}, {"rank": True, "alpha": 1}, {"rank": "4", "alpha": 1},
                  {"rank": 4, "alpha": float("inf")}, {"rank": 4, "alpha": -1}, {"rank": 4},
                  {"rank": 4, "alpha": 4, "dropout": 0.1}, [4, 4], {"rank": 10**9, "alpha": 1}):
        with pytest.raises(UsageError, match="LoRA"):
            lora_settings({"lora": entry})
    with pytest.raises(ValueError):
        lora_record(0, 1)


def test_parameter_count_from_a_meta_network():
    with torch.device("meta"):
        skeleton = build_edm_network("EDMPrecond", EDM_KWARGS)
    expected = sum(p.numel() for p in lora_parameters(add_lora(tiny_edm(), rank=20)))
    assert lora_parameter_count(skeleton, 20) == expected > 0
    shapes = [m.weight.shape for _, m in lora_targets(skeleton)]
    assert lora_parameter_count(shapes, 20) == expected
    assert lora_parameter_count([(8, 3, 3, 3), (4, 2)], 5) == 5 * (8 + 27) + 2 * (4 + 2)
    meta_lora = add_lora(skeleton, rank=20)  # the memory plan can adapt a skeleton too
    adapters = lora_parameters(meta_lora)
    assert all(p.is_meta for p in adapters) and sum(p.numel() for p in adapters) == expected


# ---------------------------------------------------------------------------------------------- a diffusers network


@pytest.fixture(scope="module")
def pixart():
    pytest.importorskip("diffusers")
    from diffusers import PixArtTransformer2DModel

    from simcli.nets.diffusers_denoiser import DiffusersDenoiser

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, out_channels=8, cross_attention_dim=24).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return DiffusersDenoiser(transformer, {}, vae_scale_factor=8).eval()


def pixart_inputs():
    from simcli.nets.text_condition import TextCondition

    g = torch.Generator().manual_seed(3)
    cond = TextCondition(torch.randn(2, 5, 32, generator=g), torch.ones(2, 5))
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.3, 12.0]), cond


def test_a_diffusers_network_adapts_its_torch_layers(pixart):
    teacher = pixart
    targets = lora_targets(teacher)
    assert targets and all(isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in targets)
    assert any(isinstance(m, nn.Conv2d) for _, m in targets)
    net = add_lora(shared_copy(teacher), rank=4)
    x, sigma, cond = pixart_inputs()
    with torch.no_grad():
        base = teacher(x, sigma, cond)
        assert torch.equal(net(x, sigma, cond), base)
    randomize_adapters(net)
    with torch.no_grad():
        out = net(x, sigma, cond)
    assert (out - base).abs().max() > 1e-3
    plain = copy.deepcopy(teacher)
    plain.load_state_dict(closed_form_state(teacher, lora_state_dict(net), scale=1.0))
    merged = copy.deepcopy(teacher)
    merged.load_state_dict(merged_state_dict(net), strict=True)
    # torch's layers take a branch, x A^T B^T added to x W^T: the same sum in another order (rounding only)
    scale = out.abs().max()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, sigma, cond), out, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(merged(x, sigma, cond), out, rtol=0, atol=1e-5 * scale)
    branches = [net.get_submodule(name) for name, m in lora_targets(teacher) if type(m) in (nn.Linear, nn.Conv2d)]
    assert branches and all(hasattr(m, "lora_adapter") for m in branches)
    net(x, sigma, cond).square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in lora_parameters(net))
    assert lora_parameter_count(teacher, 4) == sum(p.numel() for p in lora_parameters(net))


def base_weight(layer):
    """The frozen base weight of an adapted layer: its own weight (a branch) or the parametrization's original."""
    return layer.parametrizations.weight.original if parametrize.is_parametrized(layer, "weight") else layer.weight


@pytest.mark.parametrize("make", [lambda: torch.nn.Linear(6, 5), lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                  lambda: torch.nn.Conv2d(3, 4, (3, 1), dilation=2)], ids=["linear", "conv", "conv-dilated"])
def test_torch_layers_take_a_branch_equal_to_the_merged_weight(make):
    """torch's own layers: y = layer(x) + scale B(A(x)), the base weight untouched, equal to the merged layer's."""
    torch.manual_seed(0)
    layer = make()
    base = layer.weight
    add_lora(layer, rank=2, alpha=3)
    randomize_adapters(layer, scale=0.5)
    assert layer.weight is base and not parametrize.is_parametrized(layer)
    assert sorted(lora_state_dict(layer)) == ["lora_A", "lora_B"]
    x = torch.randn(2, 6) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 3, 9, 9)
    plain = make()
    plain.load_state_dict(merged_state_dict(layer))
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)
