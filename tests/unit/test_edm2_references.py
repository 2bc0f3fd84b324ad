"""EDM2's reference statistics pickles: read back in EDM2's layout by the restricted reader, hostile files refused in
one line with nothing executed, the catalog's URLs and cache paths, and the offline error."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from simcli.errors import UsageError
from simcli.eval.edm2_references import (
    EDM2_REFERENCES,
    edm2_reference_path,
    edm2_reference_stats,
    ensure_edm2_reference_file,
    is_edm2_reference,
)
from simcli.eval.edm2_stats_pickle import read_edm2_stats


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")


def _gaussian_stats(dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4 * dim, dim))
    return {"mu": x.mean(axis=0), "sigma": np.cov(x, rowvar=False)}


def edm2_layout(fid_dim: int = 6, dino_dim: int = 4) -> dict:
    """What calculate_metrics.py's calculate_stats_for_iterable builds and save_stats pickles."""
    return {"num_images": 1234, "fid": _gaussian_stats(fid_dim, 0), "fd_dinov2": _gaussian_stats(dino_dim, 1)}


def _one_line(exc: UsageError) -> str:
    text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    assert "\n" not in text
    return text


def _refused(path) -> str:
    with pytest.raises(UsageError) as info:
        read_edm2_stats(path)
    line = _one_line(info.value)
    assert str(path) in line
    return line


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_edm2_layout_reads_back_equal(tmp_path, protocol):
    stats = edm2_layout()
    path = tmp_path / "ref.pkl"
    with open(path, "wb") as fh:
        pickle.dump(stats, fh, protocol=protocol)
    got = read_edm2_stats(path)
    assert got.num_images == 1234 and set(got.entries) == {"fid", "fd_dinov2"}
    for metric in ("fid", "fd_dinov2"):
        mu, sigma = got.entries[metric]
        assert mu.dtype == sigma.dtype == np.float64
        np.testing.assert_array_equal(mu, stats[metric]["mu"])
        np.testing.assert_array_equal(sigma, stats[metric]["sigma"])


def test_numpy_1_module_names_and_float32_arrays_read(tmp_path):
    """Pickles written with numpy 1.x name numpy.core.multiarray; float32 arrays are widened to float64."""
    stats = {"fd_dinov2": {"mu": np.arange(3, dtype=np.float32), "sigma": np.eye(3, dtype=np.float32)}}
    raw = pickle.dumps(stats, protocol=3)  # GLOBAL opcodes: module and name as text lines
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
    (tmp_path / "old.pkl").write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    got = read_edm2_stats(tmp_path / "old.pkl")
    assert got.num_images is None
    np.testing.assert_array_equal(got.entries["fd_dinov2"][0], [0.0, 1.0, 2.0])
    assert got.entries["fd_dinov2"][1].dtype == np.float64


def test_entry_as_feature_stats(tmp_path):
    stats = edm2_layout()
    with open(tmp_path / "ref.pkl", "wb") as fh:
        pickle.dump(stats, fh)
    dino = edm2_reference_stats(str(tmp_path / "ref.pkl"), "fd_dinov2")
    assert dino.dim == 4 and dino.n == 1234 and dino.extractor is None
    np.testing.assert_array_equal(dino.sigma, stats["fd_dinov2"]["sigma"])
    assert edm2_reference_stats(str(tmp_path / "ref.pkl"), "fid").dim == 6
    with pytest.raises(UsageError, match="has no 'kid' statistics"):
        edm2_reference_stats(str(tmp_path / "ref.pkl"), "kid")


# ---------------------------------------------------------------------------------------------- hostile files


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Getattr:
    def __reduce__(self):
        return getattr, ("text", "upper")


def test_code_execution_pickle_is_refused_naming_the_global_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    stats = edm2_layout()
    stats["fid"]["mu"] = _Shell(marker)
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(stats, fh)
    line = _refused(tmp_path / "evil.pkl")
    assert f"global {os.system.__module__}.system" in line and "nothing from the file was executed" in line
    assert not marker.exists()


def test_non_numpy_global_is_refused(tmp_path):
    with open(tmp_path / "getattr.pkl", "wb") as fh:
        pickle.dump({"fd_dinov2": {"mu": _Getattr(), "sigma": np.eye(2)}}, fh)
    assert "global builtins.getattr" in _refused(tmp_path / "getattr.pkl")


def test_numpy_reconstruct_with_other_arguments_is_refused(tmp_path):
    """_reconstruct is only ever called as numpy's pickles call it: (ndarray, (0,), b'b')."""
    raw = pickle.dumps({"fd_dinov2": {"mu": np.zeros(2), "sigma": np.eye(2)}}, protocol=3)
    (tmp_path / "odd.pkl").write_bytes(raw.replace(b"C\x01b", b"C\x01x", 1))
    assert "_reconstruct called with other arguments" in _refused(tmp_path / "odd.pkl")


