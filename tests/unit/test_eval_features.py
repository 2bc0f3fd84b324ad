"""simcli.eval.features: offline behaviour without weights, the registry, and agreement with the libraries.

No test downloads anything or writes into a real cache: TORCH_HOME points at a tmp dir for every test, the
torch-fidelity runs use cache=False, clean-fid's fixed /tmp path is only checked (never created), and fake
weights live in tmp files passed as feature_weights (eval-notes.md sections 2.6, 2.8 and 8.6).
"""

from __future__ import annotations

import hashlib
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simcli.errors import UsageError
from simcli.eval import features as feat
from simcli.eval.backends import common

pytest.importorskip("torch_fidelity")
pytest.importorskip("cleanfid")

from tests.helpers.eval_tiny_extractor import (  # noqa: E402  (after the importorskips above)
    FEATURE_DIM,
    NUM_CLASSES,
    TINY_CLEANFID_NAME,
    TINY_NAME,
    register_tiny_extractors,
    tiny_cleanfid_fn,
)

TF_FILE = "weights-inception-2015-12-05-6726825d.pth"
TF_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TF_FILE
CF_FILE = "inception-2015-12-05.pt"
CF_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + CF_FILE
CF_PT_FILE = "pt_inception-2015-12-05-6726825d.pth"
CF_PT_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + CF_PT_FILE
N_IMAGES = 200


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME for every test: the hub cache and torch-fidelity's default dirs land in tmp."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() then follows TORCH_HOME
    return home


