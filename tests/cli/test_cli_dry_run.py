"""`distill --dry-run`: the resolved spec and where each value came from (defaults < preset < file < flags < --set)."""

from __future__ import annotations

import json

import pytest

LR = "generator.optimizer.lr"
ONLINE_LR = "online.optimizer.lr"


@pytest.fixture
def lr_config(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("generator:\n  optimizer:\n    lr: 2.0e-4\nonline:\n  optimizer:\n    lr: 2.0e-4\n")
    return path


def dry_run(cli, json_doc, *args):
    result = cli("distill", "--teacher", "gmm-ring8", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json_doc(result.stdout)
    assert set(doc) == {"spec", "provenance", "memory"}
    return doc["spec"], doc["provenance"]


def test_precedence_of_layers_on_the_learning_rate(cli, json_doc, lr_config):
    spec, prov = dry_run(cli, json_doc, "--preset", "cifar10")
    assert spec["generator"]["optimizer"]["lr"] == 1e-5 and LR not in prov  # the spec default (paper, Table 5)

    spec, prov = dry_run(cli, json_doc, "--preset", "gmm")
    assert (spec["generator"]["optimizer"]["lr"], prov[LR]) == (1e-4, "preset:gmm")

    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--config", lr_config)
    assert (spec["generator"]["optimizer"]["lr"], prov[LR]) == (2e-4, "file")
    assert (spec["online"]["optimizer"]["lr"], prov[ONLINE_LR]) == (2e-4, "file")

    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--config", lr_config, "--lr", "3e-4")
    assert (spec["generator"]["optimizer"]["lr"], prov[LR]) == (3e-4, "flag")
    assert (spec["online"]["optimizer"]["lr"], prov[ONLINE_LR]) == (3e-4, "flag")

    spec, prov = dry_run(
        cli, json_doc, "--preset", "gmm", "--config", lr_config, "--lr", "3e-4", "--set", "generator.optimizer.lr=5e-4"
    )
    assert (spec["generator"]["optimizer"]["lr"], prov[LR]) == (5e-4, "--set")
    assert (spec["online"]["optimizer"]["lr"], prov[ONLINE_LR]) == (3e-4, "flag")  # --set touched only one key


def test_untouched_keys_keep_their_layer(cli, json_doc, lr_config):
    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--config", lr_config, "--lr", "3e-4")
    assert (spec["training"]["batch_size"], prov["training.batch_size"]) == (256, "preset:gmm")
    assert (spec["training"]["duration_kimg"], prov["training.duration_kimg"]) == (512.0, "preset:gmm")
    assert (spec["generator"]["noise"]["p_mean"], prov["generator.noise.p_mean"]) == (-2.0, "preset:gmm:sim")
    assert (spec["online"]["noise"]["p_mean"], prov["online.noise.p_mean"]) == (-1.2, "method:sim")
    assert spec["generator"]["optimizer"]["beta2"] == 0.999 and "generator.optimizer.beta2" not in prov
    assert (spec["teacher"], prov["teacher"]) == ("gmm-ring8", "flag")


def test_later_set_wins_over_earlier_set(cli, json_doc):
    spec, prov = dry_run(cli, json_doc, "--preset", "tiny", "--set", "seed=3", "--set", "seed=4")
    assert (spec["seed"], prov["seed"]) == (4, "--set")


def test_auto_preset_and_preset_from_the_config_file(cli, json_doc, tmp_path):
    spec, prov = dry_run(cli, json_doc)  # gmm teacher: auto means gmm
    assert prov[LR] == "preset:gmm" and spec["training"]["duration_kimg"] == 512.0

    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny\nteacher: gmm-grid25\n")
    result = cli("distill", "--config", config, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json_doc(result.stdout)
    assert (doc["spec"]["teacher"], doc["provenance"]["teacher"]) == ("gmm-grid25", "file")
    assert (doc["spec"]["network"]["hidden_dim"], doc["provenance"]["network.hidden_dim"]) == (32, "preset:tiny")

    spec, prov = dry_run(cli, json_doc, "--config", config, "--preset", "gmm")  # the flag beats the file's preset
    assert (spec["teacher"], prov["teacher"]) == ("gmm-ring8", "flag")  # and --teacher beats the file's teacher
    assert prov[LR] == "preset:gmm" and spec["network"]["hidden_dim"] == 256


def test_method_sid_switches_the_generator_noise(cli, json_doc):
    spec, prov = dry_run(cli, json_doc, "--method", "sid")
    assert (spec["loss"]["method"], prov["loss.method"]) == ("sid", "flag")
    noise = spec["generator"]["noise"]
    assert noise == {"kind": "karras-uniform", "t_max": 800.0, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    assert prov["generator.noise.kind"] == "method:sid"
    assert "generator.noise.p_mean" not in prov  # the lognormal keys of SIM's default do not leak through
    assert spec["online"]["noise"] == {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "sigma_min": None, "sigma_max": None}
    assert spec["loss"]["sid_alpha"] == 1.2

    spec, _ = dry_run(cli, json_doc, "--method", "di")
    assert spec["generator"]["noise"]["kind"] == "lognormal" and spec["generator"]["noise"]["p_mean"] == -1.2

    spec, _ = dry_run(cli, json_doc)  # SIM under the gmm preset: the paper's text-to-image noise N(-2, 2^2)
    assert spec["generator"]["noise"]["kind"] == "lognormal" and spec["generator"]["noise"]["p_mean"] == -2.0


def test_method_from_set_and_file_also_switches_noise(cli, json_doc, tmp_path):
    spec, prov = dry_run(cli, json_doc, "--set", "loss.method=sid")
    assert spec["generator"]["noise"]["kind"] == "karras-uniform" and prov["loss.method"] == "--set"
    config = tmp_path / "m.yaml"
    config.write_text("loss:\n  method: sid\n")
    spec, prov = dry_run(cli, json_doc, "--config", config)
    assert spec["generator"]["noise"]["kind"] == "karras-uniform" and prov["loss.method"] == "file"


def test_steps_flag_replaces_the_preset_duration(cli, json_doc):
    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--steps", "7")
    assert spec["training"]["duration_steps"] == 7 and spec["training"]["duration_kimg"] is None
    assert prov["training.duration_steps"] == "flag" and "training.duration_kimg" not in prov

    spec, prov = dry_run(cli, json_doc, "--preset", "tiny", "--kimg", "0.5")
    assert spec["training"]["duration_kimg"] == 0.5 and spec["training"]["duration_steps"] is None
    assert prov["training.duration_kimg"] == "flag" and "training.duration_steps" not in prov

    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--set", "training.duration_steps=9")
    assert (spec["training"]["duration_steps"], spec["training"]["duration_kimg"]) == (9, None)


def test_flags_map_to_their_keys(cli, json_doc):
    spec, prov = dry_run(
        cli, json_doc, "--preset", "tiny", "--distance", "l1", "--batch-size", "8", "--seed", "5", "--device", "cpu"
    )
    assert spec["loss"]["distance"] == "l1" and spec["training"]["batch_size"] == 8
    assert spec["seed"] == 5 and spec["device"] == "cpu"
    assert {prov[k] for k in ("loss.distance", "training.batch_size", "seed", "device")} == {"flag"}


def test_dry_run_text_goes_to_stdout_and_creates_nothing(cli, tree, tmp_path):
    out = tmp_path / "run"
    before = tree(tmp_path)
    result = cli("distill", "--teacher", "gmm-ring8", "--preset", "gmm", "--set", "generator.optimizer.lr=5e-4", "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "generator.optimizer.lr = 0.0005  (--set)" in lines
    assert "online.optimizer.lr = 0.0001  (preset:gmm)" in lines
    assert "generator.optimizer.beta2 = 0.999  (default)" in lines
    assert "teacher = 'gmm-ring8'  (flag)" in lines
    assert not out.exists()
    assert tree(tmp_path) == before


def test_a_new_noise_kind_replaces_the_whole_noise_mapping(cli, json_doc, tmp_path):
    # SiD's defaults give generator.noise = karras-uniform with t_max; a file asking for lognormal must not inherit t_max.
    config = tmp_path / "noise.yaml"
    config.write_text("generator:\n  noise:\n    kind: lognormal\n    p_mean: -2.0\n")
    spec, prov = dry_run(cli, json_doc, "--method", "sid", "--config", config)
    assert spec["generator"]["noise"] == {"kind": "lognormal", "p_mean": -2.0, "p_std": 1.2, "sigma_min": None, "sigma_max": None}
    assert prov["generator.noise.kind"] == "file" and "generator.noise.t_max" not in prov

    spec, prov = dry_run(cli, json_doc, "--config", config, "--set", "generator.noise.kind=karras-uniform")
    assert spec["generator"]["noise"]["kind"] == "karras-uniform" and "generator.noise.p_mean" not in prov


def test_preset_settings_for_one_method_do_not_leak_into_another(cli, json_doc):
    spec, prov = dry_run(cli, json_doc, "--preset", "gmm", "--method", "sid")
    assert spec["generator"]["noise"]["kind"] == "karras-uniform" and prov["generator.noise.kind"] == "method:sid"
    spec, prov = dry_run(cli, json_doc, "--preset", "cifar10")  # the paper's CIFAR-10 noise for SIM
    assert (spec["generator"]["noise"]["p_mean"], spec["generator"]["noise"]["p_std"]) == (-3.5, 2.5)


@pytest.mark.parametrize(
    ("teacher", "method", "preset", "batch", "lr", "augment_p"),
    [
        ("edm-cifar10", "sid", "cifar10", 256, 1e-5, 0.12),
        ("edm-cifar10", "di", "cifar10", 128, 1e-5, 0.12),  # Diff-Instruct's README recipe: --batch 128
        ("edm-ffhq64", "sid", "ffhq64", 512, 1e-5, 0.15),
        ("edm-afhqv2-64", "sid", "afhq64", 512, 5e-6, 0.15),
        ("edm-afhqv2-64", "sim", "afhq64", 512, 5e-6, 0.0),
        ("edm-imagenet64", "sid", "imagenet64", 8192, 4e-6, 0.0),
        ("edm-imagenet64", "di", "imagenet64", 8192, 4e-6, 0.0),
    ],
)
def test_dry_run_shows_the_dataset_preset_of_an_edm_teacher(cli, json_doc, tmp_path, monkeypatch, teacher, method,
                                                             preset, batch, lr, augment_p):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    result = cli("distill", "--teacher", teacher, "--method", method, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json_doc(result.stdout)
    spec, prov = doc["spec"], doc["provenance"]
    assert spec["training"]["batch_size"] == batch
    assert prov["training.batch_size"] in (f"preset:{preset}", f"preset:{preset}:{method}")
    assert spec["generator"]["optimizer"]["lr"] == spec["online"]["optimizer"]["lr"] == lr
    assert spec["online"]["augment_p"] == augment_p
    if preset != "cifar10":
        assert (spec["training"]["precision"], prov["training.precision"]) == ("fp16", f"preset:{preset}")
        assert prov["generator.optimizer.lr"] == f"preset:{preset}:{method}"
    assert not (tmp_path / "cache").exists()  # resolved without downloading or loading the teacher


def test_dry_run_text_names_the_dataset_preset(cli):
    result = cli("distill", "--teacher", "edm-ffhq64", "--method", "sid", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "training.batch_size = 512  (preset:ffhq64)" in lines
    assert "generator.optimizer.beta1 = 0.9  (preset:ffhq64:sid)" in lines
    assert "loss.sid_alpha = 1.2  (preset:ffhq64:sid)" in lines


def test_processes_plans_a_dry_run_only(tmp_path):
    from typer.testing import CliRunner

    from simcli.cli.app import app

    runner = CliRunner()
    ran = runner.invoke(app, ["distill", "--teacher", "gmm-ring8", "--processes", "8", "--out", str(tmp_path / "r")])
    assert ran.exit_code == 2 and "--processes plans a dry run" in ran.stderr and not (tmp_path / "r").exists()
    bad = runner.invoke(app, ["distill", "--teacher", "gmm-ring8", "--dry-run", "--processes", "0"])
    assert bad.exit_code == 2 and "--processes must be" in bad.stderr
    planned = runner.invoke(app, ["distill", "--teacher", "gmm-ring8", "--dry-run", "--json", "--processes", "4",
                                  "--sharding", "fsdp", "--batch-size", "64"])
    assert planned.exit_code == 0, planned.output
    memory = json.loads(planned.stdout)["memory"]
    assert memory["processes"] == 4 and memory["sharding"] == "fsdp" and memory["micro_batch"] == 16
