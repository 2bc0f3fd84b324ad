"""Teacher names and the Teacher record they load into (simcli.teachers.registry); no network, no downloads."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from simcli.errors import UsageError
from simcli.nets.registry import build_network
from simcli.teachers.edm2_catalog import NAME_PATTERNS as EDM2_NAME_PATTERNS
from simcli.teachers.edm_catalog import EDM_TEACHERS
from simcli.teachers.hub_teachers import HUB_TEACHERS
from simcli.teachers.registry import (
    TEACHER_KINDS,
    Teacher,
    check_teacher,
    describe_teacher_name,
    known_teachers,
    load_teacher,
    teacher_kind,
)
from tests.helpers.tiny_edm import TINY_DDPMPP, write_tiny_edm

PRESET_OF_KIND = {"mixture": "gmm", "edm": "cifar10", "digits": "digits", "native": "cifar10", "diffusers": "pixart"}
# ("diffusers": PixArt-alpha's; every other family has its own, tested in tests/unit/test_t2i_presets.py)
# The official EDM teachers: the preset of their dataset (any other pickle: cifar10, as above).
PRESET_OF_EDM_DATASET = {"cifar10": "cifar10", "ffhq": "ffhq64", "afhqv2": "afhq64", "imagenet": "imagenet64"}


def plain_names() -> list[str]:
    """Known teacher names that are not patterns (gmm:PATH.json, PATH.pkl, PATH.safetensors)."""
    return [n for n in known_teachers() if "PATH" not in n and "{" not in n]


def test_known_teachers_lists_every_kind_once():
    names = known_teachers()
    assert len(names) == len(set(names))
    assert {"digits", "PATH.safetensors", "gmm-ring8", "gmm-grid25", "gmm:PATH.json", "PATH.pkl", *EDM_TEACHERS,
            *EDM2_NAME_PATTERNS, *HUB_TEACHERS, "diffusers:PATH"} == set(names)
    assert {k.name for k in TEACHER_KINDS} == set(PRESET_OF_KIND)


@pytest.mark.parametrize("name", plain_names())
def test_every_plain_name_maps_to_a_kind(name):
    kind = teacher_kind(name)
    expected = ("edm" if name in EDM_TEACHERS else "digits" if name == "digits"
                else "diffusers" if name in HUB_TEACHERS else "mixture")
    assert kind.name == expected
    if name in HUB_TEACHERS:  # each family's own preset: tests/unit/test_t2i_presets.py
        return
    preset = PRESET_OF_EDM_DATASET[EDM_TEACHERS[name].dataset] if name in EDM_TEACHERS else PRESET_OF_KIND[kind.name]
    assert describe_teacher_name(name) == (name, preset)  # stored as given


@pytest.mark.parametrize("name", ["gmm-ring9", "edm-cifar100", "teacher.pt", "", "GMM-RING8"])
def test_unknown_names_list_the_known_teachers(name):
    with pytest.raises(UsageError, match="unknown teacher") as info:
        describe_teacher_name(name)
    assert f"'{name}'" in info.value.message
    for known in known_teachers():
        assert known in info.value.hint
    with pytest.raises(UsageError, match="unknown teacher"):
        load_teacher(name)
    with pytest.raises(UsageError, match="unknown teacher"):
        check_teacher(name)


def test_file_backed_names_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve()
    assert describe_teacher_name("gmm:m.json") == (f"gmm:{root / 'm.json'}", "gmm")
    assert describe_teacher_name("a/b.pkl") == (str(root / "a" / "b.pkl"), "cifar10")


def test_load_gmm_ring8():
    teacher = load_teacher("gmm-ring8")
    assert isinstance(teacher, Teacher)
    assert (teacher.name, teacher.kind, teacher.display_name) == ("gmm-ring8", "mixture", "gmm-ring8")
    assert teacher.architecture is None and teacher.fid_reference is None
    mix = teacher.mixture
    assert mix is not None and teacher.denoiser is mix and not mix.training
    assert mix.num_components == 8 and mix.dim == 2
    torch.testing.assert_close(mix.means.norm(dim=1), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(mix.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    torch.testing.assert_close(mix.stds, torch.full((8, 2), 0.1, dtype=torch.float64))
    # consecutive modes 45 degrees apart
    angles = torch.atan2(mix.means[:, 1], mix.means[:, 0])
    assert torch.remainder(angles.diff(), 2 * math.pi).sub(math.pi / 4).abs().max() < 1e-12


def test_load_a_gmm_json_file(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"weights": [1, 3], "means": [[0, 0, 0], [1, 2, 3]], "stds": [0.5, 0.25]}))
    check_teacher(f"gmm:{path}")
    teacher = load_teacher(f"gmm:{path}")
    assert teacher.kind == "mixture" and teacher.architecture is None
    torch.testing.assert_close(teacher.mixture.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert teacher.mixture.dim == 3


def test_a_tiny_edm_pickle_loads_and_its_architecture_rebuilds(tmp_path):
    path = write_tiny_edm(tmp_path / "tiny.pkl")
    check_teacher(str(path))
    teacher = load_teacher(str(path))
    assert (teacher.kind, teacher.display_name, teacher.mixture, teacher.fid_reference) == ("edm", "tiny.pkl", None, None)
    net = teacher.denoiser
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    arch = teacher.architecture
    assert arch["kind"] == "edm" and arch["class_name"] == "EDMPrecond"
    assert arch["init_kwargs"] == {**TINY_DDPMPP, "label_dim": 0}
    rebuilt = build_network(arch)
    theirs, ours = rebuilt.state_dict(), net.state_dict()
    assert list(theirs) == list(ours) and len(ours) > 10
    assert all(theirs[k].shape == ours[k].shape for k in ours)
    # a fresh build differs from the loaded weights (write_tiny_edm perturbs every one), the same after loading
    assert not all(torch.equal(theirs[k], ours[k]) for k in ours)
    rebuilt.load_state_dict(ours)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x, sigma), net(x, sigma), rtol=0, atol=0)


def test_check_teacher_refuses_a_missing_pickle(tmp_path):
    with pytest.raises(UsageError, match="EDM pickle not found") as info:
        check_teacher(str(tmp_path / "missing.pkl"))
    assert "missing.pkl" in info.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"weights": [1], "means": [[0, 0]]}', "missing key(s) ['stds']"),
        ('{"weights": [1], "means": [[0, 0]], "stds": [1], "extra": 1}', "unknown key(s) ['extra']"),
        ('{"weights": [1, 1], "means": [[0, 0]], "stds": [1]}', "'means' must have shape [2][D]"),
        ('{"weights": [1], "means": [[0, 0]], "stds": [0]}', "'stds' must all be > 0"),
        ('{"weights": [-1], "means": [[0, 0]], "stds": [1]}', "'weights' must be >= 0"),
    ],
)
def test_check_teacher_refuses_a_malformed_gmm_file(tmp_path, text, fragment):
    path = tmp_path / "mix.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        check_teacher(f"gmm:{path}")


def test_check_teacher_accepts_named_teachers_without_downloading(monkeypatch):
    import simcli.teachers.edm_files as edm_files

    def no_download(*args, **kwargs):
        raise AssertionError("check_teacher must not download")

    monkeypatch.setattr(edm_files, "ensure_teacher_file", no_download)
    for name in plain_names():
        assert check_teacher(name) is None