@pytest.fixture
def no_downloads(monkeypatch):
    """Every download entry point the backends could reach fails the test loudly."""
    import cleanfid.downloads_helper
    import cleanfid.inception_pytorch
    import cleanfid.inception_torchscript
    import torch_fidelity.feature_extractor_inceptionv3

    def forbidden(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(urllib.request, "urlretrieve", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(cleanfid.inception_pytorch, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", forbidden)
    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", forbidden)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """simcli's cache in tmp and SIMCLI_OFFLINE=1: a missing weights file cannot be downloaded."""
    cache = tmp_path / "simcli-cache"
    monkeypatch.setenv("SIMCLI_CACHE", str(cache))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    return cache


@pytest.fixture
def cleanfid_dir(tmp_path, monkeypatch):
    """Point simcli's idea of clean-fid's fixed weights directory at an empty tmp dir."""
    from simcli.eval.backends import clean_fid_backend

    d = tmp_path / "cleanfid-fixed-dir"
    d.mkdir()
    monkeypatch.setattr(clean_fid_backend, "cleanfid_inception_dir", lambda: d)
    return d


@pytest.fixture(scope="module")
def tiny():
    register_tiny_extractors()
    yield
    feat.unregister_extractor(TINY_NAME)
    feat.unregister_extractor(TINY_CLEANFID_NAME)


def _write_folder(root: Path, kind: str, n: int, seed: int) -> Path:
    """n random 32x32 PNGs: 'noise' (uniform pixels) or 'blobs' (smooth 4x4 noise upsampled, darker)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        if kind == "noise":
            a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        else:
            small = Image.fromarray(rng.integers(0, 200, (4, 4, 3), dtype=np.uint8))
            a = np.asarray(small.resize((32, 32), Image.BICUBIC))
        Image.fromarray(a).save(root / f"{i:06d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval-features")
    return _write_folder(base / "a", "noise", N_IMAGES, 0), _write_folder(base / "b", "blobs", N_IMAGES, 1)


def _random_uint8(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _simcli_fid(extractor, dir1: Path, dir2: Path, batch_size: int = 64) -> float:
    """simcli's pipeline: folder -> uint8 batches -> extractor -> float64 statistics -> Frechet distance."""
    from simcli.eval.fid_math import frechet_distance
    from simcli.eval.image_inputs import FolderImages
    from simcli.eval.stats import FeatureStats, compute_features

    stats = []
    for d in (dir1, dir2):
        f, _ = compute_features(FolderImages(d).batches(batch_size), extractor)
        stats.append(FeatureStats.from_features(f, extractor=extractor.name))
    return frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)


# ---------------------------------------------------------------------------------------------- offline


def test_torch_fidelity_without_weights_names_file_url_and_destination(torch_home, offline_cache, no_downloads):
    with pytest.raises(UsageError, match=rf"{TF_FILE} are not available \(offline\)") as info:
        feat.get_extractor("torch-fidelity")
    err = info.value
    destination = offline_cache / "weights" / TF_FILE
    assert TF_FILE in err.message and TF_URL in err.message and "offline" in err.message
    assert "\n" not in err.message and err.exit_code == 2
    assert str(destination) in err.hint and "--feature-weights" in err.hint
    assert not destination.exists() and not (torch_home / "hub" / "checkpoints" / TF_FILE).exists()


@pytest.mark.parametrize(
    "mode, file_name, url",
    [("legacy_tensorflow", CF_FILE, CF_URL), ("clean", CF_FILE, CF_URL), ("legacy_pytorch", CF_PT_FILE, CF_PT_URL)],
)
def test_clean_fid_without_weights_names_file_url_and_destination(
    mode, file_name, url, cleanfid_dir, torch_home, offline_cache, no_downloads
):
    with pytest.raises(UsageError, match=rf"\({mode}\) weights {file_name} are not available \(offline\)") as info:
        feat.get_extractor("clean-fid", mode=mode)
    err = info.value
    destination = offline_cache / "weights" / file_name
    assert file_name in err.message and url in err.message and "\n" not in err.message
    assert str(destination) in err.hint and "--feature-weights" in err.hint
    library_place = (cleanfid_dir if file_name == CF_FILE else torch_home / "hub" / "checkpoints") / file_name
    assert not destination.exists() and not library_place.exists()


def test_clean_fid_checks_its_fixed_tmp_path_before_any_download(offline_cache, no_downloads):
    fixed = Path("/tmp") / CF_FILE
    if fixed.exists():
        pytest.skip(f"{fixed} exists on this machine, so the missing-file path cannot be exercised")
    with pytest.raises(UsageError, match=rf"{CF_FILE} are not available \(offline\)"):
        feat.get_extractor("clean-fid")
    assert not fixed.exists()  # simcli never writes into clean-fid's fixed location


def test_online_weights_are_downloaded_into_simcli_cache_only(tmp_path, torch_home, monkeypatch):
    """Online, a missing weights file is fetched (resumable, size-checked) into <cache>/weights/, not the libraries'."""
    source = tmp_path / "served" / TF_FILE
    source.parent.mkdir()
    source.write_bytes(b"pretend weights " * 1000)
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "simcli-cache"))
    monkeypatch.delenv("SIMCLI_OFFLINE", raising=False)
    library_path = torch_home / "hub" / "checkpoints" / TF_FILE
    got = common.locate_weights("test weights", TF_FILE, source.as_uri(), library_path, None)
    assert got == tmp_path / "simcli-cache" / "weights" / TF_FILE
    assert got.read_bytes() == source.read_bytes() and not library_path.exists()
    # A file already in the library's cache is used as it is, and --feature-weights wins over both.
    library_path.parent.mkdir(parents=True)
    library_path.write_bytes(b"library copy")
    assert common.locate_weights("test weights", TF_FILE, source.as_uri(), library_path, None) == library_path
    assert common.locate_weights("test weights", TF_FILE, source.as_uri(), library_path, source) == source