@pytest.mark.parametrize(("entry", "fragment"), [
    ({"mu": np.zeros(3), "sigma": np.zeros((3, 4))}, "mu has shape [3] and sigma [3, 4]"),
    ({"mu": np.zeros((3, 1)), "sigma": np.zeros((3, 3))}, "mu has shape [3, 1]"),
    ({"mu": np.zeros(2), "sigma": np.array([[1.0, np.nan], [np.nan, 1.0]])}, "NaN or infinite"),
    ({"mu": np.zeros(2), "sigma": np.array([[1.0, 0.5], [0.0, 1.0]])}, "not symmetric"),
    ({"mu": np.zeros(2, dtype=np.int64), "sigma": np.eye(2)}, "mu is int64"),
    ({"mu": [0.0, 0.0], "sigma": np.eye(2)}, "mu is a list, not a numpy array"),
    ({"sigma": np.eye(2)}, "not a dict with 'mu' and 'sigma'"),
])
def test_malformed_statistics_are_refused(tmp_path, entry, fragment):
    with open(tmp_path / "bad.pkl", "wb") as fh:
        pickle.dump({"num_images": 10, "fd_dinov2": entry}, fh)
    assert fragment in _refused(tmp_path / "bad.pkl")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "not a pickle"),
    (b"PK\x03\x04zip", "not a pickle"),
    (pickle.dumps([1, 2]), "holds a list"),
    (pickle.dumps({"num_images": 3}), "holds no metric statistics"),
    (pickle.dumps({"num_images": "many", "fid": {}}), "num_images is 'many'"),
    (pickle.dumps(edm2_layout())[:-200], "truncated"),
])
def test_non_statistics_files_are_refused(tmp_path, content, fragment):
    (tmp_path / "x.pkl").write_bytes(content)
    assert fragment in _refused(tmp_path / "x.pkl")


# ---------------------------------------------------------------------------------------------- catalog and cache


def test_catalog_urls_and_cache_paths(tmp_path):
    assert set(EDM2_REFERENCES) == {"img512", "img64"}
    for name in ("img512", "img64"):
        entry = EDM2_REFERENCES[name]
        assert entry.url == f"https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/{name}.pkl"
        assert edm2_reference_path(name) == tmp_path / "cache" / "edm2" / "dataset-refs" / f"{name}.pkl"
        assert is_edm2_reference(name) and is_edm2_reference(f"{name}.pkl")
    assert is_edm2_reference("some/where/stats.pkl") and not is_edm2_reference("cifar10-train")


def test_expected_size_is_that_of_edm2s_pickle():
    """fid mu [2048] + sigma [2048, 2048] and fd_dinov2 mu [1024] + sigma [1024, 1024], float64."""
    full = {"num_images": 1_281_167,
            "fid": {"mu": np.zeros(2048), "sigma": np.zeros((2048, 2048))},
            "fd_dinov2": {"mu": np.zeros(1024), "sigma": np.zeros((1024, 1024))}}
    for entry in EDM2_REFERENCES.values():
        for protocol in (4, 5):
            size = len(pickle.dumps(full, protocol=protocol))
            assert abs(size - entry.approx_size_bytes) <= entry.size_tolerance, (protocol, size)


@pytest.mark.parametrize("name", ["img512", "img64"])
def test_offline_without_the_file_names_url_and_cache_path(tmp_path, name):
    for call in (lambda: ensure_edm2_reference_file(name), lambda: edm2_reference_stats(name, "fd_dinov2")):
        with pytest.raises(UsageError) as info:
            call()
        line = _one_line(info.value)
        assert EDM2_REFERENCES[name].url in line
        assert str(tmp_path / "cache" / "edm2" / "dataset-refs" / f"{name}.pkl") in line
    assert not (tmp_path / "cache" / "edm2" / "dataset-refs" / f"{name}.pkl").exists()


def test_a_file_placed_by_hand_in_the_cache_is_used_offline(tmp_path):
    rng = np.random.default_rng(7)
    stats = {"num_images": 1_281_167,
             "fid": {"mu": rng.normal(size=2048), "sigma": np.eye(2048)},
             "fd_dinov2": {"mu": rng.normal(size=1024), "sigma": 2 * np.eye(1024)}}
    dest = edm2_reference_path("img512")
    dest.parent.mkdir(parents=True)
    with open(dest, "wb") as fh:
        pickle.dump(stats, fh)
    dino = edm2_reference_stats("img512", "fd_dinov2")
    fid = edm2_reference_stats("img512", "fid")
    assert dino.dim == 1024 and fid.dim == 2048 and dino.n == 1_281_167
    np.testing.assert_array_equal(dino.mu, stats["fd_dinov2"]["mu"])
    assert "EDM2 reference 'img512'" in dino.source
