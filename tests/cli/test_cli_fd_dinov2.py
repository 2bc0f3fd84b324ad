"""`simcli eval --fd-dinov2` end to end with a tiny DINOv2 weights file: the value equals an independent float64
computation, --save-stats round-trips, --fid runs beside it on images read once, and the offline failures are one
line with exit code 2."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from simcli.eval.dinov2_detector import get_dinov2_extractor
from simcli.eval.dinov2_weights import DINOV2_FILE, DINOV2_URL
from tests.helpers.eval_tiny_extractor import TINY_NAME, register_tiny_extractors
from tests.helpers.tiny_dinov2 import image_sets, write_tiny_dinov2

N = 80


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny DINOv2 weights and two folders of PNGs from different distributions."""
    base = tmp_path_factory.mktemp("fd-dinov2")
    weights = write_tiny_dinov2(base / "tiny-dinov2.pth")
    for name, images in zip(("a", "b"), image_sets(N), strict=True):
        (base / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(base / name / f"{i:03d}.png")
    return base, weights


@pytest.fixture(autouse=True)
def offline_private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")


def _folder(path) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _independent_fd(weights, a, b) -> float:
    """Features of the same images by the same network, then numpy's mean/cov (N - 1) and scipy's sqrtm."""
    import scipy.linalg

    extractor = get_dinov2_extractor(weights)
    f1, f2 = (extractor.features(_folder(p))[0].numpy().astype(np.float64) for p in (a, b))
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def test_fd_dinov2_value_equals_the_independent_computation(cli, json_doc, files):
    base, weights = files
    result = cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b", "--feature-weights", weights,
                 "--json")
    assert result.exit_code == 0, result.output
    doc = json_doc(result.stdout)
    expected = _independent_fd(weights, base / "a", base / "b")
    assert expected > 1.0
    assert abs(doc["fd_dinov2"] - expected) / expected < 1e-6
    assert doc["n"] == N and doc["reference"] == str(base / "b")
    assert doc["feature_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "fid" not in doc and "backend" not in doc

    again = cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b", "--dinov2-weights", weights,
                "--json")
    assert json_doc(again.stdout)["fd_dinov2"] == doc["fd_dinov2"]  # the option DINOv2 has to itself


def test_saved_statistics_are_a_reference(cli, json_doc, files, tmp_path):
    base, weights = files
    stats = tmp_path / "b-stats.npz"
    saved = cli("eval", "--samples", base / "b", "--fd-dinov2", "--save-stats", stats, "--dinov2-weights", weights,
                "--json")
    assert saved.exit_code == 0, saved.output
    assert json_doc(saved.stdout)["saved_stats"] == str(stats) and "fd_dinov2" not in json_doc(saved.stdout)
    with np.load(stats) as data:
        assert data["mu"].shape == (64,) and data["sigma"].shape == (64, 64)
    against_stats = json_doc(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", stats, "--dinov2-weights",
                                 weights, "--json").stdout)
    against_images = json_doc(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b",
                                  "--dinov2-weights", weights, "--json").stdout)
    assert against_stats["fd_dinov2"] == pytest.approx(against_images["fd_dinov2"], rel=1e-12)
    assert "note" not in against_stats  # simcli's statistics record their extractor and weights


def test_fid_and_fd_dinov2_together(cli, json_doc, files, tmp_path):
    register_tiny_extractors()
    base, weights = files
    both = cli("eval", "--samples", base / "a", "--fid", "--fd-dinov2", "--ref", base / "b", "--backend", TINY_NAME,
               "--dinov2-weights", weights, "--save-stats", tmp_path / "a.npz", "--json")
    assert both.exit_code == 0, both.output
    doc = json_doc(both.stdout)
    fid_only = json_doc(cli("eval", "--samples", base / "a", "--fid", "--ref", base / "b", "--backend", TINY_NAME,
                            "--json").stdout)
    fd_only = json_doc(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b", "--dinov2-weights",
                           weights, "--json").stdout)
    assert doc["fid"] == pytest.approx(fid_only["fid"], rel=1e-12)
    assert doc["fd_dinov2"] == pytest.approx(fd_only["fd_dinov2"], rel=1e-12)
    assert doc["extractor"] == TINY_NAME and doc["fd_dinov2_extractor"].endswith("/edm2-torch-resize")
    # Inception-side statistics in the file itself, DINOv2's beside it
    assert doc["saved_stats"] == str(tmp_path / "a.npz")
    assert doc["saved_stats_fd_dinov2"] == str(tmp_path / "a-dinov2.npz")
    with np.load(tmp_path / "a-dinov2.npz") as data:
        assert data["mu"].shape == (64,)


def test_fd_dinov2_without_weights_offline_is_one_line(cli, assert_usage_error, files):
    base, _ = files
    line = assert_usage_error(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b"),
                              DINOV2_FILE, DINOV2_URL, "offline")
    assert "--dinov2-weights" in line


@pytest.mark.parametrize("metric", ["--fd-dinov2", "--fid"])
def test_edm2_reference_offline_is_one_line(cli, assert_usage_error, files, tmp_path, metric):
    """img512 serves --fd-dinov2 (its 'fd_dinov2' entry) and --fid (its 'fid' entry); offline it is not there."""
    register_tiny_extractors()
    base, weights = files
    network = ["--dinov2-weights", weights] if metric == "--fd-dinov2" else ["--backend", TINY_NAME]
    line = assert_usage_error(cli("eval", "--samples", base / "a", metric, "--ref", "img512", *network),
                              "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl")
    assert str(tmp_path / "cache" / "edm2" / "dataset-refs" / "img512.pkl") in line


def test_dimension_mismatch_with_edm2_statistics_is_refused(cli, assert_usage_error, files, tmp_path):
    """A 64-d test network against a real-size EDM2 file placed by hand in the cache: 1024-d statistics."""
    import pickle

    base, weights = files
    dest = tmp_path / "cache" / "edm2" / "dataset-refs" / "img512.pkl"
    dest.parent.mkdir(parents=True)
    with open(dest, "wb") as fh:
        pickle.dump({"num_images": 7, "fid": {"mu": np.zeros(2048), "sigma": np.eye(2048)},
                     "fd_dinov2": {"mu": np.zeros(1024), "sigma": np.eye(1024)}}, fh)
    assert_usage_error(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", "img512", "--dinov2-weights",
                           weights), "dimension 1024", "have 64")


def test_dinov2_options_need_fd_dinov2(cli, assert_usage_error, files):
    base, weights = files
    assert_usage_error(cli("eval", "--samples", base / "a", "--fid", "--ref", base / "b", "--dinov2-weights", weights),
                       "options of --fd-dinov2")
    assert_usage_error(cli("eval", "--samples", base / "a", "--fd-dinov2", "--ref", base / "b", "--dinov2-weights",
                           weights, "--dinov2-resize", "area"), "resize mode 'area'")