def test_offline_env_never_downloads(monkeypatch, cleanfid_dir, no_downloads):
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    for backend, mode, file_name in [
        ("torch-fidelity", "legacy_tensorflow", TF_FILE),
        ("clean-fid", "legacy_tensorflow", CF_FILE),
        ("clean-fid", "clean", CF_FILE),
        ("clean-fid", "legacy_pytorch", CF_PT_FILE),
    ]:
        # an AssertionError here would mean a download was attempted
        with pytest.raises(UsageError, match=rf"{file_name} are not available \(offline\)"):
            feat.get_extractor(backend, mode=mode)


def test_missing_feature_weights_file_and_bad_mode_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        feat.get_extractor("torch-fidelity", feature_weights=tmp_path / "nope.pth")
    with pytest.raises(UsageError, match="legacy_tensorflow"):
        feat.get_extractor("torch-fidelity", mode="clean")
    with pytest.raises(UsageError, match="unknown clean-fid mode"):
        feat.get_extractor("clean-fid", mode="bicubic")


def test_unreadable_weights_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"not a checkpoint")
    for backend, mode in [
        ("torch-fidelity", "legacy_tensorflow"),
        ("clean-fid", "clean"),
        ("clean-fid", "legacy_pytorch"),
    ]:
        with pytest.raises(UsageError, match="could not load") as info:
            feat.get_extractor(backend, feature_weights=bad, mode=mode)
        assert "\n" not in info.value.message


def test_default_locations_are_read_when_present(torch_home, cleanfid_dir, no_downloads):
    """A file at the library's own location is what gets loaded (a junk file there proves the lookup path)."""
    hub = torch_home / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for backend, mode, path in [
        ("torch-fidelity", "legacy_tensorflow", hub / TF_FILE),
        ("clean-fid", "legacy_tensorflow", cleanfid_dir / CF_FILE),
        ("clean-fid", "legacy_pytorch", hub / CF_PT_FILE),
    ]:
        path.write_bytes(b"junk")
        with pytest.raises(UsageError, match="could not load") as info:
            feat.get_extractor(backend, mode=mode)
        assert str(path) in info.value.message


# ---------------------------------------------------------------------------------------------- registry


def test_registry_resolves_names_and_guards_collisions():
    class Fake:
        name, feature_dim, has_logits, weights_sha256 = "fake", 2, False, None

        def features(self, images):
            return images.float().mean(dim=(2, 3))[:, :2], None

    def factory(*, feature_weights, device, mode):
        return Fake()

    assert {"torch-fidelity", "clean-fid"} <= set(feat.registered_extractors())
    feat.register_extractor("simcli-test-fake", factory)
    try:
        feat.register_extractor("simcli-test-fake", factory)  # same factory again: fine
        with pytest.raises(ValueError, match="already registered"):
            feat.register_extractor("simcli-test-fake", lambda **kw: Fake())
        ext = feat.get_extractor("simcli-test-fake")
        assert isinstance(ext, feat.FeatureExtractor) and ext.name == "fake"
    finally:
        feat.unregister_extractor("simcli-test-fake")
    with pytest.raises(UsageError, match="unknown feature backend") as info:
        feat.get_extractor("simcli-test-fake")
    assert "torch-fidelity" in info.value.hint


def test_the_run_spec_backends_are_the_built_in_extractors():
    """evaluation.backend is a checked choice (FeatureBackendName): every name it allows is registered here."""
    from typing import get_args

    from simcli.config.spec import FeatureBackendName

    assert set(get_args(FeatureBackendName)) == {"torch-fidelity", "clean-fid", "digits"}
    assert set(get_args(FeatureBackendName)) <= set(feat.registered_extractors())


# ---------------------------------------------------------------------------------------------- tiny extractor


