"""Resolving a run spec from its layers (simcli.config.resolve), without running anything.

Order, lowest first: method defaults < preset < the preset's per-method layer < config file < flags < --set.
Every leaf key reports the layer it came from; errors are UsageErrors that name the offending key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simcli.config.resolve import load_config_file, parse_set_option, resolve_spec, spec_differences
from simcli.config.spec import KarrasUniformNoise, LognormalNoise
from simcli.errors import UsageError
from simcli.teachers.registry import describe_teacher_name


def resolve(teacher: str | None = "gmm-ring8", **kwargs):
    return resolve_spec(teacher, describe_teacher_name, **kwargs)


def write_config(path: Path, data: dict) -> Path:
    """The same mapping as YAML, TOML or JSON, by the file's suffix (flat two-level mappings only)."""
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    elif path.suffix == ".toml":
        path.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
                                for section, body in data.items()))
    else:
        path.write_text("".join(f"{section}:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in body.items())
                                for section, body in data.items()))
    return path


# ---------------------------------------------------------------------------------------------- precedence

# generator.noise.p_mean in each layer, lowest first (gmm-ring8 -> preset gmm, method sim).
P_MEAN_LAYERS = [("method:sim", -3.5), ("preset:gmm:sim", -2.0), ("file", -1.0), ("flag", -0.5), ("--set", 0.25)]


@pytest.mark.parametrize("top", range(len(P_MEAN_LAYERS)))
def test_each_layer_overrides_the_ones_below(tmp_path, top):
    """Give p_mean in every layer up to `top`: the top one wins, and provenance names it."""
    # tiny has no per-method layer, so there the method default shows through
    kwargs: dict = {"preset": "gmm" if top >= 1 else "tiny"}
    if top >= 2:
        kwargs["config_file"] = write_config(tmp_path / "c.json", {"generator": {"noise": {"p_mean": -1.0}}})
    if top >= 3:
        kwargs["flags"] = {"generator": {"noise": {"p_mean": -0.5}}}
    if top >= 4:
        kwargs["sets"] = ["generator.noise.p_mean=0.25"]
    spec, provenance = resolve(**kwargs)
    source, value = P_MEAN_LAYERS[top]
    assert spec.generator.noise.p_mean == value
    assert provenance["generator.noise.p_mean"] == source
    # p_std is given by no layer above the preset, so it keeps the lower layer's value and source
    expected_std = (2.5, "method:sim") if top == 0 else (2.0, "preset:gmm:sim")
    assert (spec.generator.noise.p_std, provenance["generator.noise.p_std"]) == expected_std


def test_preset_overrides_method_defaults_and_spec_defaults_have_no_provenance():
    spec, provenance = resolve(preset="gmm")
    assert spec.ema.halflife_kimg == 20.0 and provenance["ema.halflife_kimg"] == "preset:gmm"
    assert spec.online.noise.p_mean == -1.2 and provenance["online.noise.p_mean"] == "method:sim"
    assert spec.loss.huber_delta == 1.0 and "loss.huber_delta" not in provenance  # the spec's own default
    assert provenance["teacher"] == "flag"


def test_later_set_items_win_over_earlier_ones():
    spec, provenance = resolve(preset="tiny", sets=["seed=3", "seed=11"])
    assert spec.seed == 11 and provenance["seed"] == "--set"


def test_flags_with_none_values_are_not_given():
    spec, provenance = resolve(preset="gmm", flags={"training": {"batch_size": None}, "seed": None})
    assert spec.training.batch_size == 256 and provenance["training.batch_size"] == "preset:gmm"
    assert "seed" not in provenance


# ---------------------------------------------------------------------------------------------- config files


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml", ".json"])
def test_config_file_formats(tmp_path, suffix):
    data = {"training": {"batch_size": 64, "duration_steps": 7}, "loss": {"distance": "l2", "huber_delta": 0.5}}
    path = write_config(tmp_path / f"c{suffix}", data)
    assert load_config_file(path) == data
    spec, provenance = resolve(preset="gmm", config_file=path, flags={"training": {"batch_size": 128}})
    assert (spec.training.batch_size, provenance["training.batch_size"]) == (128, "flag")
    assert (spec.training.duration_steps, provenance["training.duration_steps"]) == (7, "file")
    assert (spec.loss.distance, spec.loss.huber_delta) == ("l2", 0.5)
    assert provenance["loss.distance"] == provenance["loss.huber_delta"] == "file"


