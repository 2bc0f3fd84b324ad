"""`simcli sample --teacher`: the EDM sampler options (--steps, --churn, --s-min, --s-max, --s-noise, --paper)."""

from __future__ import annotations

import types

import numpy as np
import pytest

import simcli.sampling.run as sampling_run
from simcli.teachers.gmm import ring

DIGITS = ("--teacher", "digits", "--n", 6, "--seed", 3, "--steps", 4, "--device", "cpu", "--threads", 1)


@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    """Replace teacher loading (no download) and the sampler (no 511 evaluations); record the sampler's kwargs."""
    calls: list[dict] = []

    def fake_sampler(net, latents, class_labels=None, rng=None, **kwargs):
        calls.append(kwargs)
        return latents.double()

    monkeypatch.setattr(sampling_run, "load_teacher", lambda name: types.SimpleNamespace(denoiser=ring(), architecture=None))
    monkeypatch.setattr(sampling_run, "edm_heun_sample", fake_sampler)
    return calls


def test_paper_selects_imagenet_settings(cli, json_doc, recorded, tmp_path):
    result = cli("sample", "--teacher", "edm-imagenet64", "--paper", "--n", 3, "--out", tmp_path / "a.npz", "--json")
    assert result.exit_code == 0, result.output
    assert recorded == [{"num_steps": 256, "S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}]
    summary = json_doc(result.stdout)
    assert summary["nfe"] == 511 and summary["heun_steps"] == 256
    assert summary["sampler"] == {"name": "edm-heun", "steps": 256, "s_churn": 40.0, "s_min": 0.05, "s_max": 50.0,
                                  "s_noise": 1.003, "deterministic": False, "preset": "paper", "nfe": 511}


def test_explicit_options_override_paper(cli, json_doc, recorded, tmp_path):
    result = cli("sample", "--teacher", "edm-imagenet64", "--paper", "--steps", 32, "--s-max", "inf", "--n", 2,
                 "--out", tmp_path / "a.npz", "--json")
    assert result.exit_code == 0, result.output
    assert recorded == [{"num_steps": 32, "S_churn": 40.0, "S_min": 0.05, "S_max": float("inf"), "S_noise": 1.003}]
    summary = json_doc(result.stdout)
    assert summary["nfe"] == 63 and summary["sampler"]["s_max"] is None
    assert summary["sampler"]["preset"] == "paper+overrides"


def test_paper_64px_and_default_settings(cli, json_doc, recorded, tmp_path):
    assert cli("sample", "--teacher", "edm-ffhq64", "--paper", "--n", 2, "--out", tmp_path / "a.npz").exit_code == 0
    assert cli("sample", "--teacher", "edm-ffhq64", "--n", 2, "--out", tmp_path / "b.npz").exit_code == 0
    assert recorded == [
        {"num_steps": 40, "S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0},
        {"num_steps": 18, "S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0},  # no --paper: EDM's defaults
    ]


@pytest.mark.parametrize("teacher", ["digits", "gmm-ring8", "LOCAL.pkl"])
def test_paper_without_published_settings_exits_2(cli, assert_usage_error, tree, tmp_path, teacher):
    teacher = str(tmp_path / "edm-cifar10.pkl") if teacher == "LOCAL.pkl" else teacher
    before = tree(tmp_path)
    result = cli("sample", "--teacher", teacher, "--paper", "--n", 2, "--out", tmp_path / "s.npz")
    assert_usage_error(result, f"--paper: teacher '{teacher}' has no published sampler settings", "edm-imagenet64")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("option", [("--paper",), ("--churn", 10), ("--steps", 4), ("--s-noise", 1.003)])
def test_sampler_options_need_a_teacher(cli, assert_usage_error, tmp_path, option):
    result = cli("sample", "--generator", tmp_path / "run", *option, "--n", 2, "--out", tmp_path / "s.npz")
    assert_usage_error(result, "apply to --teacher only")


def test_bad_sampler_values_exit_2(cli, assert_usage_error, tmp_path):
    out = tmp_path / "s.npz"
    assert_usage_error(cli("sample", "--teacher", "gmm-ring8", "--s-min", 5, "--s-max", 1, "--n", 2, "--out", out),
                       "--s-min <= --s-max")
    negative = cli("sample", "--teacher", "gmm-ring8", "--churn", -1, "--n", 2, "--out", out)  # click's range check
    assert negative.exit_code == 2 and "--churn" in negative.stderr and not out.exists()


def test_churn_changes_digits_samples(cli, json_doc, tmp_path):
    paths = {name: tmp_path / f"{name}.npz" for name in ("plain", "churn0", "churn10", "churn10-again")}
    runs = {"plain": (), "churn0": ("--churn", 0), "churn10": ("--churn", 10, "--s-noise", 1.003),
            "churn10-again": ("--churn", 10, "--s-noise", 1.003, "--batch-size", 4)}
    summaries = {}
    for name, extra in runs.items():
        result = cli("sample", *DIGITS, *extra, "--out", paths[name], "--json")
        assert result.exit_code == 0, result.output
        summaries[name] = json_doc(result.stdout)
    images = {}
    for name, path in paths.items():
        with np.load(path) as data:
            images[name] = data["images"]
    assert images["plain"].shape == (6, 8, 8, 1)
    assert np.array_equal(images["plain"], images["churn0"])  # --churn 0 is the default, deterministic sampler
    assert not np.array_equal(images["churn0"], images["churn10"])
    assert np.array_equal(images["churn10"], images["churn10-again"])  # per-seed churn noise: batch-independent
    assert summaries["plain"]["nfe"] == 7 and summaries["plain"]["sampler"]["deterministic"]
    assert summaries["churn10"]["sampler"]["s_churn"] == 10.0 and summaries["churn10"]["sampler"]["s_noise"] == 1.003
    assert summaries["churn10"]["nfe"] == 7


def test_sample_help_shows_the_sampler_options(cli):
    result = cli("sample", "--help")
    assert result.exit_code == 0
    for word in ("--steps", "--churn", "--s-min", "--s-max", "--s-noise", "--paper", "[required]", "S_churn",
                 "default: 18", "Required: this or --teacher", "Required: this or --generator"):
        assert word in result.output, word