def test_tiny_extractors_are_batch_size_independent(tiny):
    images = _random_uint8(10, seed=3)
    for name, mode in [
        (TINY_NAME, "legacy_tensorflow"),
        (TINY_CLEANFID_NAME, "legacy_tensorflow"),
        (TINY_CLEANFID_NAME, "clean"),
        (TINY_CLEANFID_NAME, "legacy_pytorch"),
    ]:
        ext = feat.get_extractor(name, mode=mode)
        assert isinstance(ext, feat.FeatureExtractor) and ext.feature_dim == FEATURE_DIM
        assert ext.weights_sha256 is None
        f10, l10 = ext.features(images)
        halves = [ext.features(images[i : i + 5]) for i in (0, 5)]
        assert f10.shape == (10, FEATURE_DIM)
        torch.testing.assert_close(torch.cat([h[0] for h in halves]), f10, rtol=1e-5, atol=1e-6)
        if name == TINY_NAME:
            assert ext.has_logits and l10.shape == (10, NUM_CLASSES)
            torch.testing.assert_close(torch.cat([h[1] for h in halves]), l10, rtol=1e-5, atol=1e-6)
        else:
            assert not ext.has_logits and l10 is None


def test_fid_and_is_agree_with_torch_fidelity(tiny, folders):
    import torch_fidelity
    from torch_fidelity.metric_isc import isc_features_to_metric

    from simcli.eval.image_inputs import FolderImages

    dir1, dir2 = folders
    ext = feat.get_extractor(TINY_NAME)
    ours = _simcli_fid(ext, dir1, dir2)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(dir1),
        input2=str(dir2),
        fid=True,
        isc=True,
        isc_splits=4,
        feature_extractor=TINY_NAME,
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
        batch_size=50,
    )
    assert ours > 0.5  # the folders differ (FID about 1.0), so agreement to 1e-3 is not trivial
    assert abs(ours - theirs["frechet_inception_distance"]) < 1e-3
    logits = torch.cat([ext.features(b)[1] for b in FolderImages(dir1).batches(64)])
    isc = isc_features_to_metric(logits, splits=4, shuffle=True, rng_seed=2020)
    assert isc["inception_score_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean", "legacy_pytorch"])
def test_fid_agrees_with_clean_fid_custom_extractor(tiny, folders, mode):
    from cleanfid import fid as cleanfid_fid

    dir1, dir2 = folders
    ours = _simcli_fid(feat.get_extractor(TINY_CLEANFID_NAME, mode=mode), dir1, dir2)
    theirs = cleanfid_fid.compute_fid(
        str(dir1),
        str(dir2),
        mode=mode,
        custom_feat_extractor=tiny_cleanfid_fn,
        num_workers=0,
        batch_size=50,
        device=torch.device("cpu"),
        verbose=False,
    )
    assert ours > 0.5
    assert abs(ours - float(theirs)) < 1e-3


def test_clean_fid_modes_differ(tiny):
    """The resize really depends on the mode (else the per-mode agreement above would prove little)."""
    images = _random_uint8(4, seed=5)
    outs = [feat.get_extractor(TINY_CLEANFID_NAME, mode=m).features(images)[0] for m in feat.CLEAN_FID_MODES]
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)
    assert not torch.allclose(outs[1], outs[2], atol=1e-3)


# ---------------------------------------------------------------------------------------------- clean-fid TorchScript


class _FakeLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4)).mean(dim=(2, 3), keepdim=True)