def test_config_file_may_name_the_preset_but_the_argument_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nseed: 4\n")
    spec, provenance = resolve(config_file=path)
    assert spec.training.duration_steps == 20 and provenance["training.duration_steps"] == "preset:tiny"
    assert "preset" not in provenance and (spec.seed, provenance["seed"]) == (4, "file")
    spec, provenance = resolve(config_file=path, preset="gmm")
    assert spec.training.duration_kimg == 512.0 and provenance["training.duration_kimg"] == "preset:gmm"


def test_an_empty_config_file_is_an_empty_layer(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config_file(path) == {}
    assert resolve(config_file=path)[0] == resolve()[0]


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("missing.yaml", None, "not found"),
        ("c.ini", "[training]\n", "must end in"),
        ("c.json", "{not json", "could not be parsed"),
        ("c.toml", "training = [", "could not be parsed"),
        ("c.yaml", "- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_bad_config_files_are_usage_errors(tmp_path, name, text, fragment):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=fragment) as info:
        resolve(config_file=path)
    assert name in info.value.message


# ---------------------------------------------------------------------------------------------- --set parsing


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("seed=7", {"seed": 7}),
        ("online.optimizer.lr=0.5", {"online": {"optimizer": {"lr": 0.5}}}),
        ("a.b.c=[1, 2]", {"a": {"b": {"c": [1, 2]}}}),
        ("ema.rampup_ratio=null", {"ema": {"rampup_ratio": None}}),
        ("training.activation_checkpointing=true", {"training": {"activation_checkpointing": True}}),
        ("evaluation.reference=cifar10-train", {"evaluation": {"reference": "cifar10-train"}}),
        ("evaluation.reference=a=b", {"evaluation": {"reference": "a=b"}}),
        (" seed =5", {"seed": 5}),
        ("evaluation.reference=", {"evaluation": {"reference": ""}}),
    ],
)
def test_parse_set_option(item, expected):
    assert parse_set_option(item) == expected


@pytest.mark.parametrize("item", ["seed", "=3", "a..b=1", ".a=1", "a.=1", ""])
def test_malformed_set_items_are_usage_errors(item):
    with pytest.raises(UsageError, match="--set expects key=value"):
        parse_set_option(item)
    with pytest.raises(UsageError, match="--set expects key=value"):
        resolve(sets=[item])


def test_set_values_reach_the_spec_with_their_types():
    # PyYAML reads '1e-4' (no dot) as a string; the spec's float field still gets the number
    spec, provenance = resolve(sets=["online.optimizer.lr=1e-4", "ema.rampup_ratio=null", "training.batch_gpu=64"])
    assert spec.online.optimizer.lr == 1e-4 and isinstance(spec.online.optimizer.lr, float)
    assert spec.ema.rampup_ratio is None and provenance["ema.rampup_ratio"] == "--set"
    assert spec.training.batch_gpu == 64 and spec.training.batch_size // spec.training.batch_gpu == 4


# ---------------------------------------------------------------------------------------------- durations and noise kinds


def test_duration_steps_in_a_higher_layer_replaces_duration_kimg():
    spec, provenance = resolve(preset="gmm", flags={"training": {"duration_steps": 20}})
    assert (spec.training.duration_steps, spec.training.duration_kimg) == (20, None)
    assert provenance["training.duration_steps"] == "flag" and "training.duration_kimg" not in provenance
    assert spec.training.total_steps == 20


def test_duration_kimg_in_a_higher_layer_replaces_duration_steps(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"training": {"duration_steps": 5}})
    spec, provenance = resolve(preset="tiny", config_file=path, sets=["training.duration_kimg=1.6"])
    assert (spec.training.duration_kimg, spec.training.duration_steps) == (1.6, None)
    assert provenance["training.duration_kimg"] == "--set" and "training.duration_steps" not in provenance
    assert spec.training.total_steps == 50  # 1600 images / batch 32


def test_both_durations_in_one_layer_are_refused():
    with pytest.raises(UsageError, match="duration_kimg or duration_steps, not both"):
        resolve(flags={"training": {"duration_kimg": 1.0, "duration_steps": 5}})


def test_a_noise_kind_change_replaces_the_whole_noise_mapping():
    # gmm + sim: the generator noise is lognormal(-2, 2) from the preset's per-method layer
    spec, provenance = resolve(preset="gmm", sets=["generator.noise.kind=karras-uniform"])
    assert spec.generator.noise == KarrasUniformNoise()
    assert provenance["generator.noise.kind"] == "--set"
    assert not [k for k in provenance if k.startswith("generator.noise.") and k != "generator.noise.kind"]
    assert spec.online.noise == LognormalNoise(p_mean=-1.2, p_std=1.2)  # the other noise mapping is untouched


