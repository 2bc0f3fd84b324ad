"""Values that passed the spec check but failed after config.json was written (issue 16): each is now exit code 2, one
line naming the flag or key, and nothing created in --out."""

from __future__ import annotations

import pytest

TINY = ("--preset", "tiny")


def _refused(cli, tree, assert_usage_error, tmp_path, teacher, args, *fragments):
    out = tmp_path / "run"
    before = tree(tmp_path)
    line = assert_usage_error(cli("distill", "--teacher", teacher, *TINY, "--out", out, *args), *fragments)
    assert not out.exists()
    assert tree(tmp_path) == before
    return line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--seed", "18446744073709551616"), ("--seed: Input should be less than or equal to 18446744073709551615",
                                             "(got 18446744073709551616)")),
        (("--kimg", "inf"), ("--kimg: Input should be a finite number (got inf)",)),
        (("--kimg", "nan"), ("--kimg: Input should be a finite number (got nan)",)),
        (("--batch-size", "1000000000000"), ("--batch-size (1,000,000,000,000) needs at least", "TiB of host memory",
                                             "a lower bound", "--batch-gpu")),
        (("--batch-size", "1000000000000", "--batch-gpu", "100000000000"), ("--batch-gpu (100,000,000,000) needs",)),
        (("--eval-every", "1", "--fid-n", "1000000000000"), ("--fid-n (1,000,000,000,000) needs at least",)),
        (("--set", "network.hidden_dim=200000"), ("spec key 'network.hidden_dim' (200,000)",)),
        (("--set", "network.num_layers=100000"), ("spec key 'network.num_layers': Input should be less than or equal "
                                                  "to 64 (got 100000)", "the value comes from --set")),
        (("--set", "training.batch_size=true"), ("spec key 'training.batch_size': must be a number (got True)",)),
        (("--set", "training.duration_kimg=.inf"), ("spec key 'training.duration_kimg': Input should be a finite",)),
    ],
)
def test_values_that_failed_after_config_json_are_refused_up_front(cli, tree, assert_usage_error, tmp_path, args, fragments):
    _refused(cli, tree, assert_usage_error, tmp_path, "gmm-ring8", args, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--batch-size", "1000000000000"), ("--batch-size (1,000,000,000,000) needs at least", "teacher's network")),
        (("--kimg", "inf"), ("--kimg: Input should be a finite number",)),
        (("--set", "logging.grid_samples=100000000000"), ("spec key 'logging.grid_samples' (100,000,000,000) needs",)),
    ],
)
def test_digits_teacher_values_are_refused_up_front(cli, tree, assert_usage_error, tmp_path, args, fragments):
    _refused(cli, tree, assert_usage_error, tmp_path, "digits", args, *fragments)


def test_a_small_memory_is_a_one_line_refusal_and_batch_gpu_fixes_it(cli, tree, assert_usage_error, tmp_path, monkeypatch):
    """A fake machine of 1 MiB: a batch of 8,192 two-dimensional samples (544 bytes each with the tiny MLP's
    activations) does not fit; micro-batches of 512 do."""
    from simcli.distill import memory_estimate

    monkeypatch.setattr(memory_estimate, "available_bytes", lambda device: 1 << 20)
    line = _refused(cli, tree, assert_usage_error, tmp_path, "gmm-ring8", ("--batch-size", "8192", "--steps", "1"),
                    "--batch-size (8,192) needs at least 4.3 MiB of host memory, more than the 1.0 MiB available")
    assert line.endswith("(hint: a smaller --batch-size, or --batch-gpu N to compute each batch in micro-batches of N "
                         "samples)")
    spec_ok = cli("distill", "--teacher", "gmm-ring8", *TINY, "--out", tmp_path / "ok", "--batch-size", "8192",
                  "--batch-gpu", "512", "--steps", "1", "--set", "teacher_fit.steps=2", "--json")
    assert spec_ok.exit_code == 0, spec_ok.output
    assert (tmp_path / "ok" / "config.json").is_file()


def test_a_bad_value_names_the_flag_only_when_it_came_from_the_flag(cli, assert_usage_error, tmp_path):
    line = assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--dry-run", "--kimg", "inf"), "--kimg: ")
    assert "duration_kimg" not in line
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  duration_kimg: .inf\n")
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--dry-run", "--config", config),
                       "spec key 'training.duration_kimg'", "the value comes from the --config file")
    # --set wins over the flag: its value is the one refused
    assert_usage_error(cli("distill", "--teacher", "gmm-ring8", *TINY, "--dry-run", "--kimg", "3", "--set",
                           "training.duration_kimg=-1"), "spec key 'training.duration_kimg'", "(got -1)")


def test_flag_table_names_real_spec_keys_and_builds_the_flag_layer(cli, json_doc):
    from simcli.cli.distill import FLAG_KEYS, KEY_FLAGS
    from simcli.config.spec import RunSpec

    leaves = set()

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            sub = field.annotation if hasattr(field.annotation, "model_fields") else None
            walk(sub, key + ".") if sub is not None else leaves.add(key)

    walk(RunSpec, "")
    assert {key for keys in FLAG_KEYS.values() for key in keys} <= leaves
    assert KEY_FLAGS["training.duration_kimg"] == "--kimg" and KEY_FLAGS["online.optimizer.lr"] == "--lr"
    result = cli("distill", "--teacher", "gmm-ring8", *TINY, "--dry-run", "--json", "--lr", "3e-4", "--kimg", "2",
                 "--seed", "7", "--fid-n", "500")
    doc = json_doc(result.stdout)
    assert doc["spec"]["generator"]["optimizer"]["lr"] == doc["spec"]["online"]["optimizer"]["lr"] == 3e-4
    assert (doc["spec"]["training"]["duration_kimg"], doc["spec"]["seed"], doc["spec"]["evaluation"]["num_samples"]) == (2, 7, 500)
    assert {doc["provenance"][k] for k in ("generator.optimizer.lr", "online.optimizer.lr", "seed")} == {"flag"}


@pytest.mark.parametrize(
    ("name", "meant"),
    [("gmm-ring9", "did you mean 'gmm-ring8'"), ("digit", "did you mean 'digits'"),
     ("edm-cifar-10", "did you mean 'edm-cifar10'"), ("pixart", "did you mean 'pixart-alpha-512'")],
)
def test_unknown_teacher_suggests_the_nearest_names(cli, assert_usage_error, tmp_path, name, meant):
    line = assert_usage_error(cli("distill", "--teacher", name, *TINY, "--out", tmp_path / "run"),
                              f"unknown teacher '{name}'; {meant}", "known teachers: ")
    assert not (tmp_path / "run").exists()
    assert line.count("simcli: error") == 1


def test_an_unlike_teacher_name_gets_no_guess(cli, assert_usage_error):
    line = assert_usage_error(cli("distill", "--teacher", "zzzz", "--dry-run"), "unknown teacher 'zzzz' (hint: known")
    assert "did you mean" not in line