class _FakeNvidiaInception(torch.nn.Module):
    """Same calling convention as NVIDIA's TorchScript Inception: forward(x, return_features) and .layers."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


def test_clean_fid_reads_torchscript_weights_in_place(tmp_path, cleanfid_dir, no_downloads):
    torch.manual_seed(0)
    scripted = torch.jit.script(_FakeNvidiaInception())
    path = tmp_path / "my-inception-copy.pt"  # not the fixed file name: it must be read where it is
    scripted.save(str(path))
    images = _random_uint8(3, seed=7)
    x = images.float()
    ext = feat.get_extractor("clean-fid", feature_weights=path)
    assert ext.name == "clean-fid/legacy_tensorflow" and ext.feature_dim == 2048 and not ext.has_logits
    torch.testing.assert_close(ext.features(images)[0], scripted(x, True).reshape(3, -1))
    clean = feat.get_extractor("clean-fid", feature_weights=path, mode="clean")
    expected = scripted.layers((clean.preprocess(images) - 128) / 128).reshape(3, -1)
    torch.testing.assert_close(clean.features(images)[0], expected)
    assert ext.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(cleanfid_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- real Inception code


def _random_calibrated_inception_weights(path: Path) -> None:
    """Random weights for torch-fidelity's inception-v3-compat with BatchNorm statistics calibrated on noise
    (eval-notes.md 2.8 (b)); written only to `path`, a tmp file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:  # build the network without loading (or downloading) weights
        mp.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
        mp.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(_random_uint8(8, size=64, seed=11))
    net.fc.weight.data.mul_(10.0)
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_real_inception_path_with_random_weights(tmp_path, tiny):
    import torch_fidelity

    weights = tmp_path / "random-inception.pth"
    _random_calibrated_inception_weights(weights)
    ext = feat.get_extractor("torch-fidelity", feature_weights=weights)
    assert ext.name == "torch-fidelity/inception-v3-compat" and ext.feature_dim == 2048 and ext.has_logits
    assert ext.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    images = _random_uint8(6, seed=2)
    f6, l6 = ext.features(images)
    assert f6.shape == (6, 2048) and l6.shape == (6, 1008)
    f3 = torch.cat([ext.features(images[i : i + 3])[0] for i in (0, 3)])
    torch.testing.assert_close(f3, f6, rtol=1e-4, atol=1e-5)

    base = tmp_path / "imgs"
    dir1, dir2 = _write_folder(base / "a", "noise", 16, 0), _write_folder(base / "b", "blobs", 16, 1)
    ours = _simcli_fid(ext, dir1, dir2, batch_size=16)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(dir1),
        input2=str(dir2),
        fid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
        batch_size=8,
    )
    assert ours > 1e-2  # calibrated BatchNorm: not the degenerate FID 0 of raw random weights
    assert abs(ours - theirs["frechet_inception_distance"]) < 1e-3 * max(1.0, ours)


def _random_calibrated_pytorch_fid_weights(path: Path) -> None:
    """Random weights for clean-fid's legacy_pytorch network (the pytorch-fid Inception3 state dict, 1008-way fc)
    with BatchNorm statistics calibrated on noise; written only to `path`, inside a tmp TORCH_HOME."""
    import cleanfid.inception_pytorch as ip
    import torchvision

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(ip, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, sd, strict=True: None)
        net = ip.fid_inception_v3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():  # the same input scaling as InceptionV3(normalize_input=True): 2 * x / 255 - 1
        net(2 * _random_uint8(6, size=299, seed=11).float() / 255 - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_clean_fid_legacy_pytorch_real_path_from_hub_cache(torch_home, tmp_path, monkeypatch):
    from cleanfid import fid as cleanfid_fid

    def forbidden(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    weights = torch_home / "hub" / "checkpoints" / CF_PT_FILE  # tmp TORCH_HOME: clean-fid finds it there too
    _random_calibrated_pytorch_fid_weights(weights)
    ext = feat.get_extractor("clean-fid", mode="legacy_pytorch")
    assert ext.name == "clean-fid/legacy_pytorch" and ext.weights_path == weights
    base = tmp_path / "imgs"
    dir1, dir2 = _write_folder(base / "a", "noise", 8, 0), _write_folder(base / "b", "blobs", 8, 1)
    ours = _simcli_fid(ext, dir1, dir2, batch_size=8)
    theirs = cleanfid_fid.compute_fid(
        str(dir1),
        str(dir2),
        mode="legacy_pytorch",
        num_workers=0,
        batch_size=8,
        device=torch.device("cpu"),
        verbose=False,
        use_dataparallel=False,
    )
    assert ours > 1e-2
    assert abs(ours - float(theirs)) < 1e-3 * max(1.0, ours)
