"""`simcli eval` on images with a tiny registered feature extractor: the same images give the same FID
whichever way they arrive (folder, npz, generator in memory; folder or statistics as the reference), and
the torch-fidelity and clean-fid plumbings agree."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from simcli.cli.app import app
from tests.helpers.eval_tiny_extractor import TINY_CLEANFID_NAME, TINY_NAME, register_tiny_extractors
from tests.helpers.tiny_edm import write_tiny_edm

N = 40


def run_cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def run_json(*args) -> dict:
    return json.loads(run_cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A distilled tiny generator, its samples as PNGs and npz, and teacher samples as the reference."""
    register_tiny_extractors()
    base = tmp_path_factory.mktemp("image-eval")
    teacher = write_tiny_edm(base / "teacher.pkl")
    run = base / "run"
    run_cli("distill", "--teacher", teacher, "--preset", "tiny", "--batch-size", 4, "--steps", 2, "--out", run)
    run_cli("sample", "--generator", run, "--n", N, "--out", base / "gen")
    run_cli("sample", "--generator", run, "--n", N, "--out", base / "gen.npz")
    run_cli("sample", "--teacher", teacher, "--steps", 3, "--n", N, "--seed", 1000, "--out", base / "ref")
    return base, run


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))


def test_same_images_same_fid_from_folder_npz_generator_and_statistics(images, tmp_path):
    base, run = images
    stats = tmp_path / "ref-stats.npz"
    saved = run_json("eval", "--samples", base / "ref", "--save-stats", stats, "--backend", TINY_NAME)
    assert saved["saved_stats"] == str(stats) and saved["n"] == N

    folder_vs_folder = run_json("eval", "--samples", base / "gen", "--fid", "--ref", base / "ref", "--backend", TINY_NAME)
    npz_vs_stats = run_json("eval", "--samples", base / "gen.npz", "--fid", "--ref", stats, "--backend", TINY_NAME)
    generator_vs_stats = run_json(
        "eval", "--generator", run, "--n", N, "--fid", "--is", "--ref", stats, "--backend", TINY_NAME
    )
    fids = [folder_vs_folder["fid"], npz_vs_stats["fid"], generator_vs_stats["fid"]]
    assert fids[0] > 0.01  # the generator after two iterations is not the teacher
    assert max(fids) - min(fids) < 1e-9

    # --json: one document with the values, N, backend, extractor and reference
    doc = generator_vs_stats
    assert {"fid", "is_mean", "is_std", "n", "backend", "extractor", "reference"} <= set(doc)
    assert doc["n"] == N and doc["backend"] == TINY_NAME and doc["reference"] == str(stats)
    assert 1.0 <= doc["is_mean"] <= 10.0  # IS lies between 1 and the number of classes


def test_torch_fidelity_and_clean_fid_plumbing_agree(images):
    base, _ = images
    via_fidelity = run_json("eval", "--samples", base / "gen", "--fid", "--ref", base / "ref", "--backend", TINY_NAME)
    via_cleanfid = run_json(
        "eval", "--samples", base / "gen", "--fid", "--ref", base / "ref", "--backend", TINY_CLEANFID_NAME
    )
    assert abs(via_fidelity["fid"] - via_cleanfid["fid"]) < 1e-3


def test_kid_and_precision_recall_need_reference_images(images, tmp_path):
    base, _ = images
    doc = run_json("eval", "--samples", base / "gen", "--kid", "--prc", "--ref", base / "ref", "--backend", TINY_NAME)
    assert 0.0 <= doc["precision"] <= 1.0 and 0.0 <= doc["recall"] <= 1.0 and "kid_mean" in doc
    stats = tmp_path / "s.npz"
    run_cli("eval", "--samples", base / "ref", "--save-stats", stats, "--backend", TINY_NAME)
    result = CliRunner().invoke(app, ["eval", "--samples", str(base / "gen"), "--kid", "--ref", str(stats),
                                      "--backend", TINY_NAME])
    assert result.exit_code == 2 and "need reference images" in result.stderr


def test_default_inception_offline_names_the_weights_and_creates_nothing(images, tmp_path, monkeypatch):
    base, _ = images
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = CliRunner().invoke(app, ["eval", "--samples", str(base / "gen"), "--fid", "--ref", str(base / "ref")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights-inception-2015-12-05" in lines[0] and "https://" in lines[0]
    assert "--feature-weights" in lines[0]
    assert not (tmp_path / "cache" / "weights").exists() and not (tmp_path / "torch-home").exists()