def test_keys_above_a_kind_change_apply_to_the_new_kind(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"generator": {"noise": {"kind": "karras-uniform"}}})
    spec, provenance = resolve(config_file=path, sets=["generator.noise.t_max=500"])
    assert spec.generator.noise == KarrasUniformNoise(t_max=500.0)
    assert provenance["generator.noise.kind"] == "file" and provenance["generator.noise.t_max"] == "--set"


def test_method_sid_brings_karras_uniform_generator_noise_and_lognormal_replaces_it():
    spec, provenance = resolve(flags={"loss": {"method": "sid"}})
    assert spec.generator.noise == KarrasUniformNoise(t_max=800.0)
    assert provenance["generator.noise.t_max"] == "method:sid"
    spec, provenance = resolve(flags={"loss": {"method": "sid"}, "generator": {"noise": {"kind": "lognormal", "p_mean": -1.0}}})
    assert spec.generator.noise == LognormalNoise(p_mean=-1.0)
    assert "generator.noise.t_max" not in provenance


def test_key_order_inside_one_layer_does_not_matter():
    first = resolve(flags={"generator": {"noise": {"kind": "lognormal", "p_mean": -1.0}}})[0]
    last = resolve(flags={"generator": {"noise": {"p_mean": -1.0, "kind": "lognormal"}}})[0]
    assert first.generator.noise.p_mean == last.generator.noise.p_mean == -1.0


def test_repeating_the_noise_kind_keeps_the_lower_layers_settings():
    """--set generator.noise.kind=lognormal on the gmm preset keeps the preset's N(-2, 2^2), not the class defaults."""
    spec, provenance = resolve("gmm-ring8", sets=["generator.noise.kind=lognormal"])
    assert (spec.generator.noise.p_mean, spec.generator.noise.p_std) == (-2.0, 2.0)
    assert provenance["generator.noise.p_mean"] == "preset:gmm:sim"


def test_an_empty_mapping_sets_nothing():
    spec, provenance = resolve(flags={"loss": {"method": "sid"}, "generator": {}})
    assert spec.generator.noise.kind == "karras-uniform" and spec.generator.noise.t_max == 800.0
    assert provenance["generator.noise.t_max"] == "method:sid"


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ("training.foo=1", ["unknown spec key 'training.foo'"]),
        ("bogus=1", ["unknown spec key 'bogus'"]),
        ("generator.noise.t_max=3", ["unknown spec key 'generator.noise.t_max'", "lognormal"]),
        ("training.batch_size=-1", ["spec key 'training.batch_size'", "-1"]),
        ("loss.distance=cosine", ["spec key 'loss.distance'", "cosine"]),
        ("loss.lp_alpha=3", ["spec key 'loss'", "lp_alpha must be even"]),
        ("seed=abc", ["spec key 'seed'", "abc"]),
        ("generator.noise.kind=gauss", ["spec key 'generator.noise'", "gauss"]),
    ],
)
def test_unknown_keys_and_bad_values_name_the_key(item, fragments):
    with pytest.raises(UsageError, match=re.escape(fragments[0])) as info:
        resolve(sets=[item])
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)


def test_unknown_key_hint_lists_the_known_keys():
    with pytest.raises(UsageError, match="unknown spec key 'training.foo'") as info:
        resolve(sets=["training.foo=1"])
    assert "known keys under 'training'" in info.value.hint and "duration_steps" in info.value.hint


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"flags": {"loss": {"method": "gan"}}}, "unknown method 'gan'"),
        ({"teacher": None}, "no teacher given"),
        ({"teacher": "gmm-ring9"}, "unknown teacher 'gmm-ring9'"),
    ],
)
def test_unknown_names_are_usage_errors(kwargs, fragment):
    kwargs = {"teacher": "gmm-ring8", **kwargs}
    with pytest.raises(UsageError, match=fragment):
        resolve(**kwargs)


# ---------------------------------------------------------------------------------------------- teacher names and presets


