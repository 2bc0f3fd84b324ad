"""Recorded architectures are untrusted input: they are checked on the meta device before anything is built.

An EDM pickle's `_init_kwargs` and a native file's architecture record decide how big a network simcli
allocates; a few hundred bytes can ask for a 100+ G parameter model. The loaders compare the record with
sanity bounds and with the file's own tensors first, and only then build for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets import registry
from simcli.nets.registry import MAX_PARAMETERS, build_network, meta_network, network_with_weights
from simcli.rundir.snapshots import save_generator
from simcli.sampling.generator import load_generator
from simcli.teachers.edm_pickle import load_edm_pickle
from tests.helpers.edm_pickle_writer import write_edm_pickle
from tests.helpers.tiny_edm import TINY_DDPMPP

ROOT = Path(__file__).resolve().parents[2]
GIANT = {**TINY_DDPMPP, "model_channels": 100_000, "channel_mult": [1, 2, 2, 2], "num_blocks": 4, "label_dim": 0}
MLP = {"kind": "mlp", "dim": 2, "hidden_dim": 8, "num_layers": 1}


def _hostile_pickle(path: Path, init_kwargs: dict) -> Path:
    """A few hundred bytes: an EDMPrecond record with the given _init_kwargs and no tensors at all."""
    return write_edm_pickle(path, nn.Module(), init_kwargs, class_name="EDMPrecond", extras=False)


def _real_builds(monkeypatch) -> list[str]:
    """Record the default device of every build_network call (meta for the checks, cpu for a real build)."""
    devices: list[str] = []
    original = registry.build_network

    def spy(architecture):
        devices.append(torch.empty(0).device.type)
        return original(architecture)

    monkeypatch.setattr(registry, "build_network", spy)
    return devices


def test_giant_recorded_edm_architecture_is_refused_before_building(tmp_path, monkeypatch):
    path = _hostile_pickle(tmp_path / "giant.pkl", GIANT)
    assert path.stat().st_size < 2000
    devices = _real_builds(monkeypatch)
    with pytest.raises(UsageError, match="parameters") as info:
        load_edm_pickle(path)
    message = info.value.message
    assert "\n" not in message and str(path) in message and f"{MAX_PARAMETERS:,}" in message
    assert devices == ["meta"]


def test_giant_edm_pickle_peak_memory_stays_small(tmp_path):
    """Measured in a fresh process: loading the hostile file raises the peak RSS by well under 500 MB."""
    path = _hostile_pickle(tmp_path / "giant.pkl", GIANT)
    script = (
        "import json, resource, sys\n"
        "from simcli.errors import UsageError\n"
        "from simcli.teachers.edm_pickle import load_edm_pickle\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_edm_pickle(sys.argv[1])\n"
        "    refused = ''\n"
        "except UsageError as exc:\n"
        "    refused = exc.message\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'before_kb': before, 'after_kb': after, 'refused': refused}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "parameters" in result["refused"]
    assert (result["after_kb"] - result["before_kb"]) * 1024 < 500e6, result


@pytest.mark.parametrize("change,expect", [
    ({"num_blocks": 10**9}, "num_blocks=1000000000"),
    ({"channel_mult": [1] * 10_000}, "10000 resolution levels"),
    ({"img_resolution": 10**9}, "img_resolution=1000000000"),
    ({"model_channels": -5}, "cannot build the recorded architecture"),
], ids=["blocks", "levels", "resolution", "negative"])
def test_edm_records_beyond_the_sanity_bounds_are_refused_on_one_line(tmp_path, change, expect):
    path = _hostile_pickle(tmp_path / "bad.pkl", {**TINY_DDPMPP, **change})
    with pytest.raises(UsageError, match=re.escape(expect)) as info:
        load_edm_pickle(path)
    assert "\n" not in info.value.message


def test_iddpm_noise_table_size_is_bounded(tmp_path):
    path = write_edm_pickle(tmp_path / "m.pkl", nn.Module(), {**TINY_DDPMPP, "M": 10**9}, class_name="iDDPMPrecond",
                            extras=False)
    with pytest.raises(UsageError, match="M=1000000000"):
        load_edm_pickle(path)


def test_meta_network_allocates_nothing():
    net = meta_network({"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": GIANT}, "x.pkl")
    assert all(t.device.type == "meta" for t in net.state_dict().values())
    assert registry.count_elements(net) > MAX_PARAMETERS


def test_generator_file_with_mismatched_shapes_is_refused_before_building(tmp_path, monkeypatch):
    tensors = {k: v.clone() for k, v in build_network({**MLP, "hidden_dim": 16}).state_dict().items()}
    path = tmp_path / "generator-000001.safetensors"
    save_generator(path, tensors, {"architecture": MLP, "sigma_init": 2.5})
    devices = _real_builds(monkeypatch)
    with pytest.raises(UsageError, match="with other shapes") as info:
        load_generator(path)
    assert "net.0.weight [16, 34] in the file vs [8, 34] here" in info.value.message
    assert devices == ["meta"]  # the check ran on the meta device; nothing was built for real


def test_generator_file_with_a_giant_record_is_refused(tmp_path, monkeypatch):
    tensors = build_network(MLP).state_dict()
    path = tmp_path / "generator-000002.safetensors"
    save_generator(path, tensors, {"architecture": {**MLP, "hidden_dim": 10**6, "num_layers": 8}, "sigma_init": 2.5})
    devices = _real_builds(monkeypatch)
    with pytest.raises(UsageError, match="parameters"):
        load_generator(path)
    assert devices == ["meta"]


def test_matching_files_still_load(tmp_path):
    net = build_network(MLP)
    loaded = network_with_weights(MLP, net.state_dict(), "x")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True))
    with pytest.raises(UsageError, match="1 missing"):
        network_with_weights(MLP, {k: v for k, v in net.state_dict().items() if k != "net.0.bias"}, "x")
