"""The pieces of training.sharding that need no second process: the blocks a network is sharded by, the settings
sharding refuses, and the optimiser-state bookkeeping of sharded states."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simcli.distill.sharded_state import complete_adam_state, named_optimizer_state
from simcli.distill.sharding import check_sharding, shard_units
from simcli.errors import UsageError
from simcli.nets.registry import build_edm_network
from simcli.world import World
from tests.helpers.tiny_edm import TINY_DDPMPP, tiny_edm_spec, write_tiny_edm

TWO = World(0, 2, 0, "gloo")


def test_an_edm_unet_is_sharded_by_its_encoder_and_decoder_blocks():
    net = build_edm_network("EDMPrecond", {**TINY_DDPMPP, "label_dim": 0})
    units = shard_units(net)
    blocks = [m for d in (net.model.enc, net.model.dec) for m in d.values()]
    assert units == [m for m in blocks if any(True for _ in m.parameters())]
    covered = {id(p) for u in units for p in u.parameters()}
    rest = [n for n, p in net.named_parameters() if id(p) not in covered]
    assert rest and all(n.startswith("model.map_") for n in rest)  # the root's own unit: the noise embedding


def test_a_network_without_module_lists_is_one_unit():
    assert shard_units(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))) == []


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return tiny_edm_spec(write_tiny_edm(tmp_path_factory.mktemp("t") / "tiny.pkl"), 2)


def _with(spec, **training):
    return spec.model_copy(update={"training": spec.training.model_copy(update=training)})


def test_sharding_applies_to_fsdp_with_several_processes_only(spec):
    assert check_sharding(_with(spec, sharding="fsdp"), TWO, torch.device("cpu"))
    assert not check_sharding(_with(spec, sharding="fsdp"), World(), torch.device("cpu"))
    assert not check_sharding(spec, TWO, torch.device("cpu"))


@pytest.mark.parametrize(("training", "message"), [
    ({"offload_teacher": True}, "needs training.sharding fsdp"),
    ({"offload_teacher": True, "sharding": "fsdp"}, "run is on cpu"),
    ({"compile": True, "sharding": "fsdp"}, "training.compile is not supported"),
    ({"channels_last": True, "sharding": "fsdp"}, "training.channels_last is not supported"),
])
def test_settings_sharding_does_not_take_are_refused(spec, training, message):
    with pytest.raises(UsageError, match=message):
        check_sharding(_with(spec, **training), TWO, torch.device("cpu"))


def test_completed_adam_state_steps_as_adams_own_first_state():
    """A parameter given step 0 and zero moments (to be saved and read by name) then steps as Adam's lazy state."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    twin = copy.deepcopy(net)
    lazy, completed = torch.optim.Adam(net.parameters(), lr=0.1), torch.optim.Adam(twin.parameters(), lr=0.1)
    complete_adam_state(completed)
    assert all(completed.state[p]["step"] == 0 for p in twin.parameters())
    for _ in range(3):
        for model, opt in ((net, lazy), (twin, completed)):
            opt.zero_grad()
            model(torch.ones(5, 3)).square().sum().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_states_are_renamed_from_indices_to_parameter_names():
    net = nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    named = named_optimizer_state(opt.state_dict(), [n for n, _ in net.named_parameters()])
    assert set(named["state"]) == {"weight", "bias"} and named["param_groups"][0]["params"] == ["weight", "bias"]
    assert torch.equal(named["state"]["bias"]["exp_avg"], opt.state[net.bias]["exp_avg"])