@pytest.mark.parametrize(
    ("teacher", "preset", "key", "value"),
    [
        ("gmm-ring8", "gmm", "training.duration_kimg", 512.0),
        ("gmm-grid25", "gmm", "ema.halflife_kimg", 20.0),
        ("edm-cifar10", "cifar10", "training.duration_kimg", 200_000.0),
        ("edm-cifar10-cond-ve", "cifar10", "training.batch_size", 256),
        # EDM teachers of other datasets: their dataset's preset (SiD's runs of it, run_sid.sh)
        ("edm-ffhq64", "ffhq64", "training.batch_size", 512),
        ("edm-ffhq64-ve", "ffhq64", "training.precision", "fp16"),
        ("edm-afhqv2-64", "afhq64", "training.duration_kimg", 500_000.0),
        ("edm-afhqv2-64-ve", "afhq64", "training.batch_gpu", 32),
        ("edm-imagenet64", "imagenet64", "ema.halflife_kimg", 2000.0),
        ("edm-imagenet64", "imagenet64", "training.batch_size", 8192),
    ],
)
def test_auto_preset_follows_the_teacher_kind(teacher, preset, key, value):
    for explicit in (None, "auto"):
        spec, provenance = resolve(teacher, preset=explicit)
        section, field = key.split(".")
        assert getattr(getattr(spec, section), field) == value
        assert provenance[key] == f"preset:{preset}"


def test_a_named_preset_replaces_auto():
    spec, provenance = resolve("edm-cifar10", preset="tiny")
    assert spec.training.duration_steps == 20 and provenance["training.duration_steps"] == "preset:tiny"


def test_file_backed_teacher_names_come_back_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path.cwd().resolve()
    spec, _ = resolve("gmm:mix.json")
    assert spec.teacher == f"gmm:{root / 'mix.json'}"
    spec, provenance = resolve("sub/teacher.pkl")
    assert spec.teacher == str(root / "sub" / "teacher.pkl")
    assert provenance["training.duration_kimg"] == "preset:cifar10"  # a .pkl is an EDM teacher
    _, provenance = resolve("sub/edm-ffhq-64x64-uncond-vp.pkl")  # a local copy of an official file: its dataset's
    assert provenance["training.duration_kimg"] == "preset:ffhq64"
    assert resolve("gmm-ring8")[0].teacher == "gmm-ring8" and resolve("edm-cifar10")[0].teacher == "edm-cifar10"


def test_teacher_from_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"teacher": "gmm-grid25"}))
    spec, provenance = resolve(None, config_file=path)
    assert spec.teacher == "gmm-grid25" and provenance["teacher"] == "file"
    assert resolve("gmm-ring8", config_file=path)[0].teacher == "gmm-ring8"  # the argument is a flag


# ---------------------------------------------------------------------------------------------- distances and methods


@pytest.mark.parametrize("method", ["sid", "di"])
@pytest.mark.parametrize("where", ["flag", "--set"])
def test_a_distance_with_sid_or_di_is_refused(method, where):
    kwargs = {"flags": {"loss": {"method": method}}}
    if where == "flag":
        kwargs["flags"]["loss"]["distance"] = "l2"
    else:
        kwargs["sets"] = ["loss.distance=l2"]
    with pytest.raises(UsageError, match="distance") as info:
        resolve(**kwargs)
    assert f"{where}: loss.distance" in info.value.message and method in info.value.message


@pytest.mark.parametrize("method", ["sid", "di"])
def test_sid_and_di_without_a_distance_resolve(method):
    spec, provenance = resolve(flags={"loss": {"method": method}})
    assert spec.loss.method == method and provenance["loss.method"] == "flag"
    assert "loss.distance" not in provenance


def test_a_distance_with_sim_is_accepted():
    spec, provenance = resolve(flags={"loss": {"method": "sim", "distance": "l1"}})
    assert spec.loss.distance == "l1" and provenance["loss.distance"] == "flag"


# ---------------------------------------------------------------------------------------------- spec_differences


def test_spec_differences_lists_changed_leaves_except_the_allowed():
    old = {"seed": 0, "training": {"batch_size": 32, "duration_steps": 20}, "device": "cpu"}
    new = {"seed": 0, "training": {"batch_size": 64, "duration_kimg": 1.0}, "device": "cuda"}
    assert spec_differences(old, old, ()) == []
    assert spec_differences(old, new, ()) == [
        "device", "training.batch_size", "training.duration_kimg", "training.duration_steps",
    ]
    allowed = ("training.duration_kimg", "training.duration_steps", "device")
    assert spec_differences(old, new, allowed) == ["training.batch_size"]


def test_spec_differences_on_resolved_specs():
    from simcli.config.spec import RESUMABLE_CHANGES

    old = resolve(preset="tiny")[0].model_dump(mode="json")
    new = resolve(preset="tiny", flags={"training": {"duration_kimg": 3.2}, "device": "cpu", "seed": 1})[0].model_dump(mode="json")
    assert spec_differences(old, new, RESUMABLE_CHANGES) == ["seed"]
