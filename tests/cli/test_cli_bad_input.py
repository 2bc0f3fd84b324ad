"""Bad input: exit code 2, one line 'simcli: error: ...' on stderr, no traceback, nothing created or overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest

TINY = ("--preset", "tiny")


# ---------------------------------------------------------------- distill: names and spec keys


def test_unknown_teacher_lists_known_ones_and_creates_nothing(cli, tree, assert_usage_error, tmp_path):
    out = tmp_path / "run"
    before = tree(tmp_path)
    result = cli("distill", "--teacher", "gmm-ring9", *TINY, "--out", out)
    line = assert_usage_error(result, "unknown teacher 'gmm-ring9'", "gmm-ring8", "gmm-grid25", "gmm:PATH.json")
    assert "known teachers" in line
    assert not out.exists()
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("item", "key", "known"),
    [
        ("loss.distnce=l1", "loss.distnce", "distance"),
        ("generator.optimizer.lrr=1e-3", "generator.optimizer.lrr", "lr"),
        ("trainng.batch_size=8", "trainng", "training"),
        ("sede=3", "sede", "seed"),
    ],
)
def test_mistyped_set_key_is_named(cli, tree, assert_usage_error, tmp_path, item, key, known):
    out = tmp_path / "run"
    before = tree(tmp_path)
    line = assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", out, "--set", item), f"unknown spec key '{key}'")
    assert "known keys" in line and known in line.split("known keys", 1)[1]
    assert not out.exists()
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("c.yaml", "loss:\n  distnce: l1\n", "loss.distnce"),
        ("c.yaml", "trainng:\n  batch_size: 8\n", "trainng"),
        ("c.toml", "[loss]\ndistnce = 'l1'\n", "loss.distnce"),
        ("c.json", '{"generator": {"optimizer": {"lrr": 0.001}}}', "generator.optimizer.lrr"),
    ],
)
def test_mistyped_key_in_config_file_is_named(cli, tree, assert_usage_error, tmp_path, name, text, key):
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / "run"
    before = tree(tmp_path)
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--config", config, "--out", out), f"unknown spec key '{key}'")
    assert not out.exists()
    assert tree(tmp_path) == before


def test_unparsable_and_missing_config_file(cli, assert_usage_error, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--config", bad, "--dry-run"), "could not be parsed", str(bad))
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--config", tmp_path / "nope.yaml", "--dry-run"), "config file not found")
    wrong = tmp_path / "c.ini"
    wrong.write_text("[loss]\n")
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--config", wrong, "--dry-run"), ".yaml, .yml, .toml or .json")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--method", "sim2"), "unknown method 'sim2'"),
        (("--distance", "l3"), "--distance: Input should be"),  # the flag typed, not the key (issue 16)
        (("--preset", "huge"), "unknown preset 'huge'"),
        (("--set", "loss.lp_alpha=3"), "lp_alpha must be even"),
        (("--set", "nokeyvalue"), "--set expects key=value"),
        (("--set", "evaluation.backend=inception"), "spec key 'evaluation.backend': Input should be 'torch-fidelity'"),
        # Not mappings where the spec expects one: these used to crash with an internal error (exit 1).
        (("--set", "loss=3"), "spec key 'loss'"),
        (("--set", "loss=3", "--method", "sid"), "spec key 'loss'"),
    ],
)
def test_other_bad_spec_values(cli, assert_usage_error, tmp_path, args, fragment):
    out = tmp_path / "run"
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", out, *args), fragment)
    assert not out.exists()


def test_non_string_preset_in_config_file(cli, assert_usage_error, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: [tiny]\n")  # used to crash: TypeError unhashable type 'list'
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--config", config, "--dry-run"), "unknown preset")


# ---------------------------------------------------------------- distill: mixture files

RING2 = {"weights": [1, 1], "means": [[0, 0], [1, 1]], "stds": [0.1, 0.1]}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"weights": [1, 1], "means": [[0, 0], [1, 1]], "stds": [0.1, 0.1]', "is not valid JSON"),
        ("[1, 2, 3]", "must hold a JSON object"),
        (json.dumps({k: v for k, v in RING2.items() if k != "stds"}), "missing key(s) ['stds']"),
        (json.dumps({**RING2, "covs": [1, 1]}), "unknown key(s) ['covs']"),
        (json.dumps({**RING2, "means": [[0, 0]]}), "'means' must have shape [2][D], got [1, 2]"),
        (json.dumps({**RING2, "means": [0, 1]}), "'means' must have shape [2][D]"),
        (json.dumps({**RING2, "stds": [0.1, 0.1, 0.1]}), "'stds' must have shape [2] or [2][2], got [3]"),
        (json.dumps({**RING2, "means": [[0, 0], [1]]}), "values must be numbers"),
        (json.dumps({**RING2, "stds": [0.1, -0.1]}), "'stds' must all be > 0"),
        (json.dumps({**RING2, "stds": [0.1, 0.0]}), "'stds' must all be > 0"),
        (json.dumps({**RING2, "weights": [1, -1]}), "'weights' must be >= 0"),
        (json.dumps({**RING2, "weights": []}), "'weights' must be a non-empty list"),
    ],
)
def test_malformed_mixture_file_names_the_file(cli, tree, assert_usage_error, tmp_path, content, fragment):
    mixture = tmp_path / "mix.json"
    mixture.write_text(content)
    out = tmp_path / "run"
    before = tree(tmp_path)
    line = assert_usage_error(cli("distill", "--teacher", f"gmm:{mixture}", *TINY, "--out", out), fragment)
    assert f"mixture file {mixture}" in line
    assert not out.exists(), "a bad teacher must fail before the run directory is created"
    assert tree(tmp_path) == before


def test_missing_mixture_file(cli, assert_usage_error, tmp_path):
    out = tmp_path / "run"
    assert_usage_error(cli("distill", "--teacher", f"gmm:{tmp_path / 'none.json'}", *TINY, "--out", out), "mixture file not found", "none.json")
    assert not out.exists()


def test_malformed_mixture_file_in_sample_and_eval(cli, tree, assert_usage_error, tmp_path):
    mixture = tmp_path / "mix.json"
    mixture.write_text(json.dumps({**RING2, "stds": [0.1, -0.1]}))
    samples = tmp_path / "s.npz"
    np.savez(samples, samples=np.zeros((4, 2), np.float32), seeds=np.arange(4))
    before = tree(tmp_path)
    assert_usage_error(cli("sample", "--teacher", f"gmm:{mixture}", "--n", 4, "--out", tmp_path / "t.npz"), str(mixture), "> 0")
    assert_usage_error(cli("eval", "--teacher", f"gmm:{mixture}", "--samples", samples), str(mixture), "> 0")
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- distill: numbers, directories, durations


@pytest.mark.parametrize(
    ("args", "named"),
    [  # a value from a flag names the flag, one from --set the spec key (issue 16)
        (("--lr", "0"), "--lr: "),
        (("--lr", "-1"), "--lr: "),
        (("--set", "generator.optimizer.lr=0"), "spec key 'generator.optimizer.lr'"),
        (("--set", "online.optimizer.lr=-1e-3"), "spec key 'online.optimizer.lr'"),
        (("--batch-size", "0"), "--batch-size: "),
        (("--batch-size", "-3"), "--batch-size: "),
        (("--set", "training.batch_size=0"), "spec key 'training.batch_size'"),
    ],
)
def test_non_positive_lr_and_batch(cli, tree, assert_usage_error, tmp_path, args, named):
    out = tmp_path / "run"
    before = tree(tmp_path)
    line = assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", out, *args), named, "greater than 0")
    assert "(got " in line
    assert not out.exists()
    assert tree(tmp_path) == before


def test_unwritable_run_directory(cli, tree, assert_usage_error, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file\n")
    before = tree(tmp_path)
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", blocker / "run"), "cannot write to run directory", "file.txt/run")
    assert blocker.read_text() == "a regular file\n"
    assert tree(tmp_path) == before


def test_kimg_and_steps_both_given(cli, assert_usage_error, tmp_path):
    out = tmp_path / "run"
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--kimg", 1, "--steps", 3, "--out", out), "--kimg and --steps both given")
    assert not out.exists()


def test_no_out_and_no_teacher(cli, assert_usage_error):
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY), "no run directory given", "--out")
    assert_usage_error(cli("distill", *TINY, "--dry-run"), "no teacher given", "--teacher")


def test_non_empty_directory_without_a_run_is_untouched(cli, tree, assert_usage_error, tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = tree(tmp_path)
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", out), "is not empty and holds no simcli run")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--method", "sid"), "(loss.method, generator.noise.*, online.augment_p)"),
        (("--method", "di"), "(loss.method, generator.noise.*, generator.score_dropout, generator.sigma_init, online.augment_p)"),
        (("--distance", "l1"), "(loss.distance)"),
        (("--set", "network.hidden_dim=64"), "(network.hidden_dim)"),
        (("--set", "ema.halflife_kimg=1"), "(ema.halflife_kimg)"),  # the learning rates may change (issue 9)
        (("--batch-size", "16"), "(training.batch_size)"),
        (("--teacher", "gmm-grid25"), "(teacher)"),
        (("--seed", "1"), "(seed)"),
    ],
)
def test_resume_with_a_changed_spec_is_refused(cli, tree, assert_usage_error, tiny_run_copy, args, fragment):
    before = tree(tiny_run_copy)
    assert {"config.json", "metrics.jsonl"} <= set(before)
    assert any(k.startswith("state-") for k in before) and any(k.startswith("generator-") for k in before)
    base = ["distill", "--teacher", "gmm-ring8", *TINY, "--out", tiny_run_copy]
    if args[0] == "--teacher":
        base[1:3] = []
    assert_usage_error(cli(*base, *args), "holds a run with a different spec", "refusing to resume", fragment)
    assert tree(tiny_run_copy) == before  # config.json, state-*.pt, generator-*, metrics.jsonl: byte-identical


def test_corrupt_config_json_is_refused(cli, tree, assert_usage_error, tiny_run_copy):
    (tiny_run_copy / "config.json").write_text("{not json")
    before = tree(tiny_run_copy)
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", tiny_run_copy), "config.json is corrupt")
    assert tree(tiny_run_copy) == before


# ---------------------------------------------------------------- sample


def test_sample_out_exists_without_force(cli, tree, assert_usage_error, tmp_path):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious bytes")
    before = tree(tmp_path)
    assert_usage_error(cli("sample", "--teacher", "gmm-ring8", "--n", 4, "--out", out), f"{out} exists", "--force")
    assert out.read_bytes() == b"precious bytes"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("which", ["both", "neither"])
def test_sample_needs_exactly_one_source(cli, assert_usage_error, tiny_run, tmp_path, which):
    _, run_dir = tiny_run
    out = tmp_path / "s.npz"
    sources = ("--generator", run_dir, "--teacher", "gmm-ring8") if which == "both" else ()
    assert_usage_error(cli("sample", *sources, "--n", 4, "--out", out), "exactly one of --generator and --teacher")
    assert not out.exists()


def test_sample_generator_missing(cli, assert_usage_error, tmp_path):
    out = tmp_path / "s.npz"
    assert_usage_error(cli("sample", "--generator", tmp_path / "no-such-run", "--n", 4, "--out", out), "generator not found", "no-such-run")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert_usage_error(cli("sample", "--generator", empty, "--n", 4, "--out", out), "no generator snapshot in", "empty-run")
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not a snapshot")
    assert_usage_error(cli("sample", "--generator", notes, "--n", 4, "--out", out), "not a readable generator snapshot")
    assert not out.exists()


def test_sample_teacher_fit_file_is_not_a_generator(cli, assert_usage_error, tiny_run, tmp_path):
    _, run_dir = tiny_run
    out = tmp_path / "s.npz"
    assert_usage_error(cli("sample", "--generator", run_dir / "teacher-fit.safetensors", "--n", 4, "--out", out), "lacks the architecture or sigma_init")
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("s.txt", "must be an .npz file"), ("s.npy", "must be an .npz file"), ("s", "vector samples are written to an .npz")],
)
def test_sample_out_must_be_npz(cli, tree, assert_usage_error, tmp_path, name, fragment):
    before = tree(tmp_path)
    assert_usage_error(cli("sample", "--teacher", "gmm-ring8", "--n", 4, "--out", tmp_path / name), fragment)
    assert tree(tmp_path) == before


def test_sample_out_directory_missing(cli, assert_usage_error, tmp_path):
    assert_usage_error(cli("sample", "--teacher", "gmm-ring8", "--n", 4, "--out", tmp_path / "nodir" / "s.npz"), "does not exist")
    assert not (tmp_path / "nodir").exists()


def test_sample_unknown_teacher(cli, assert_usage_error, tmp_path):
    assert_usage_error(cli("sample", "--teacher", "gmm-ring9", "--n", 4, "--out", tmp_path / "s.npz"), "unknown teacher 'gmm-ring9'", "gmm-ring8")
    assert not (tmp_path / "s.npz").exists()


# ---------------------------------------------------------------- eval


def test_eval_samples_missing(cli, assert_usage_error, tmp_path):
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8", "--samples", tmp_path / "none.npz"), "samples file not found", "none.npz")


def test_eval_samples_wrong_dimension(cli, tree, assert_usage_error, tmp_path):
    path = tmp_path / "d3.npz"
    np.savez(path, samples=np.zeros((10, 3), np.float32), seeds=np.arange(10))
    before = tree(tmp_path)
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8", "--samples", path), "dimension 3", "has 2")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"samples": np.zeros(10, np.float32)}, "must be [N, D], got shape [10]"),
        ({"x": np.zeros((10, 2), np.float32)}, "has no 'samples' array (keys: x)"),
    ],
)
def test_eval_samples_malformed(cli, assert_usage_error, tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8", "--samples", path), fragment)


def test_eval_needs_a_teacher_and_one_source(cli, assert_usage_error, teacher_npz, tiny_run):
    _, samples = teacher_npz
    _, run_dir = tiny_run
    assert_usage_error(cli("eval", "--samples", samples), "holds vector samples, not images")
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8"), "exactly one of --samples and --generator")
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8", "--samples", samples, "--generator", run_dir), "exactly one of --samples and --generator")
    assert_usage_error(cli("eval", "--teacher", "gmm-ring9", "--samples", samples), "unknown teacher 'gmm-ring9'")


# ---------------------------------------------------------------- files that are not what they claim to be


def test_config_file_not_utf8(cli, assert_usage_error, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00bad")  # used to crash: internal error UnicodeDecodeError, exit 1
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--config", config, "--dry-run"), f"config file {config} could not be read")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage"])
def test_eval_samples_file_corrupt(cli, assert_usage_error, tmp_path, content):
    # An empty file used to end in click's bare 'Aborted.' (EOFError) and a broken zip in an internal error, both exit 1.
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    assert_usage_error(cli("eval", "--teacher", "gmm-ring8", "--samples", path), f"{path} is not a readable npz file")


def test_sample_out_is_a_directory(cli, tree, assert_usage_error, tmp_path):
    out = tmp_path / "d.npz"
    (out / "inside").mkdir(parents=True)
    before = tree(tmp_path)
    for force in ((), ("--force",)):  # with --force this used to crash: internal error IsADirectoryError, exit 1
        assert_usage_error(cli("sample", "--teacher", "gmm-ring8", "--n", 4, "--out", out, *force), f"{out} is a directory")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(("device", "fragment"), [("cuda:7", "cuda:7"), ("tpu9", "unknown device 'tpu9'")])
def test_bad_device_creates_nothing(cli, assert_usage_error, tmp_path, device, fragment):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "run"
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--device", device, "--out", out), fragment)
    assert not out.exists()


def test_official_teacher_offline_names_the_url_and_the_path_and_creates_nothing(cli, tree, assert_usage_error, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SIMCLI_CACHE", str(cache))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    before = tree(tmp_path)
    line = assert_usage_error(
        cli("distill", "--teacher", "edm-cifar10", "--out", tmp_path / "run"),
        "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl",
        str(cache / "edm" / "pretrained" / "edm-cifar10-32x32-uncond-vp.pkl"),
    )
    assert "offline" in line.lower()
    assert tree(tmp_path) == before and not (tmp_path / "run").exists()


def test_edm_teacher_names_are_known_to_dry_run(cli):
    result = cli("distill", "--teacher", "edm-cifar10-cond", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert '"teacher": "edm-cifar10-cond"' in result.stdout


def test_eval_refuses_a_reference_that_no_metric_uses(cli, assert_usage_error, tmp_path):
    """--ref with only --save-stats scores nothing against it: refused rather than silently ignored."""
    samples = tmp_path / "x.npz"
    np.savez(samples, images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros(4, np.int64), seeds=np.arange(4))
    result = cli("eval", "--samples", samples, "--backend", "digits", "--save-stats", tmp_path / "s.npz",
                 "--ref", "digits-train")
    assert_usage_error(result, "--ref given, but no metric uses it")
    assert not (tmp_path / "s.npz").exists()
