"""simcli.eval.stats and simcli.eval.image_inputs: statistics files, references, folder caching, image sources."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from simcli.errors import UsageError
from simcli.eval import stats as stats_mod
from simcli.eval.image_inputs import FolderImages, GeneratorImages, NpzImages, open_images
from simcli.eval.stats import (
    FeatureStats,
    check_compatible,
    compute_features,
    folder_stats_path,
    load_stats,
    resolve_reference,
)
from simcli.nets.registry import build_edm_network
from simcli.rundir.snapshots import save_generator
from simcli.sampling.images import to_uint8
from simcli.sampling.run import generator_samples

TINY_DDPMPP = {
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
    "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
    "attn_resolutions": [4], "augment_dim": 9, "dropout": 0.13, "use_fp16": False, "img_resolution": 8,
    "img_channels": 3, "label_dim": 10,
}


class FakeExtractor:
    """A fixed random projection of 4x4-average-pooled pixels, with the simcli.eval.features interface."""

    def __init__(self, name: str = "fake-proj", feature_dim: int = 8, weights_sha256: str | None = "ab" * 32):
        g = torch.Generator().manual_seed(0)
        self.name, self.feature_dim, self.weights_sha256 = name, feature_dim, weights_sha256
        self.proj = torch.randn(3 * 4 * 4, feature_dim, generator=g)
        self.head = torch.randn(feature_dim, 5, generator=g)
        self.calls = 0

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
        self.calls += 1
        f = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1) @ self.proj
        return f, f @ self.head


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SIMCLI_OFFLINE", raising=False)
    monkeypatch.delenv("SIMCLI_EDM_MIRROR", raising=False)


def write_image(path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def random_folder(root, n: int = 6, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_image(root / f"{'sub/' if i % 2 else ''}{i:03d}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
    return root


def random_stats(dim: int = 8, **meta) -> FeatureStats:
    return FeatureStats.from_features(np.random.default_rng(1).standard_normal((40, dim)), **meta)


# ---------------------------------------------------------------------------------------------- statistics files


def test_from_features_is_float64_mean_and_unbiased_covariance(monkeypatch):
    monkeypatch.setattr(stats_mod, "COV_CHUNK_ROWS", 7)  # several accumulation blocks
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32) * 3 + 1
    stats = FeatureStats.from_features(x)
    assert stats.mu.dtype == stats.sigma.dtype == np.float64 and stats.n == 50
    np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    with pytest.raises(UsageError, match="at least 2"):
        FeatureStats.from_features(x[:1])


def test_stats_round_trip_through_npz_exactly(tmp_path):
    stats = random_stats(extractor="fake-proj", weights_sha256="cd" * 32, source="folder x (40 images)")
    path = stats.save_npz(tmp_path / "s.npz")
    back = load_stats(path)
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert back.mu.dtype == back.sigma.dtype == np.float64
    assert (back.n, back.extractor, back.weights_sha256, back.source) == (40, "fake-proj", "cd" * 32, stats.source)
    assert back.note is None
    assert not [p for p in tmp_path.iterdir() if p.name != "s.npz"]  # no temporary file left


def test_edm_style_npz_loads_with_unknown_metadata(tmp_path):
    stats = random_stats()
    np.savez(tmp_path / "edm.npz", mu=stats.mu, sigma=stats.sigma)
    back = load_stats(tmp_path / "edm.npz")
    assert np.array_equal(back.sigma, stats.sigma)
    assert back.n is None and back.extractor is None and back.weights_sha256 is None
    resolved = resolve_reference(str(tmp_path / "edm.npz"), FakeExtractor())
    assert "do not record their feature extractor" in resolved.note and "fake-proj" in resolved.note


def _write_malformed(path, kind: str) -> None:
    good = random_stats(4)
    if kind == "missing sigma":
        np.savez(path, mu=good.mu)
    elif kind == "shape":
        np.savez(path, mu=good.mu, sigma=np.eye(3))
    elif kind == "integer":
        np.savez(path, mu=np.zeros(4, np.int64), sigma=np.eye(4, dtype=np.int64))
    elif kind == "nan":
        np.savez(path, mu=np.full(4, np.nan), sigma=good.sigma)
    elif kind == "asymmetric":
        np.savez(path, mu=good.mu, sigma=good.sigma + np.triu(np.ones((4, 4)), 1))
    elif kind == "text":
        path.write_text("mu,sigma\n1,2\n")
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, good.mu)
    elif kind == "pickled":
        np.savez(path, mu=np.array([{"a": 1}], dtype=object), sigma=good.sigma)
    elif kind == "meta":
        np.savez(path, mu=good.mu, sigma=good.sigma, simcli_meta=np.array("{not json"))


@pytest.mark.parametrize("kind", ["missing sigma", "shape", "integer", "nan", "asymmetric", "text", "npy", "pickled",
                                  "meta"])
def test_malformed_npz_refused_with_one_line(tmp_path, kind):
    path = tmp_path / "bad.npz"
    _write_malformed(path, kind)
    with pytest.raises(UsageError, match="not usable FID statistics") as info:
        load_stats(path)
    assert "\n" not in info.value.message


def test_missing_and_unknown_references_refused(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        resolve_reference(str(tmp_path / "nope.npz"))
    with pytest.raises(UsageError, match="unknown FID reference 'cifar11'"):
        resolve_reference("cifar11")
    with pytest.raises(UsageError, match="need a feature extractor"):
        resolve_reference(random_folder(tmp_path / "imgs"))


# ---------------------------------------------------------------------------------------------- extractor checks


def test_statistics_of_another_extractor_refused(tmp_path):
    ext = FakeExtractor()
    other = random_stats(extractor="other-net").save_npz(tmp_path / "other.npz")
    with pytest.raises(UsageError, match="made with extractor 'other-net' but the features come from 'fake-proj'"):
        resolve_reference(other, ext)
    weights = random_stats(extractor="fake-proj", weights_sha256="ee" * 32).save_npz(tmp_path / "w.npz")
    with pytest.raises(UsageError, match="weights"):
        resolve_reference(weights, ext)
    wide = random_stats(16, extractor="fake-proj").save_npz(tmp_path / "wide.npz")
    with pytest.raises(UsageError, match="reference statistics have dimension 16 but features have 8"):
        resolve_reference(wide, ext)
    matching = random_stats(extractor="fake-proj", weights_sha256="ab" * 32).save_npz(tmp_path / "s.npz")
    same = resolve_reference(matching, ext)
    assert same.note is None
    assert check_compatible(same, random_stats(extractor="fake-proj")) is None


# ---------------------------------------------------------------------------------------------- references


def test_known_name_downloads_then_loads(tmp_path, monkeypatch):
    stats = random_stats()
    asked = []

    def fake_ensure(entry, on_progress=None):
        asked.append(entry.name)
        path = tmp_path / entry.file_name
        np.savez(path, mu=stats.mu, sigma=stats.sigma)
        return path

    monkeypatch.setattr(stats_mod, "ensure_fid_reference_file", fake_ensure)
    ref = resolve_reference("cifar10-train", FakeExtractor())
    assert asked == ["cifar10-train"] and np.array_equal(ref.mu, stats.mu)
    assert "EDM reference 'cifar10-train'" in ref.source and ref.extractor is None and ref.note
    assert resolve_reference("cifar10-32x32.npz").n is None and asked[-1] == "cifar10-train"


def test_known_name_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    with pytest.raises(UsageError, match="cifar10-32x32.npz") as info:
        resolve_reference("cifar10-train")
    assert "\n" not in info.value.message


def test_folder_stats_cached_and_invalidated(tmp_path):
    folder = random_folder(tmp_path / "imgs")
    ext = FakeExtractor()
    first = resolve_reference(folder, ext, batch_size=4)
    assert ext.calls == 2 and first.n == 6 and first.extractor == "fake-proj" and first.note is None
    feats, _ = compute_features(FolderImages(folder).batches(), FakeExtractor())
    np.testing.assert_allclose(first.sigma, FeatureStats.from_features(feats).sigma, rtol=1e-12)
    cached = list((tmp_path / "cache" / "fid-stats").glob("*.npz"))
    assert len(cached) == 1

    again = resolve_reference(str(folder), ext)
    assert ext.calls == 2  # from the cache: the extractor was not called
    assert np.array_equal(again.sigma, first.sigma) and again.source == first.source

    other = FakeExtractor(name="fake-proj-2")
    resolve_reference(folder, other)
    assert other.calls == 1  # another extractor has its own cache entry

    victim = folder / "sub" / "001.png"
    write_image(victim, np.zeros((8, 8, 3), np.uint8))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = resolve_reference(folder, ext)
    assert ext.calls == 3 and not np.array_equal(changed.sigma, first.sigma)  # recomputed (one batch)


def test_damaged_cache_entry_recomputed(tmp_path):
    folder = random_folder(tmp_path / "imgs")
    ext = FakeExtractor()
    resolve_reference(folder, ext)
    (entry,) = (tmp_path / "cache" / "fid-stats").glob("*.npz")
    assert entry == folder_stats_path(entry.stem)
    entry.write_bytes(b"garbage")
    assert resolve_reference(folder, ext).n == 6 and ext.calls == 2


# ---------------------------------------------------------------------------------------------- image sources


def test_folder_search_is_recursive_and_sorted(tmp_path):
    root = tmp_path / "imgs"
    for name, value in [("c.png", 4), ("b/x.png", 3), ("a/w.bmp", 2), ("a/sub/z.PNG", 1)]:
        write_image(root / name, np.full((4, 4, 3), value, np.uint8))
    (root / "notes.txt").write_text("not an image")
    source = open_images(root)
    assert isinstance(source, FolderImages) and len(source) == 4
    assert [p.relative_to(root).as_posix() for p in source.files] == ["a/sub/z.PNG", "a/w.bmp", "b/x.png", "c.png"]
    batches = list(source.batches(3))
    assert [b.shape for b in batches] == [(3, 3, 4, 4), (1, 3, 4, 4)]
    assert torch.cat(batches)[:, :, 0, 0].tolist() == [[1] * 3, [2] * 3, [3] * 3, [4] * 3]


def test_folder_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    rgba = np.random.default_rng(0).integers(0, 256, (4, 4, 4), np.uint8)
    write_image(tmp_path / "a.png", gray, "L")
    write_image(tmp_path / "b.png", rgba, "RGBA")
    x = next(FolderImages(tmp_path).batches())
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 4, 4)
    assert all(torch.equal(x[0, c], torch.from_numpy(gray)) for c in range(3))
    assert torch.equal(x[1], torch.from_numpy(rgba[:, :, :3]).permute(2, 0, 1))


def test_folder_with_mixed_sizes_refused(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "d" / "b.png", np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(UsageError, match=r"a\.png is 8x8 but .*b\.png is 6x8"):
        FolderImages(tmp_path)


def test_limits_and_empty_sources(tmp_path):
    folder = random_folder(tmp_path / "imgs", n=4)
    assert len(open_images(folder, limit=2)) == 2
    with pytest.raises(UsageError, match="asked for 10 images but folder .* has only 4"):
        open_images(folder, limit=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        open_images(tmp_path / "empty")


def test_npz_images(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), np.uint8)
    np.savez(tmp_path / "s.npz", images=images, labels=np.full(5, -1), seeds=np.arange(5))
    source = open_images(tmp_path / "s.npz", limit=4)
    assert isinstance(source, NpzImages) and len(source) == 4
    x = torch.cat(list(source.batches(3)))
    assert torch.equal(x, torch.from_numpy(images[:4]).permute(0, 3, 1, 2))
    with pytest.raises(UsageError, match="asked for 9 images but .* has only 5"):
        NpzImages(tmp_path / "s.npz", limit=9)
    np.savez(tmp_path / "v.npz", samples=np.zeros((3, 2), np.float32))
    with pytest.raises(UsageError, match="holds vector samples, not images"):
        NpzImages(tmp_path / "v.npz")
    np.savez(tmp_path / "f.npz", images=images.astype(np.float32))
    with pytest.raises(UsageError, match="is float32") as info:
        NpzImages(tmp_path / "f.npz")
    assert "expected uint8" in info.value.hint


def test_compute_features_and_logits(tmp_path):
    source = FolderImages(random_folder(tmp_path / "imgs", n=5))
    seen = []
    feats, logits = compute_features(source.batches(2), FakeExtractor(), want_logits=True, on_progress=seen.append)
    assert feats.dtype == logits.dtype == np.float64 and feats.shape == (5, 8) and logits.shape == (5, 5)
    assert seen == [2, 4, 5]
    assert compute_features(source.batches(), FakeExtractor())[1] is None

    class NoLogits(FakeExtractor):
        def features(self, images):
            return super().features(images)[0], None

    with pytest.raises(UsageError, match="gives no logits"):
        compute_features(source.batches(), NoLogits(), want_logits=True)


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    """A random-weight conditional EDM generator snapshot, as distillation writes it."""
    torch.manual_seed(0)
    net = build_edm_network("EDMPrecond", TINY_DDPMPP)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("run") / "generator-0000000.004.safetensors"
    meta = {"architecture": {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": TINY_DDPMPP},
            "sigma_init": 2.5, "images_seen": 4}
    save_generator(path, net.state_dict(), meta)
    return path


def test_generator_source_matches_generator_samples(generator_file):
    x, labels, _ = generator_samples(generator_file, 5, seed=3, batch_size=4, device="cpu")
    expected = torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)
    source = open_images(generator_file, limit=5, seed=3, device="cpu")
    assert isinstance(source, GeneratorImages) and len(source) == 5 and labels is not None
    got = list(source.batches(2))
    assert [b.shape[0] for b in got] == [2, 2, 1] and all(b.dtype == torch.uint8 for b in got)
    assert torch.equal(torch.cat(got), expected)
    assert torch.equal(torch.cat(list(source.batches())), expected)  # batch size does not matter
    with pytest.raises(UsageError, match="how many images"):
        open_images(generator_file.parent)  # a run directory is a generator too
